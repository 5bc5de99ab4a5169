"""Multiple choice: robust letter extraction and seeded per-question choice shuffling.

Letter extraction rules (:func:`extract_choice`). Only letters among the first ``n_choices`` count.
The rules are tried from the clearest marker to the weakest; the first rule with a hit decides,
and within a rule the *last* occurrence in the text wins (models restate and correct themselves):

1. ``boxed``:   ``\\boxed{B}``, ``\\boxed{(B)}``, ``\\boxed{\\text{B}}``, ``\\boxed{B) ...}``.
2. ``marker``:  an answer phrase followed by the letter: ``Answer: B``, ``answer is (B)``,
   ``the correct option is b``, ``final answer: **B**``, ``choice B``. Case-insensitive, but a
   lowercase letter only counts when nothing word-like follows it (so "the answer is a bit
   tricky" is no hit) and an uppercase letter must not start a word ("Answer: Apple" is no hit).
3. ``paren``:   an uppercase letter in parentheses standing alone: ``(B)``.
4. ``line``:    a line that is only the letter, optionally with ``)``, ``.`` or ``:`` after it
   (``B``, ``B)``, ``**B.**``).

A capital "A" at the start of a sentence ("A quick check shows ...") matches none of the rules,
so it never produces a false hit; nor does a letter inside words. No hit: ``(None, "none")``.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_BOXED = re.compile(
    r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?\s*([A-Za-z])\s*\)?\s*(?:\}|[).:,\s])", re.DOTALL
)
_MARKER = re.compile(
    r"(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be|=))?\s*(?:is)?\s*[:=]?\s*"
    r"(?:\*\*|__)?\s*[\(\[]?\s*(?:\*\*)?([A-Za-z])(?![A-Za-z0-9'])(?P<after>[^\n]{0,3})",
    re.IGNORECASE,
)
_PAREN = re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)")
_LINE = re.compile(r"^[ \t>*_#-]*\(?([A-Z])\s*[).:]?[ \t*_]*$", re.MULTILINE)


def _allowed(n_choices: int) -> str:
    if not 2 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in [2, {len(LETTERS)}], got {n_choices}")
    return LETTERS[:n_choices]


def extract_choice(text: str | None, n_choices: int = 4) -> tuple[str | None, str]:
    """``(letter, rule)`` for the chosen option of a completion (rules in the module docstring)."""
    allowed = _allowed(n_choices)
    if not text:
        return None, "none"
    text = text[-20000:]  # the answer is at the end; bound the regex work on huge inputs
    hits = [m.group(1).upper() for m in _BOXED.finditer(text) if m.group(1).upper() in allowed]
    if hits:
        return hits[-1], "boxed"
    hits = []
    for m in _MARKER.finditer(text):
        letter = m.group(1)
        if letter.upper() not in allowed:
            continue
        after = m.group("after")
        if letter.islower() and re.match(r"\s+[A-Za-z]", after or ""):
            continue  # "the answer is a bit ..." -> an article, not an option
        hits.append(letter.upper())
    if hits:
        return hits[-1], "marker"
    hits = [m.group(1) for m in _PAREN.finditer(text) if m.group(1) in allowed]
    if hits:
        return hits[-1], "paren"
    hits = [m.group(1) for m in _LINE.finditer(text) if m.group(1) in allowed]
    if hits:
        return hits[-1], "line"
    return None, "none"


def permutation(n: int, seed: int, question_id: str) -> list[int]:
    """A permutation of ``range(n)`` from a stable hash of ``(seed, question_id)``.

    Stable across processes and Python versions (sha256, not ``hash()``), independent of the order
    in which questions are processed. ``shuffled[j] = choices[perm[j]]``.
    """
    digest = hashlib.sha256(f"salt-mcq:{seed}:{question_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    perm = list(range(n))
    rng.shuffle(perm)
    return perm


def shuffle_choices(
    choices: Sequence[str], correct_index: int, seed: int, question_id: str
) -> tuple[list[str], str, list[int]]:
    """Shuffle ``choices`` with :func:`permutation`; returns ``(shuffled, answer_letter, perm)``."""
    n = len(choices)
    _allowed(n)
    if not 0 <= correct_index < n:
        raise ValueError(f"question {question_id!r}: correct_index {correct_index} not in [0, {n})")
    perm = permutation(n, seed, question_id)
    shuffled = [choices[p] for p in perm]
    return shuffled, LETTERS[perm.index(correct_index)], perm


__all__ = ["LETTERS", "extract_choice", "permutation", "shuffle_choices"]
