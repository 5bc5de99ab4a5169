"""The embedded toy task: procedurally generated multi-step integer arithmetic.

Format (what a tiny model learns in the warm-up SFT and what :func:`toy_reward` checks)::

    prompt:      "(3+4)*2-5="        the canonical expression followed by "="
    completion:  "9"                 the integer value, then the end-of-sequence token

The prompt is used verbatim (no chat template, no instruction; see
:func:`salt.tasks.prompts.build_prompt`). The answer is the first line of the completion,
stripped of surrounding whitespace (decoded with special tokens skipped, so EOS is not part of
it); the reward is 1.0 when it equals the reference integer exactly and 0.0 otherwise. A model
that does not stop ("9+1..." with no EOS within the token budget) gets 0, so the format
rewards stopping.

Difficulty levels (answers are small integers, possibly negative):

* level 1: ``a+b``, ``a-b`` with operands 0..29;
* level 2: ``a+b*c``, ``a-b+c``, ``a*b-c``, ``a*b+c`` with operands 0..9;
* level 3: ``(a+b)*c-d``, ``(a-b)*c+d``, ``a*b+c*d``, ``a*b-c*d`` with operands 0..9.

Splits: the SHA-256 of the canonical expression decides once and for all which split an
expression belongs to: ``test`` (held-out evaluation, about :data:`TEST_PERCENT` percent), ``rl``
(RL prompts, about :data:`RL_PERCENT` percent) or ``train`` (warm-up SFT demonstrations, the
rest). The three splits are therefore disjoint whatever the seeds and sizes; the seed only picks
which problems of a split (and in which order) a call returns. Within one call problems are
unique. Distinct expressions per split (train/rl/test): see :func:`level_capacity` (level 1:
1161/278/361).

Warm-up demonstrations (:func:`demonstrations`): for each warm-up problem, targets from a
mixture of solvers (:data:`SOLVERS`): the correct one and plausible systematic wrong ones
("answer + 1", "+ and - swapped", "sign flipped"). A model fitted to that mixture samples the
right answer often but not reliably, and its mistakes are the same few slips on every problem:
RL can remove them, and what it learns transfers to held-out problems (README, "The embedded toy
task: why RL can learn it").
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from typing import Any, Mapping, Sequence

SPLITS = ("train", "rl", "test")
LEVELS = (1, 2, 3)
TEST_PERCENT = 20
RL_PERCENT = 15
SOURCE = "salt.tasks.toy"

# level -> (templates, operand upper bound exclusive). Templates use the names a, b, c, d.
_TEMPLATES: dict[int, tuple[tuple[str, ...], int]] = {
    1: (("a+b", "a-b"), 30),
    2: (("a+b*c", "a-b+c", "a*b-c", "a*b+c"), 10),
    3: (("(a+b)*c-d", "(a-b)*c+d", "a*b+c*d", "a*b-c*d"), 10),
}
_EXPR_RE = re.compile(r"^[0-9+\-*()]+$")


def split_of(expression: str) -> str:
    """The split (``"train"`` | ``"rl"`` | ``"test"``) an expression belongs to (stable SHA-256 bucket)."""
    digest = hashlib.sha256(expression.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "rl" if bucket < TEST_PERCENT + RL_PERCENT else "train"


def evaluate_expression(expression: str) -> int:
    """Integer value of a toy expression (digits, ``+ - *`` and parentheses only)."""
    if not _EXPR_RE.match(expression):
        raise ValueError(f"not a toy expression: {expression!r} (allowed: digits, + - * and parentheses)")
    return int(eval(expression, {"__builtins__": {}}, {}))  # noqa: S307 - charset checked above


def _instantiate(template: str, values: Mapping[str, int]) -> str:
    return "".join(str(values[ch]) if ch in values else ch for ch in template)


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(int(level) for level in levels)
    if not levels:
        raise ValueError("levels must name at least one difficulty level out of (1, 2, 3)")
    bad = [level for level in levels if level not in _TEMPLATES]
    if bad:
        raise ValueError(f"unknown toy difficulty level(s) {bad}; valid levels are {LEVELS}")
    return levels


def level_capacity(level: int, split: str) -> int:
    """Number of distinct expressions of one level in one split (enumerated; used for checks)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _capacity(_check_levels([level])[0], split)


@functools.lru_cache(maxsize=None)
def _capacity(level: int, split: str) -> int:
    templates, hi = _TEMPLATES[level]
    seen = set()
    for template in templates:
        names = sorted(set(template) & set("abcd"))
        for code in range(hi ** len(names)):
            values = {}
            for name in names:
                code, values[name] = divmod(code, hi)
            expr = _instantiate(template, values)
            if split_of(expr) == split:
                seen.add(expr)
    return len(seen)


def max_problems(split: str, levels: Sequence[int] = (1, 2, 3)) -> int:
    """The largest ``n`` :func:`generate_problems` accepts for ``split`` and ``levels`` (round-robin)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    levels = _check_levels(levels)
    k = len(levels)
    # level at position i gets ceil((n - i) / k) rows; each must stay within its capacity
    return min(level_capacity(level, split) * k + i for i, level in enumerate(levels))


def make_row(expression: str, index: int, split: str, level: int) -> dict[str, Any]:
    """One normalised row (schema in ARCHITECTURE.md) for a canonical expression."""
    return {
        "id": f"toy-{split}-{index:06d}",
        "task": "toy",
        "prompt": f"{expression}=",
        "answer": str(evaluate_expression(expression)),
        "meta": {"difficulty": level, "source": SOURCE, "expression": expression, "split": split},
    }


def generate_problems(
    n: int, split: str, seed: int, levels: Sequence[int] = (1, 2, 3)
) -> list[dict[str, Any]]:
    """``n`` unique problems of ``split``, deterministic for ``(n, split, seed, levels)``.

    Levels are assigned round-robin (row ``i`` has level ``levels[i % len(levels)]``), so the mix
    is balanced. Raises ValueError when a level's share of ``n`` exceeds the distinct
    expressions that level has in the split (see :func:`level_capacity`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = _check_levels(levels)
    n = int(n)
    need = {level: 0 for level in levels}
    for i in range(n):
        need[levels[i % len(levels)]] += 1
    for level, count in need.items():
        cap = level_capacity(level, split)
        if count > cap:
            raise ValueError(
                f"toy level {level} has only {cap} distinct {split} problems, {count} requested; "
                "lower n or add levels"
            )
    key = hashlib.sha256(f"salt-toy|{seed}|{split}|{levels}".encode()).digest()
    rng = random.Random(int.from_bytes(key[:8], "big"))
    seen: set[str] = set()
    rows = []
    for i in range(n):
        level = levels[i % len(levels)]
        templates, hi = _TEMPLATES[level]
        while True:  # rejection sampling; terminates because capacity was checked above
            template = templates[rng.randrange(len(templates))]
            values = {name: rng.randrange(hi) for name in "abcd"}
            expr = _instantiate(template, values)
            if expr not in seen and split_of(expr) == split:
                break
        seen.add(expr)
        rows.append(make_row(expr, i, split, level))
    return rows


def extract_answer(completion: str) -> str | None:
    """The answer the format defines: the completion's first line, stripped (None if empty)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    first = completion.split("\n", 1)[0].strip()
    return first or None


def toy_reward(answer: str | int, completion: str) -> float:
    """1.0 if the completion's answer (see :func:`extract_answer`) equals ``answer`` exactly."""
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    return 1.0 if extracted == str(answer).strip() else 0.0


def format_target(row: Mapping[str, Any]) -> str:
    """The SFT target completion for a row: its ``target`` (a demonstration, see
    :func:`demonstrations`) or else the answer text (the trainer appends EOS)."""
    if row.get("task") != "toy" or "answer" not in row:
        raise ValueError(f"row {row.get('id')!r}: format_target needs a toy row with an 'answer'")
    return str(row.get("target", row["answer"]))


# ------------------------------------------------------------------ warm-up demonstrations

#: The solvers whose answers the warm-up demonstrations mix: name -> (expression -> answer).
#: ``correct`` is the true value; the others are systematic slips that look like arithmetic a
#: learner could plausibly make and that are the same rule on every problem.
SOLVERS: dict[str, Any] = {
    "correct": lambda expr: evaluate_expression(expr),
    "plus_one": lambda expr: evaluate_expression(expr) + 1,  # off by one
    "swap": lambda expr: evaluate_expression(expr.translate(str.maketrans("+-", "-+"))),  # + and - swapped
    "sign": lambda expr: -evaluate_expression(expr),  # sign flipped
}

#: Default mixture: demonstrations per warm-up problem from each solver (2 correct of 5).
DEFAULT_MIXTURE: dict[str, int] = {"correct": 2, "plus_one": 1, "swap": 1, "sign": 1}


def solver_answer(expression: str, solver: str) -> int:
    """The answer ``solver`` (a key of :data:`SOLVERS`) gives for ``expression``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown toy solver {solver!r}; choose from {sorted(SOLVERS)}")
    return int(SOLVERS[solver](expression))


def check_mixture(mixture: Mapping[str, int]) -> dict[str, int]:
    """Validate a solver mixture (solver name -> demonstrations per problem, >= 0, one > 0)."""
    if not isinstance(mixture, Mapping) or not mixture:
        raise ValueError(f"toy mixture must map solver names {sorted(SOLVERS)} to counts, got {mixture!r}")
    out = {}
    for name, count in mixture.items():
        if name not in SOLVERS:
            raise ValueError(f"toy mixture: unknown solver {name!r}; choose from {sorted(SOLVERS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"toy mixture: count of {name!r} must be an integer >= 0, got {count!r}")
        out[name] = count
    if not any(out.values()):
        raise ValueError("toy mixture: at least one solver needs a count > 0")
    return out


def demonstrations(rows: Sequence[Mapping[str, Any]], mixture: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Warm-up demonstrations: per row, ``mixture[s]`` copies of the row with solver ``s``'s answer.

    Each returned row is the input row with ``target`` (the demonstrated completion text, without
    EOS) and ``meta.solver`` set; ``answer`` stays the correct one. Order: row by row, solvers in
    the mixture's order. Deterministic (no randomness; the SFT shuffles).
    """
    mixture = check_mixture(DEFAULT_MIXTURE if mixture is None else mixture)
    out = []
    for row in rows:
        expr = row["meta"]["expression"]
        for solver, count in mixture.items():
            target = str(solver_answer(expr, solver))
            for _ in range(count):
                out.append({**row, "target": target, "meta": {**row["meta"], "solver": solver}})
    return out
