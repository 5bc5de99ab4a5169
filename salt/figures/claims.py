"""The published claims, measured on the runs of the main study, each with a 95% interval and a verdict.

Nothing here is written by hand: every number comes from the aggregated tables (run means of the
trainer's logged metrics, the per-step curves, the per-problem evaluation scores), and the
verdict follows :data:`RULE` (:func:`salt.figures.stats.verdict`). The claims and how each is
measured (the unit of replication is the seed; within a seed, quantities are first averaged over
the group sizes G of the study, so each seed gives one number and the interval is the t-interval
over seeds, :mod:`salt.figures.stats`):

a. GRPO's effective update and n_eff weaken as G grows: per seed, the least-squares slope against
   log2 G of the baseline's run means of ``salt/n_eff`` and of ``train/update_norm``; both < 0.
b. SALT raises PR and n_eff and does not lose accuracy at equal rollouts: per SALT method and its
   base method (``report.claims.salt_pairs``), same G and seed: the difference of the run means of
   ``salt/participation_ratio`` (> 0), of the n_eff of the coefficients the loss used
   (``salt/n_eff_final`` of the SALT run minus ``salt/n_eff`` of the base run, > 0), and the paired
   per-problem difference of held-out ``report.claims.accuracy`` (> -``report.claims.margin``).
c. PODS reaches GRPO's peak accuracy sooner: per G and seed, the two runs' curves of
   ``report.claims.curve_metric`` (smoothed with ``figures.smooth``); target = the lower of the two
   peaks (GRPO's peak whenever PODS reaches it), so that both runs reach it and two identical
   methods give differences centred on 0; measure = GRPO's first step at the target minus PODS's
   (> 0: PODS sooner), in training steps.
d. F-GRPO raises pass@k: paired per-problem difference of held-out pass@K from the baseline, K the
   largest k evaluated for both (> 0).
e. VIP beats uniform allocation at equal budget: paired per-problem difference of held-out
   ``report.claims.accuracy`` from the baseline (uniform allocation of the same P x G rollouts, > 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from salt import metric_names as mn
from salt.figures import stats
from salt.figures.stats import FAILS, HOLDS, INCONCLUSIVE

RULE = (
    "Verdict rule (fixed before looking at the data): each part of a claim is a measured effect with its 95% "
    "t-interval over seeds. A part holds when the whole interval lies on the side the claim predicts (above 0, "
    "or above -margin for 'does not lose accuracy'), does not hold when the whole interval lies on the other "
    "side, and is inconclusive when the interval contains the bound or there are fewer than 2 seeds. A claim "
    "holds when every part holds, does not hold when any part does not hold, and is inconclusive otherwise.")

N_EFF, PR, N_EFF_FINAL, UPDATE_NORM = mn.SALT_N_EFF, mn.SALT_PARTICIPATION_RATIO, mn.SALT_N_EFF_FINAL, mn.TRAIN_UPDATE_NORM


@dataclass(frozen=True)
class ClaimsOptions:
    """``report.claims`` of the config; its defaults are the workflow config's (salt.workflow_config.Claims)."""

    salt_pairs: Mapping[str, str] = field(default_factory=lambda: {"grpo_salt": "grpo", "dapo_salt": "dapo"})
    pods: str = "pods"
    fgrpo: str = "fgrpo"
    vip: str = "vip"
    accuracy: str = mn.pass_at(1)
    margin: float = 0.02
    curve_metric: str = mn.TRAIN_ACCURACY_GENERATED

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "ClaimsOptions":
        given = dict((manifest.get("report") or {}).get("claims") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"report.claims: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**given)


def _part(measure: str, unit: str, per_seed: Mapping[int, float], side: str, bound: float = 0.0) -> dict[str, Any]:
    mean, half, n = stats.mean_ci(list(per_seed.values()))
    return {"measure": measure, "unit": unit, "estimate": mean, "ci95": half, "seeds": n, "side": side,
            "bound": bound, "verdict": stats.verdict(mean, half, side, bound),
            "per_seed": {str(k): v for k, v in sorted(per_seed.items())}}


def _missing(measure: str, why: str) -> dict[str, Any]:
    return {"measure": measure, "unit": "", "estimate": float("nan"), "ci95": float("nan"), "seeds": 0, "side": "",
            "bound": 0.0, "verdict": INCONCLUSIVE, "per_seed": {}, "missing": why}


def _mean_over_g(values: Mapping[tuple[int, int], float]) -> dict[int, float]:
    """{(G, seed): x} -> {seed: mean over G of x} (NaNs dropped; seeds with no value left out)."""
    by_seed: dict[int, list[float]] = {}
    for (_, seed), v in values.items():
        if v is not None and not math.isnan(v):
            by_seed.setdefault(seed, []).append(v)
    return {s: sum(v) / len(v) for s, v in by_seed.items()}


class _Study:
    """The runs of one (study, model, task) with lookups by method, G and seed."""

    def __init__(self, runs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], problems: Mapping,
                 study: str, model: str, task: str, benchmark: str | None):
        self.study, self.model, self.task, self.benchmark = study, model, task, benchmark
        mine = lambda r: r["study"] == study and r["model"] == model and r["task"] == task  # noqa: E731
        self.runs = {(r["method"], int(r["G"]), int(r["seed"])): r for r in runs if mine(r)}
        self.steps = [s for s in steps if mine(s)]
        self.problems = problems
        self.methods = list(dict.fromkeys(m for m, _, _ in self.runs))

    def cells(self, method: str) -> list[tuple[int, int]]:
        return sorted((g, s) for m, g, s in self.runs if m == method)

    def value(self, method: str, G: int, seed: int, key: str) -> float:
        v = self.runs[(method, G, seed)].get(mn.run_mean(key))
        return float("nan") if v is None else float(v)

    def scores(self, method: str, G: int) -> dict[int, dict[str, dict[str, float]]]:
        return self.problems.get((self.study, self.model, self.task, method, G, self.benchmark), {})

    def metrics_evaluated(self, method: str) -> set[str]:
        return {m for g, _ in self.cells(method) for per in self.scores(method, g).values() for m in per}

    def paired(self, method: str, base: str, metric: str) -> dict[int, float]:
        """{seed: mean over G of the mean over shared problems of (method - base) per-problem ``metric``}."""
        per: dict[tuple[int, int], float] = {}
        for G in sorted({g for g, _ in self.cells(method)} & {g for g, _ in self.cells(base)}):
            a, b = self.scores(method, G), self.scores(base, G)
            for seed in sorted(set(a) & set(b)):
                if metric in a[seed] and metric in b[seed]:
                    per[(G, seed)] = stats.paired_difference({seed: a[seed][metric]}, {seed: b[seed][metric]})["mean"]
        return _mean_over_g(per)

    def rollout_ratio(self, method: str, base: str) -> float:
        """Mean over shared (G, seed) of the rollouts generated by ``method`` over those of ``base``."""
        cells = sorted(set(self.cells(method)) & set(self.cells(base)))
        r = [self.runs[(method, *c)]["rollouts_used"] / self.runs[(base, *c)]["rollouts_used"] for c in cells]
        return float(np.mean(r)) if r else float("nan")

    def curve(self, method: str, G: int, seed: int, key: str) -> dict[int, float]:
        return {int(s["step"]): float(s[key]) for s in self.steps if s["method"] == method and int(s["G"]) == G
                and int(s["seed"]) == seed and s.get(key) is not None and not math.isnan(float(s[key]))}


def first_at_or_above(steps: Sequence[int], y: np.ndarray, target: float) -> int:
    """The first step whose value reaches ``target`` (y must reach it somewhere)."""
    return int(steps[int(np.argmax(y >= target - 1e-12))])


def time_to_common_peak(steps: Sequence[int], base: np.ndarray, other: np.ndarray) -> tuple[int, int, bool]:
    """(base's first step at the target, other's first step at it, whether other reached base's peak);
    target = min(peak of base, peak of other), curves already smoothed, on the same steps."""
    target = min(float(base.max()), float(other.max()))
    return first_at_or_above(steps, base, target), first_at_or_above(steps, other, target), bool(other.max() >= base.max())


def claim_a(st: _Study, base: str) -> dict[str, Any]:
    parts = []
    cells = st.cells(base)
    for key, name in ((N_EFF, "signed n_eff"), (UPDATE_NORM, "update norm")):
        measure = f"slope of {base}'s run-mean {key} against log2 G"
        if len({g for g, _ in cells}) < 2:
            parts.append(_missing(measure, f"{base} ran at fewer than 2 group sizes in study {st.study}"))
            continue
        per_seed = {}
        for seed in sorted({s for _, s in cells}):
            gs = [g for g, s in cells if s == seed]
            slope = stats.ols_slope([math.log2(g) for g in gs], [st.value(base, g, seed, key) for g in gs])
            if not math.isnan(slope):
                per_seed[seed] = slope
        parts.append(_part(measure, f"{name} per doubling of G", per_seed, "<"))
    return {"id": "a", "claim": "GRPO's effective update and n_eff weaken as G grows", "parts": parts,
            "detail": f"group sizes {sorted({g for g, _ in cells})}"}


def claim_b(st: _Study, opts: ClaimsOptions) -> dict[str, Any]:
    parts, pairs = [], [(s, b) for s, b in opts.salt_pairs.items() if s in st.methods and b in st.methods]
    if not pairs:
        parts.append(_missing("SALT vs its base method", f"no pair of report.claims.salt_pairs {dict(opts.salt_pairs)} "
                                                         f"ran in study {st.study}"))
    for salt, base in pairs:
        shared = sorted(set(st.cells(salt)) & set(st.cells(base)))
        pr = {c: st.value(salt, *c, PR) - st.value(base, *c, PR) for c in shared}
        neff = {c: st.value(salt, *c, N_EFF_FINAL) - st.value(base, *c, N_EFF) for c in shared}
        parts.append(_part(f"{salt} - {base}: run-mean {PR}", "PR", _mean_over_g(pr), ">"))
        parts.append(_part(f"{salt} - {base}: run-mean n_eff of the coefficients used ({N_EFF_FINAL} - {N_EFF})",
                           "n_eff", _mean_over_g(neff), ">"))
        measure = f"{salt} - {base}: held-out {opts.accuracy} (paired on problems)"
        acc = st.paired(salt, base, opts.accuracy) if st.benchmark else {}
        parts.append(_part(measure, opts.accuracy, acc, ">", -opts.margin) if acc
                     else _missing(measure, f"no per-problem {opts.accuracy} of both on a benchmark of {st.study}"))
    ratios = ", ".join(f"{s} / {b}: {st.rollout_ratio(s, b):.3f}" for s, b in pairs)
    return {"id": "b", "claim": "SALT raises PR and n_eff and does not lose accuracy at equal rollouts", "parts": parts,
            "detail": f"non-inferiority margin {opts.margin} (report.claims.margin); rollouts generated "
                      f"{ratios or 'n/a'}"}


def claim_c(st: _Study, opts: ClaimsOptions, base: str, smooth: int) -> dict[str, Any]:
    measure = f"steps {base} needs minus steps {opts.pods} needs to reach the lower peak of the two ({opts.curve_metric})"
    if opts.pods not in st.methods or base not in st.methods:
        return {"id": "c", "claim": "PODS reaches GRPO's peak accuracy sooner",
                "parts": [_missing(measure, f"{opts.pods} or {base} did not run in study {st.study}")], "detail": ""}
    per, reached, total = {}, 0, 0
    for G, seed in sorted(set(st.cells(opts.pods)) & set(st.cells(base))):
        cb, cp = st.curve(base, G, seed, opts.curve_metric), st.curve(opts.pods, G, seed, opts.curve_metric)
        steps = sorted(set(cb) & set(cp))
        if not steps:
            continue
        yb = stats.moving_average(np.array([cb[s] for s in steps]), smooth)
        yp = stats.moving_average(np.array([cp[s] for s in steps]), smooth)
        tb, tp, ok = time_to_common_peak(steps, yb, yp)
        per[(G, seed)] = float(tb - tp)
        reached += ok
        total += 1
    part = _part(measure, "steps", _mean_over_g(per), ">") if per else _missing(
        measure, f"'{opts.curve_metric}' was not logged by both runs (report.claims.curve_metric)")
    return {"id": "c", "claim": "PODS reaches GRPO's peak accuracy sooner", "parts": [part],
            "detail": f"PODS reached {base}'s own smoothed peak in {reached} of {total} runs; moving average over "
                      f"{smooth} steps (figures.smooth)"}


def claim_paired(st: _Study, cid: str, text: str, method: str, base: str, metric: str | None, detail: str = "") -> dict[str, Any]:
    measure = f"{method} - {base}: held-out {metric or 'pass@k'} (paired on problems)"
    if method not in st.methods:
        return {"id": cid, "claim": text, "parts": [_missing(measure, f"{method} did not run in study {st.study}")],
                "detail": detail}
    per = st.paired(method, base, metric) if metric and st.benchmark else {}
    part = _part(measure, metric, per, ">") if per else _missing(
        measure, f"no per-problem {metric or 'pass@k'} of {method} and {base} on a benchmark of {st.study}")
    return {"id": cid, "claim": text, "parts": [part], "detail": detail}


def evaluate_claims(manifest: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]],
                    problems: Mapping) -> dict[str, Any]:
    """Every claim with its parts and verdict, measured on the first study of kind ``main``."""
    opts = ClaimsOptions.from_manifest(manifest)
    figs = manifest.get("figures") or {}
    base = figs.get("baseline", "grpo")
    mains = [r for r in manifest["runs"] if r["kind"] == "main"]
    out: dict[str, Any] = {"rule": RULE, "options": {**asdict(opts), "salt_pairs": dict(opts.salt_pairs)},
                           "baseline": base, "claims": []}
    if not mains:
        out["note"] = "no study of kind 'main': nothing to measure"
        return out
    first = mains[0]
    bench = next(iter(first.get("evals") or {}), None)
    st = _Study(runs, steps, problems, first["study"], first["model"], first["task"], bench)
    out.update(study=st.study, model=st.model, task=st.task, benchmark=bench)
    passk = sorted((m for m in st.metrics_evaluated(opts.fgrpo) & st.metrics_evaluated(base) if m.startswith("pass@")),
                   key=lambda m: int(m[len("pass@"):]))
    claims = [
        claim_a(st, base),
        claim_b(st, opts),
        claim_c(st, opts, base, int(figs.get("smooth", 1))),
        claim_paired(st, "d", "F-GRPO raises pass@k", opts.fgrpo, base, passk[-1] if passk else None,
                     f"K = the largest k evaluated for both ({', '.join(passk) or 'none'})"),
        claim_paired(st, "e", "VIP beats uniform allocation at equal budget", opts.vip, base, opts.accuracy,
                     f"rollouts generated {opts.vip} / {base}: {st.rollout_ratio(opts.vip, base):.3f}"),
    ]
    for c in claims:
        c["verdict"] = stats.combine([p["verdict"] for p in c["parts"]])
    out["claims"] = claims
    return out


def _cell(p: Mapping[str, Any]) -> str:
    if p.get("missing"):
        return f"no data: {p['missing']}"
    est, half = p["estimate"], p["ci95"]
    if math.isnan(est):
        return "no data"
    if math.isnan(half):
        return f"{est:+.4g} (no interval: {p['seeds']} seed)"
    return f"{est:+.4g} [{est - half:+.4g}, {est + half:+.4g}]"


def claims_markdown(result: Mapping[str, Any]) -> str:
    """One table row per measured part: claim, its verdict, the measurement, estimate [95% interval], seeds."""
    if not result.get("claims"):
        return f"_{result.get('note', 'No claims measured.')}_\n"
    head = ["claim", "verdict", "measurement", "estimate [95% CI]", "seeds", "prediction", "part verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result["claims"]:
        for i, p in enumerate(c["parts"]):
            pred = f"{p['side']} {p['bound']:g}" if p["side"] else ""
            first = i == 0
            lines.append("| " + " | ".join([f"({c['id']}) {c['claim']}" if first else "", f"**{c['verdict']}**" if first else "",
                                            p["measure"], _cell(p), str(p["seeds"]), pred, p["verdict"]]) + " |")
    notes = [f"Study `{result['study']}` (model {result['model']}, task {result['task']}, benchmark "
             f"{result['benchmark'] or 'none'}), baseline `{result['baseline']}`."]
    notes += [f"({c['id']}) {c['detail']}." for c in result["claims"] if c.get("detail")]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes + [RULE]) + "\n"


__all__ = ["RULE", "HOLDS", "FAILS", "INCONCLUSIVE", "ClaimsOptions", "evaluate_claims", "claims_markdown",
           "time_to_common_peak"]
