"""Intervals of the results table and the claims: t-intervals over seeds, paired on problems.

The unit of replication is the training seed. Within a seed every method of a study sees the
same RL prompt order and is evaluated on the same held-out problems (common random numbers), so
a method's score and its difference from the baseline are first averaged over those problems
(and, for the claims, over group sizes) into ONE number per seed; the 95% interval is then the
two-sided t-interval over seeds (S - 1 degrees of freedom).

Why this is sound: each per-seed number already carries every source of noise (training, the
finite set of evaluation problems, the n samples per problem), and seeds are independent, so the
spread of the per-seed numbers estimates the total variance and no variance component has to be
modelled. With one seed there is no interval (NaN) and no verdict. ``se_eval`` reports the part of
that variance due to evaluation alone (problems and samples, from the per-problem paired
differences inside each seed), to show whether more seeds or more problems would help most.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

LEVEL = 0.95


def t_quantile(level: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2.0, dof))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int]:
    """Mean and half-width of the two-sided t-interval over ``values`` (NaNs dropped).

    Returns (mean, half_width, n); half_width is NaN when n < 2, mean is NaN when n == 0.
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(xs) / n
    if n < 2:
        return mean, float("nan"), 1
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t_quantile(level, n - 1) * math.sqrt(var / n), n


def paired_difference(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]],
                      level: float = LEVEL) -> dict[str, float]:
    """Paired difference a - b of per-problem scores, per seed, then a t-interval over seeds.

    Args:
        a, b: ``{seed: {problem id: score}}`` of two methods (same study, G and benchmark).
    Returns:
        ``mean`` (mean over seeds of the per-seed mean over the problems both evaluated),
        ``ci95`` (half-width of the t-interval over seeds; NaN with < 2 seeds), ``seeds``,
        ``problems`` (fewest problems shared in a seed) and ``se_eval`` (standard error of
        ``mean`` from the evaluation alone: sqrt(sum_s var_s / n_s) / S, var_s the variance of
        the per-problem differences in seed s).
    Raises ValueError when a seed present in both shares no problem id.
    """
    per_seed, evar, shared = [], 0.0, []
    for seed in sorted(set(a) & set(b)):
        ids = sorted(set(a[seed]) & set(b[seed]))
        if not ids:
            raise ValueError(f"seed {seed}: the two evaluations share no problem id; evaluate both methods on "
                             "the same problems (the benchmark's data file) to compare them paired")
        d = [a[seed][i] - b[seed][i] for i in ids]
        m = sum(d) / len(d)
        per_seed.append(m)
        shared.append(len(d))
        if len(d) > 1:
            evar += sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)
    mean, half, n = mean_ci(per_seed, level)
    return {"mean": mean, "ci95": half, "seeds": n, "problems": min(shared) if shared else 0,
            "se_eval": math.sqrt(evar) / n if n else float("nan")}


def moving_average(y, window: int):
    """Trailing moving average of a 1-D numpy array over ``window`` points (the first points average
    what exists so far); ``window <= 1`` or a shorter series returns ``y`` unchanged."""
    import numpy as np

    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = [y[: i + 1].mean() for i in range(window - 1)]
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def ols_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x (NaN with fewer than two distinct x)."""
    pts = [(float(u), float(v)) for u, v in zip(x, y) if v is not None and not math.isnan(float(v))]
    if len({u for u, _ in pts}) < 2:
        return float("nan")
    mx = sum(u for u, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    return sum((u - mx) * (v - my) for u, v in pts) / sum((u - mx) ** 2 for u, _ in pts)


HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def verdict(mean: float, half: float, side: str, bound: float = 0.0) -> str:
    """The verdict rule of the claims: compare the 95% interval [mean - half, mean + half] with ``bound``.

    ``side`` is where the claim puts the effect: ``">"`` (above ``bound``) or ``"<"`` (below).
    holds: the whole interval is on the claimed side; does not hold: the whole interval is on the
    other side; inconclusive: the interval contains ``bound``, or there is no interval.
    """
    if side not in (">", "<"):
        raise ValueError(f"verdict: side must be '>' or '<', got {side!r}")
    if mean is None or half is None or math.isnan(mean) or math.isnan(half):
        return INCONCLUSIVE
    lo, hi = mean - half, mean + half
    above, below = lo > bound, hi < bound
    if side == ">":
        return HOLDS if above else FAILS if below else INCONCLUSIVE
    return HOLDS if below else FAILS if above else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of parts: holds if every part holds, does not hold if any part does not hold."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
