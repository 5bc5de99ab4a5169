"""Evaluation metrics (methods.md section 7): pass@k, avg@k, maj@k.

Always report the number of samples n next to these numbers.
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Optional, Sequence


def _check_counts(n: int, c: int, k: int) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ValueError(f"pass@k: {name} must be an integer, got {v!r}")
    if n < 1:
        raise ValueError(f"pass@k: n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(
            f"pass@k: k={k} must be in [1, n={n}]; draw at least k samples per problem (eval.n_samples >= k)"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n - c, k) / C(n, k).

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms large binomials.

    Args:
        n: samples drawn for the problem.
        c: how many of them are correct.
        k: 1 <= k <= n.
    Returns:
        probability that at least one of k samples drawn without replacement is correct.
    """
    _check_counts(n, c, k)
    n, c, k = int(n), int(c), int(k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[float]) -> float:
    """avg@k: mean correctness over the k samples of one problem (bools or scores in [0, 1])."""
    values = [float(x) for x in correct]
    if not values:
        raise ValueError("avg@k needs at least one sample")
    return sum(values) / len(values)


def majority_answer(answers: Sequence[Optional[str]]) -> Optional[int]:
    """Index of the sample whose answer wins the majority vote, or None if every answer is None.

    Answers are compared after ``str.strip()``; None (no extractable answer) never votes.
    Ties between answers with the same count go to the answer that appears first in the
    sequence, and the returned index is that answer's first occurrence.
    """
    keys = [a.strip() if isinstance(a, str) else None for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    for i, k in enumerate(keys):
        if k is not None and counts[k] == best:
            return i
    return None  # unreachable: counts is non-empty


def maj_at_k(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> float:
    """maj@k: 1.0 if the majority-vote answer is correct, else 0.0.

    Args:
        answers: the k extracted answers (None when nothing could be extracted).
        correct: the k correctness flags of the same samples.
    Returns:
        correctness of the first sample carrying the winning answer (ties: see
        :func:`majority_answer`); 0.0 when no sample has an answer.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} answers but {len(correct)} correctness flags")
    if not answers:
        raise ValueError("maj@k needs at least one sample")
    idx = majority_answer(answers)
    return 0.0 if idx is None else float(bool(correct[idx]))
