"""Rewards for training and evaluation: one entry point, dispatching on ``row["task"]``.

``score_batch(rows, completions)`` returns one :class:`RewardResult` per completion (reward 1.0 or
0.0, what was extracted, and an ``info`` dict for auditing):

* ``toy``  -> ``salt.tasks.toy.toy_reward(row["answer"], completion)`` (in-process, no pool);
* ``math`` -> :func:`salt.tasks.verify.math_equal` semantics in the module-level verifier pool
  (worker processes with a per-comparison deadline; the pool is only started when a batch holds
  math rows, and closed at interpreter exit);
* ``mcq``  -> :func:`salt.tasks.mcq.extract_choice` compared with the gold letter;
* ``code`` -> the program extracted from the completion's fenced code block, run against
  ``row["tests"]`` in :func:`salt.tasks.sandbox.run_tests_many`.

Two switches reproduce the SALT authors' training rewards (docs/fidelity.md rows 12, 13; run config
``reward.math_fallback`` and ``reward.code_credit``): ``math_fallback=True`` also pays 1 when the last
number of the completion equals the last number of the reference answer (compared as written, thousands
commas removed); ``code_credit="fraction"`` pays the fraction of ``row["tests"]`` passed, each test run in
its own sandbox with the program freshly loaded (as the published reward runs each test in a fresh
namespace), instead of 1 only when all pass (``"all"``, the default). Evaluation keeps the defaults.

Code extraction rule (:func:`extract_code`): the last ```` ```python ```` (or ``py``/``python3``)
block that defines ``row["entry_point"]`` when one is given, else the last such block, else the
last bare ```` ``` ```` block; an unclosed final fence (truncated completion) runs to the end of
the text. No fence at all means no program (reward 0, ``info["status"] = "no_code"``). When
``row["meta"]["code_prefix"]`` is set (HumanEval: the signature + docstring) and the extracted
code does not define the entry point, the prefix is prepended (the model completed the body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


@dataclass
class RewardResult:
    reward: float
    extracted: str | None
    info: dict = field(default_factory=dict)


CODE_CREDITS = ("all", "fraction")
"""``all``: 1 when every test passes (ours) | ``fraction``: the fraction of tests passed (SALT's MBPP reward)."""

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3"}
MAX_CODE_CHARS = 100_000


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The program in a completion's fenced code block (rule in the module docstring), or None."""
    if not isinstance(text, str) or "```" not in text:
        return None
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return None
    py = [code for lang, code in blocks if lang in _PY_LANGS]
    bare = [code for lang, code in blocks if lang == ""]
    candidates = py or bare
    if not candidates:
        return None
    if entry_point:
        pattern = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        defining = [c for c in candidates if pattern.search(c)]
        if defining:
            candidates = defining
    code = candidates[-1].strip("\n")
    return code if code.strip() else None


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _score_toy(row: Mapping[str, Any], completion: str) -> RewardResult:
    from salt.tasks import toy

    reward = float(toy.toy_reward(row["answer"], completion))
    extractor = getattr(toy, "extract_answer", None)
    extracted = extractor(completion) if callable(extractor) else None
    return RewardResult(reward, extracted, {"task": "toy"})


def _score_mcq(row: Mapping[str, Any], completion: str) -> RewardResult:
    from salt.tasks.mcq import extract_choice

    n = len(row.get("choices") or [])
    letter, rule = extract_choice(completion, n_choices=n or 4)
    gold = str(row["answer"]).strip().upper()
    return RewardResult(float(letter == gold), letter, {"task": "mcq", "rule": rule})


def score_batch(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[str],
    *,
    workers: int = 2,
    timeout_s: float = 5.0,
    code_timeout_s: float = 10.0,
    code_memory_mb: int = 512,
    math_fallback: bool = False,
    code_credit: str = "all",
) -> list[RewardResult]:
    """Score ``completions[i]`` against ``rows[i]``; returns ``len(rows)`` results in order.

    Args:
        rows: normalised rows (schema in ARCHITECTURE.md); ``task`` selects the verifier.
        completions: decoded completions, same length as ``rows`` (repeat a row for n samples).
        workers: math verifier processes / concurrent sandboxes.
        timeout_s: wall-clock deadline per math comparison.
        code_timeout_s: wall-clock deadline per program (all its tests together).
        code_memory_mb: address-space limit of each program.
        math_fallback: also pay 1 when the last numbers of completion and answer are equal (module docstring).
        code_credit: ``all`` or ``fraction`` (:data:`CODE_CREDITS`, module docstring).
    Raises:
        salt.tasks.sandbox.SandboxIsolationError: code rows, and the sandbox may not run programs
            here (no bubblewrap and no opt-in); jobs check this at start-up with
            :func:`check_code_sandbox`.
    """
    if len(rows) != len(completions):
        raise ValueError(f"score_batch: {len(rows)} rows but {len(completions)} completions")
    if code_credit not in CODE_CREDITS:
        raise ValueError(f"reward.code_credit={code_credit!r}: expected one of {', '.join(CODE_CREDITS)}")
    results: list[RewardResult | None] = [None] * len(rows)
    math_idx: list[int] = []
    code_idx: list[int] = []
    code_jobs: list[dict[str, Any]] = []
    for i, (row, completion) in enumerate(zip(rows, completions)):
        task = row.get("task")
        completion = completion if isinstance(completion, str) else ""
        if task == "toy":
            results[i] = _score_toy(row, completion)
        elif task == "mcq":
            results[i] = _score_mcq(row, completion)
        elif task == "math":
            math_idx.append(i)
        elif task == "code":
            entry_point = row.get("entry_point")
            code = extract_code(completion[-MAX_CODE_CHARS * 2 :], entry_point)
            if code is None:
                results[i] = RewardResult(0.0, None, {"task": "code", "status": "no_code"})
                continue
            prefix = (row.get("meta") or {}).get("code_prefix")
            if prefix and entry_point and not _defines(code, entry_point):
                code = prefix + code
            tests = row.get("tests")
            if not tests:
                raise ValueError(f"row {row.get('id')!r}: a code row needs a non-empty 'tests' list")
            code_idx.append(i)
            code_jobs.append(
                {
                    "program": code[:MAX_CODE_CHARS],
                    "tests": list(tests),
                    "setup": row.get("setup", "") or "",
                    "entry_point": entry_point,
                    "timeout_s": code_timeout_s,
                    "memory_mb": code_memory_mb,
                }
            )
        else:
            raise ValueError(
                f"row {row.get('id')!r}: unknown task {task!r}; expected one of toy, math, mcq, code"
            )
    if math_idx:
        from salt.tasks.verify import get_pool, last_number

        pairs = [(str(rows[i]["answer"]), completions[i] or "") for i in math_idx]
        for i, res in zip(math_idx, get_pool(workers).compare_many(pairs, timeout_s=timeout_s)):
            info = {"task": "math", "status": res.status, "duration_s": round(res.duration_s, 4)}
            equal, extracted = bool(res.equal), res.extracted
            if math_fallback and not equal:
                gold_num, pred_num = last_number(str(rows[i]["answer"])), last_number(completions[i] or "")
                if gold_num is not None and gold_num == pred_num:
                    equal, extracted, info["status"] = True, pred_num, "numeric_fallback"
            results[i] = RewardResult(float(equal), extracted, info)
    if code_idx:
        from salt.tasks.sandbox import run_tests_many

        if code_credit == "fraction":  # one sandbox per test: the program is loaded afresh for each
            runs = run_tests_many([{**job, "tests": [t]} for job in code_jobs for t in job["tests"]], max_workers=workers)
            at = 0
            for i, job in zip(code_idx, code_jobs):
                mine, at = runs[at: at + len(job["tests"])], at + len(job["tests"])
                passed = sum(r.passed for r in mine)
                results[i] = RewardResult(
                    passed / len(mine), job["program"],
                    {"task": "code", "status": "passed" if passed == len(mine) else f"passed {passed}/{len(mine)}",
                     "duration_s": round(sum(r.duration_s for r in mine), 4),
                     "stderr_tail": next((r.stderr[-500:] for r in mine if not r.passed), "")},
                )
        else:
            for i, job, res in zip(code_idx, code_jobs, run_tests_many(code_jobs, max_workers=workers)):
                results[i] = RewardResult(
                    float(res.passed),
                    job["program"],
                    {"task": "code", "status": res.status, "duration_s": round(res.duration_s, 4),
                     "stderr_tail": res.stderr[-500:]},
                )
    return results  # type: ignore[return-value]


def check_code_sandbox(rows: Sequence[Mapping[str, Any]], allow_unisolated: bool | None = None) -> dict | None:
    """Start-up check of a job that will score ``rows``: when any is a code row, the code sandbox
    must be able to run programs here (bubblewrap, or the explicit opt-in ``allow_unisolated``).

    Raises :class:`salt.tasks.sandbox.SandboxIsolationError` now, before any model is loaded,
    instead of at the first code rollout. Returns the sandbox's status to record
    (:func:`salt.tasks.sandbox.require_isolation`), or None when no row is a code row.
    """
    if not any(row.get("task") == "code" for row in rows):
        return None
    from salt.tasks.sandbox import require_isolation

    return require_isolation(allow_unisolated)


__all__ = ["CODE_CREDITS", "RewardResult", "check_code_sandbox", "extract_code", "score_batch"]
