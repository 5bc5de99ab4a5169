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
from salt.figures import power, stats
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


def _part(measure: str, unit: str, per_seed: Mapping[int, float], side: str, bound: float = 0.0,
          components: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One measured part: estimate, 95% t-interval over replicates, verdict, and the minimum detectable
    effect at 80% power (:func:`salt.figures.power.mde`, from the spread of the replicate values)."""
    mean, half, n = stats.mean_ci(list(per_seed.values()))
    vals = [v for v in per_seed.values() if not math.isnan(v)]
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    out = {"measure": measure, "unit": unit, "estimate": mean, "ci95": half, "seeds": n, "side": side,
           "bound": bound, "verdict": stats.verdict(mean, half, side, bound),
           "replicate_sd": sd, "mde80": power.mde(sd, n),
           "per_seed": {str(k): v for k, v in sorted(per_seed.items())}}
    out["power_reading"] = power_reading(out)
    if components is not None:
        out["components"] = dict(components)
    return out


def power_reading(p: Mapping[str, Any]) -> str:
    """What an inconclusive (or any) verdict means given the MDE: too small a study, or no effect of that size."""
    mde, est = p.get("mde80"), p.get("estimate")
    if mde is None or est is None or math.isnan(mde) or math.isnan(est):
        return "no power figure (fewer than 2 replicates)"
    if p["verdict"] == HOLDS:
        return "detected"
    if p["verdict"] == FAILS:
        return "the opposite of the claim is detected"
    dist = (est - p["bound"]) if p["side"] == ">" else (p["bound"] - est)
    if mde == 0:
        return "no spread between the replicates and the estimate on the bound: nothing to detect"
    if dist >= mde:
        return f"the estimate is beyond the MDE {mde:.3g} yet inconclusive (a noisy draw)"
    return (f"an effect of {mde:.3g} or more (from the bound) would be detected 80% of the time; the estimate "
            f"({dist:+.3g} from the bound) is smaller: absent at that size, or the study is too small to see it")


def _missing(measure: str, why: str) -> dict[str, Any]:
    return {"measure": measure, "unit": "", "estimate": float("nan"), "ci95": float("nan"), "seeds": 0, "side": "",
            "bound": 0.0, "verdict": INCONCLUSIVE, "per_seed": {}, "replicate_sd": float("nan"), "mde80": float("nan"),
            "power_reading": "no data", "missing": why}


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
                 study: str, model: str, task: str, benchmark: str | None, samples: Mapping | None = None):
        self.study, self.model, self.task, self.benchmark = study, model, task, benchmark
        mine = lambda r: r["study"] == study and r["model"] == model and r["task"] == task  # noqa: E731
        self.runs = {(r["method"], int(r["G"]), int(r["seed"])): r for r in runs if mine(r)}
        self.steps = [s for s in steps if mine(s)]
        self.problems = problems
        self.samples = samples or {}
        self.methods = list(dict.fromkeys(m for m, _, _ in self.runs))

    def warmup(self, seed: int) -> int:
        """The warm-up model of a replicate (the run's ``warmup``; replicate r = warm-up r when not recorded)."""
        ws = {int(r.get("warmup", s) if r.get("warmup") is not None else s) for (_, _, s), r in self.runs.items() if s == seed}
        return ws.pop() if len(ws) == 1 else seed

    def components(self, method: str, base: str | None, metric: str, gs: Sequence[int] | None = None) -> dict[str, Any] | None:
        """Variance components (:func:`salt.figures.power.variance_components`) of the per-problem
        ``metric`` of ``method`` (minus ``base``'s, paired, when given), per G then averaged over G;
        the sampling variance is known for pass@1 (p(1 - p) / (n - 1) per score), else left NaN. ``gs``: only these G."""
        per_g = []
        shared_g = {g for g, _ in self.cells(method)} & ({g for g, _ in self.cells(base)} if base else {g for g, _ in self.cells(method)})
        for G in sorted(shared_g & set(gs) if gs is not None else shared_g):
            a, b = self.scores(method, G), self.scores(base, G) if base else {}
            na, nb = self.n_samples(method, G), self.n_samples(base, G) if base else {}
            rows = []
            for seed in sorted(set(a) & set(b) if base else set(a)):
                if metric not in a[seed] or (base and metric not in b[seed]):
                    continue
                ids = set(a[seed][metric]) & set(b[seed][metric]) if base else set(a[seed][metric])
                for pid in ids:
                    v = a[seed][metric][pid] - (b[seed][metric][pid] if base else 0.0)
                    sv = _sample_var(a[seed][metric][pid], na.get(seed, {}).get(pid), metric)
                    if base:
                        sv2 = _sample_var(b[seed][metric][pid], nb.get(seed, {}).get(pid), metric)
                        sv = None if sv is None or sv2 is None else sv + sv2
                    rows.append({"warmup": self.warmup(seed), "seed": seed, "problem": pid, "value": v, "sample_var": sv})
            try:
                per_g.append(power.variance_components(rows))
            except ValueError:
                continue
        if not per_g:
            return None
        keys = [k for k in per_g[0].as_dict() if k.startswith("var_") or k == "mean"]
        out: dict[str, Any] = {k: float(np.mean([getattr(c, k) for c in per_g])) for k in keys}
        out.update(warmups=per_g[0].warmups, runs=per_g[0].runs, problems=per_g[0].problems, group_sizes=len(per_g))
        return out

    def n_samples(self, method: str, G: int) -> dict[int, dict[str, int]]:
        return self.samples.get((self.study, self.model, self.task, method, G, self.benchmark), {})

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


def _sample_var(score: float, n: int | None, metric: str) -> float | None:
    """Sampling variance of one problem's pass@1 (a mean of n Bernoulli samples), unbiased; None otherwise."""
    if metric != mn.pass_at(1) or not n or n < 2:
        return None
    return score * (1.0 - score) / (n - 1)


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
        parts.append(_part(measure, opts.accuracy, acc, ">", -opts.margin, st.components(salt, base, opts.accuracy))
                     if acc else _missing(measure, f"no per-problem {opts.accuracy} of both on a benchmark of {st.study}"))
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
    part = _part(measure, metric, per, ">", 0.0, st.components(method, base, metric)) if per else _missing(
        measure, f"no per-problem {metric or 'pass@k'} of {method} and {base} on a benchmark of {st.study}")
    return {"id": cid, "claim": text, "parts": [part], "detail": detail}


def evaluate_claims(manifest: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]],
                    problems: Mapping, samples: Mapping | None = None, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Every claim with its parts, verdicts and power, measured on the first study of kind ``main``
    (only its replicates ``seeds`` when given: the replication check measures disjoint halves).

    ``samples``: ``{(study, model, task, method, G, benchmark): {seed: {problem id: n samples}}}``,
    for the sampling component of the variance (:meth:`_Study.components`)."""
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
    if seeds is not None:
        keep = {int(x) for x in seeds}
        runs = [r for r in runs if r["study"] != first["study"] or int(r["seed"]) in keep]
        steps = [r for r in steps if r["study"] != first["study"] or int(r["seed"]) in keep]
        problems = {k: {s: v for s, v in per.items() if int(s) in keep} for k, per in problems.items()}
    st = _Study(runs, steps, problems, first["study"], first["model"], first["task"], bench, samples)
    out.update(study=st.study, model=st.model, task=st.task, benchmark=bench,
               seeds=sorted({s for _, _, s in st.runs}), warmups=sorted({st.warmup(s) for _, _, s in st.runs}))
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
    comp = st.components(base, None, opts.accuracy) if bench else None
    if comp:
        out["variance_components"] = {"metric": opts.accuracy, "method": base, **comp}
    split = warmup_seed_split(manifest, runs, steps, problems, samples, st, base, opts.accuracy) if bench else None
    if split:
        out["variance_split"] = split
    return out


def warmup_seed_split(manifest: Mapping[str, Any], runs, steps, problems, samples, st: _Study, base: str,
                      metric: str) -> dict[str, Any] | None:
    """Warm-up vs RL seed: the main study's replicates confound them (each its own warm-up); a study of kind
    ``seed_variance`` (several RL seeds of the baseline on one warm-up) measures the RL-seed component, and
    var(warm-up) = var(warm-up + RL seed) of the main study minus it, at the G both ran."""
    sv = [r for r in manifest["runs"] if r["kind"] == "seed_variance" and r["model"] == st.model and r["task"] == st.task
          and r["method"] == base]
    if not sv:
        return None
    other = _Study(runs, steps, problems, sv[0]["study"], st.model, st.task, st.benchmark, samples)
    gs = sorted({g for g, _ in other.cells(base)} & {g for g, _ in st.cells(base)})
    seed_c = other.components(base, None, metric, gs)
    main_c = st.components(base, None, metric, gs)
    if not gs or not seed_c or not main_c:
        return None
    return {"study": other.study, "method": base, "metric": metric, "group_sizes": gs,
            "rl_seeds": seed_c["runs"], "warmups_of_seed_study": seed_c["warmups"], "replicates": main_c["runs"],
            "var_seed": seed_c["var_seed"], "var_warmup_plus_seed": main_c["var_warmup_plus_seed"],
            "var_warmup": main_c["var_warmup_plus_seed"] - seed_c["var_seed"]}


def _cell(p: Mapping[str, Any]) -> str:
    if p.get("missing"):
        return f"no data: {p['missing']}"
    est, half = p["estimate"], p["ci95"]
    if math.isnan(est):
        return "no data"
    if math.isnan(half):
        return f"{est:+.4g} (no interval: {p['seeds']} seed)"
    return f"{est:+.4g} [{est - half:+.4g}, {est + half:+.4g}]"


def _mde_cell(p: Mapping[str, Any]) -> str:
    m = p.get("mde80")
    return "—" if m is None or math.isnan(m) else f"{m:.3g}"


def claims_markdown(result: Mapping[str, Any]) -> str:
    """One table row per measured part: claim, its verdict, the measurement, estimate [95% interval],
    replicates, the minimum detectable effect at 80% power and what the verdict means given it."""
    if not result.get("claims"):
        return f"_{result.get('note', 'No claims measured.')}_\n"
    head = ["claim", "verdict", "measurement", "estimate [95% CI]", "replicates", "prediction", "part verdict",
            "MDE (80% power)", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result["claims"]:
        for i, p in enumerate(c["parts"]):
            pred = f"{p['side']} {p['bound']:g}" if p["side"] else ""
            first = i == 0
            lines.append("| " + " | ".join([f"({c['id']}) {c['claim']}" if first else "", f"**{c['verdict']}**" if first else "",
                                            p["measure"], _cell(p), str(p["seeds"]), pred, p["verdict"], _mde_cell(p),
                                            p.get("power_reading", "")]) + " |")
    notes = [f"Study `{result['study']}` (model {result['model']}, task {result['task']}, benchmark "
             f"{result['benchmark'] or 'none'}), baseline `{result['baseline']}`; replicates (RL seed = warm-up seed): "
             f"{', '.join(map(str, result.get('seeds', []))) or 'none'}."]
    notes += [f"({c['id']}) {c['detail']}." for c in result["claims"] if c.get("detail")]
    notes.append(MDE_NOTE)
    comps = components_markdown(result)
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes + [RULE]) + "\n" + (f"\n{comps}" if comps else "")


MDE_NOTE = ("MDE (80% power): the smallest distance of the true effect from the bound at which the verdict rule says "
            "'holds' in 80% of repetitions of this design (non-central t over the replicates, with the replicate "
            "standard deviation measured here, salt.figures.power.mde). An inconclusive part whose MDE is below "
            "the effect that would matter says the effect is absent at that size; one whose MDE is above it says "
            "the study is too small to decide.")

COMPONENT_NAMES = (("var_warmup", "warm-up"), ("var_seed", "RL seed (within a warm-up)"),
                   ("var_warmup_plus_seed", "warm-up + RL seed (replicate)"), ("var_problem", "problem"),
                   ("var_run_problem", "run x problem"), ("var_sample", "sampling (one problem's mean of n samples)"))


def components_markdown(result: Mapping[str, Any]) -> str:
    """The variance components of the baseline's held-out accuracy and of each paired part (standard deviations)."""
    rows = []
    vc = result.get("variance_components")
    if vc:
        rows.append((f"{vc['method']} {vc['metric']}", vc))
    for c in result.get("claims", []):
        for p in c["parts"]:
            if p.get("components"):
                rows.append((f"({c['id']}) {p['measure']}", p["components"]))
    split = result.get("variance_split")
    if not rows:
        return ""
    head = ["score"] + [name for _, name in COMPONENT_NAMES] + ["warm-ups", "runs", "problems"]
    lines = ["Variance components (standard deviation, sqrt of the method-of-moments estimate; negative estimates "
             "shown as -sqrt|v|; per G, averaged over G; salt.figures.power.variance_components):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, comp in rows:
        cells = []
        for key, _ in COMPONENT_NAMES:
            v = comp.get(key)
            cells.append("n/a" if v is None or math.isnan(v) else f"{math.copysign(math.sqrt(abs(v)), v):.3g}")
        lines.append("| " + " | ".join([name] + cells + [str(comp["warmups"]), str(comp["runs"]), str(comp["problems"])]) + " |")
    if split:
        sd = lambda v: "n/a" if v is None or math.isnan(v) else f"{math.copysign(math.sqrt(abs(v)), v):.3g}"  # noqa: E731
        lines += ["", f"Warm-up vs RL seed ({split['method']} {split['metric']}, G = {split['group_sizes']}): RL seed "
                      f"{sd(split['var_seed'])} (study `{split['study']}`: {split['rl_seeds']} RL seeds on one warm-up), "
                      f"warm-up + RL seed {sd(split['var_warmup_plus_seed'])} ({split['replicates']} replicates), so "
                      f"warm-up {sd(split['var_warmup'])} (standard deviations)."]
    return "\n".join(lines) + "\n"


__all__ = ["RULE", "MDE_NOTE", "components_markdown", "power_reading", "HOLDS", "FAILS", "INCONCLUSIVE", "ClaimsOptions", "evaluate_claims", "claims_markdown",
           "time_to_common_peak"]
