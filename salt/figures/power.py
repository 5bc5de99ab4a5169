"""Variance components of held-out scores and the power of the claims' verdict rule.

Model of one held-out per-problem score (e.g. pass@1, or a paired difference of two methods' scores)
of replicate run j = (warm-up w, RL seed s) on problem p, averaged over n samples::

    y[w, s, p] = mu + a[w] + b[w, s] + c[p] + e[w, s, p] + eps[w, s, p]

a ~ (0, var_warmup): the warm-up model; b ~ (0, var_seed): the RL seed within a warm-up; c ~ (0,
var_problem): the problem; e ~ (0, var_run_problem): how a run's effect differs between problems;
eps: the sampling noise of the n samples' mean (its variance is known per cell from the samples,
``sample_var``: p(1 - p)/(n - 1) for a pass@1 mean, the sum of both for a paired difference).

:func:`variance_components` estimates them by the method of moments (ANOVA mean squares) on the
run x problem table, and splits the run variance into warm-up and RL seed with the nested
(warm-up > seed) mean squares. When no warm-up has two RL seeds the split is not identifiable: the
run variance is reported as ``var_warmup_plus_seed`` with ``var_warmup`` / ``var_seed`` NaN.

:func:`mde` is the smallest true effect that the verdict rule (:func:`salt.figures.stats.verdict`,
the whole two-sided 95% t-interval over R replicates beyond the bound) declares "holds" with
probability ``power``, for replicate values of standard deviation sigma: with T the non-central t
(R - 1 degrees of freedom, non-centrality delta sqrt(R) / sigma), power = P(T > t_{0.975, R-1}).
:func:`replicate_sd` projects the replicate standard deviation of a design from the components, so
that the MDE of other designs (more warm-ups, fewer G, more problems) can be compared
(:func:`design_table`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from salt.figures.stats import LEVEL, t_quantile

POWER = 0.8


def _noncentral_power(ncp: float, dof: int, level: float) -> float:
    from scipy import stats

    crit = t_quantile(level, dof)
    return float(stats.nct.sf(crit, dof, ncp))


def mde(sd: float, replicates: int, level: float = LEVEL, power: float = POWER) -> float:
    """Minimum detectable effect (distance from the bound, in the unit of the replicate values) at
    which the verdict rule says "holds" with probability ``power``; NaN when ``replicates`` < 2 or
    ``sd`` is not finite. ``sd`` = standard deviation of one replicate's value."""
    if replicates < 2 or sd is None or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    from scipy import optimize

    dof = replicates - 1
    hi = t_quantile(level, dof) + 10.0
    while _noncentral_power(hi, dof, level) < power:
        hi *= 2.0
    ncp = optimize.brentq(lambda x: _noncentral_power(x, dof, level) - power, 0.0, hi, xtol=1e-10)
    return ncp * sd / math.sqrt(replicates)


def rejection_rate(effect: float, sd: float, replicates: int, sims: int, seed: int = 0, level: float = LEVEL) -> float:
    """Brute force: the fraction of ``sims`` simulated studies (``replicates`` normal values of mean
    ``effect`` and standard deviation ``sd``) whose t-interval lies wholly above 0 (verdict "holds")."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(effect, sd, size=(sims, replicates))
    mean = x.mean(axis=1)
    half = t_quantile(level, replicates - 1) * x.std(axis=1, ddof=1) / math.sqrt(replicates)
    return float(np.mean(mean - half > 0))


@dataclass(frozen=True)
class Components:
    """Estimated variance components of one score (see the module docstring); NaN = not estimable."""

    mean: float
    var_warmup: float
    var_seed: float
    var_warmup_plus_seed: float
    var_problem: float
    var_run_problem: float
    var_sample: float  # sampling variance of one cell's mean (already divided by n)
    warmups: int
    runs: int
    problems: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def variance_components(rows: Sequence[Mapping[str, Any]]) -> Components:
    """Method-of-moments variance components from a run x problem table.

    Args:
        rows: one per (run, problem): ``warmup``, ``seed``, ``problem``, ``value`` and optionally
            ``sample_var`` (variance of ``value`` from its n samples). A run is (warmup, seed); only
            problems every run has are used (the design must be crossed), negative estimates are
            reported as they are (they are unbiased; clip when reading).
    Raises ValueError with fewer than 2 runs or 2 shared problems.
    """
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    svar: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        run = (r["warmup"], r["seed"])
        cells[run][str(r["problem"])] = float(r["value"])
        if r.get("sample_var") is not None:
            svar[run][str(r["problem"])] = float(r["sample_var"])
    runs = sorted(cells)
    shared = sorted(set.intersection(*(set(cells[j]) for j in runs))) if runs else []
    J, P = len(runs), len(shared)
    if J < 2 or P < 2:
        raise ValueError(f"variance_components: need >= 2 runs and >= 2 problems shared by all, got {J} runs and "
                         f"{P} shared problems")
    y = [[cells[j][p] for p in shared] for j in runs]
    grand = _mean([v for row in y for v in row])
    run_m = [_mean(row) for row in y]
    prob_m = [_mean([y[i][k] for i in range(J)]) for k in range(P)]
    ms_run = P * sum((m - grand) ** 2 for m in run_m) / (J - 1)
    ms_prob = J * sum((m - grand) ** 2 for m in prob_m) / (P - 1)
    ms_res = sum((y[i][k] - run_m[i] - prob_m[k] + grand) ** 2 for i in range(J) for k in range(P)) / ((J - 1) * (P - 1))
    var_run = (ms_run - ms_res) / P
    var_problem = (ms_prob - ms_res) / J
    have_svar = all(p in svar[j] for j in runs for p in shared)
    var_sample = _mean([svar[j][p] for j in runs for p in shared]) if have_svar else float("nan")
    var_run_problem = ms_res - var_sample if have_svar else float("nan")
    # Nested split of the run means: warm-up > RL seed. E[within] = var_seed + ms_res / P,
    # E[between] = var_seed + ms_res / P + n0 var_warmup (unbalanced: n0 from the group sizes).
    by_w: dict[Any, list[float]] = defaultdict(list)
    for (w, _), m in zip(runs, run_m):
        by_w[w].append(m)
    W = len(by_w)
    dof_within = sum(len(v) - 1 for v in by_w.values())
    var_warmup = var_seed = float("nan")
    if dof_within > 0 and W > 1:
        ms_within = sum((m - _mean(v)) ** 2 for v in by_w.values() for m in v) / dof_within
        ms_between = sum(len(v) * (_mean(v) - grand) ** 2 for v in by_w.values()) / (W - 1)
        n0 = (J - sum(len(v) ** 2 for v in by_w.values()) / J) / (W - 1)
        var_seed = ms_within - ms_res / P
        var_warmup = (ms_between - ms_within) / n0
    elif dof_within > 0:  # one warm-up, several seeds: the run variance is all RL seed
        var_seed = var_run
    return Components(mean=grand, var_warmup=var_warmup, var_seed=var_seed, var_warmup_plus_seed=var_run,
                      var_problem=var_problem, var_run_problem=var_run_problem, var_sample=var_sample,
                      warmups=W, runs=J, problems=P)


def replicate_sd(c: Components, problems: int, samples_ratio: float = 1.0, cells: int = 1,
                 include_problems: bool = False) -> float:
    """Projected standard deviation of one replicate's value (mean over ``problems`` problems and
    over ``cells`` runs sharing the replicate's warm-up, e.g. the group sizes G averaged by a claim).

    ``samples_ratio`` = new samples per problem / measured (the sampling variance scales by its
    inverse). The warm-up variance is shared by the ``cells`` runs of a replicate; RL seed, run x
    problem and sampling variance are not. ``include_problems`` adds var_problem / problems (a new
    draw of problems per replicate; the default design scores every run on the same problems).
    When the warm-up / seed split is not identifiable the combined run variance is counted as
    warm-up (the conservative reading: nothing of it averages out over cells)."""
    split = math.isfinite(c.var_warmup) and math.isfinite(c.var_seed)
    v_w = max(c.var_warmup, 0.0) if split else max(c.var_warmup_plus_seed, 0.0)
    v_s = max(c.var_seed, 0.0) if split else 0.0
    v_sample = c.var_sample if math.isfinite(c.var_sample) else 0.0
    v_rp = c.var_run_problem if math.isfinite(c.var_run_problem) else 0.0
    within = v_s + (max(v_rp, 0.0) + v_sample / samples_ratio) / problems
    var = v_w + within / cells + (max(c.var_problem, 0.0) / problems if include_problems else 0.0)
    return math.sqrt(var)


def design_table(c: Components, designs: Sequence[Mapping[str, Any]], level: float = LEVEL,
                 power: float = POWER) -> list[dict[str, Any]]:
    """For each design ``{replicates, cells, problems, samples_ratio}`` (plus any labels), its
    projected replicate standard deviation and minimum detectable effect."""
    out = []
    for d in designs:
        sd = replicate_sd(c, int(d["problems"]), float(d.get("samples_ratio", 1.0)), int(d.get("cells", 1)))
        out.append({**d, "replicate_sd": sd, "mde": mde(sd, int(d["replicates"]), level, power)})
    return out


__all__ = ["POWER", "Components", "mde", "rejection_rate", "variance_components", "replicate_sd", "design_table"]
