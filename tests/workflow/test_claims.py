"""Paired intervals, the verdict rule and every claim on synthetic runs (holds, does not hold, inconclusive)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from salt import metric_names as mn
from salt.figures import aggregate, claims, stats
from tests.workflow.synthetic import MAIN_ALL, make_runs, rewrite_metric

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("seed", range(4))
def test_paired_difference_matches_brute_force_and_scipy(seed):
    rng = np.random.default_rng(seed)
    S, n = 3 + seed, 25
    a = {s: {f"p{i}": float(rng.random()) for i in range(n)} for s in range(S)}
    b = {s: {f"p{i}": float(rng.random()) for i in range(n + 3)} for s in range(S)}  # b has 3 extra problems
    d = stats.paired_difference(a, b)
    per_seed = [np.mean([a[s][f"p{i}"] - b[s][f"p{i}"] for i in range(n)]) for s in range(S)]
    ci = sps.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert d["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert d["ci95"] == pytest.approx((ci.high - ci.low) / 2, rel=1e-9)
    assert d["seeds"] == S and d["problems"] == n
    se = math.sqrt(sum(np.var([a[s][f"p{i}"] - b[s][f"p{i}"] for i in range(n)], ddof=1) / n for s in range(S))) / S
    assert d["se_eval"] == pytest.approx(se, rel=1e-9)


def test_paired_difference_known_cases():
    same = {0: {"x": 0.5, "y": 0.25}, 1: {"x": 1.0, "y": 0.0}}
    d = stats.paired_difference(same, same)
    assert d["mean"] == 0.0 and d["ci95"] == 0.0 and d["se_eval"] == 0.0
    one = stats.paired_difference({0: {"x": 1.0}}, {0: {"x": 0.0}})
    assert one["mean"] == 1.0 and math.isnan(one["ci95"]) and one["seeds"] == 1
    with pytest.raises(ValueError, match="share no problem id"):
        stats.paired_difference({0: {"x": 1.0}}, {0: {"y": 1.0}})


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    """Simulated studies: a seed effect (training noise) plus Bernoulli evaluation noise on shared problems."""
    rng = np.random.default_rng(7)
    true, hits, reps = 0.05, 0, 1000
    for _ in range(reps):
        a, b = {}, {}
        for s in range(3):
            q = rng.uniform(0.2, 0.6, size=30)
            u = rng.uniform(size=(30, 8))
            shift = true + rng.normal(0, 0.03)  # this seed's training outcome
            a[s] = {str(i): float(np.mean(u[i] < q[i] + shift)) for i in range(30)}
            b[s] = {str(i): float(np.mean(u[i] < q[i])) for i in range(30)}
        d = stats.paired_difference(a, b)
        hits += abs(d["mean"] - true) <= d["ci95"]
    assert 0.93 <= hits / reps <= 0.975


def test_ols_slope_and_moving_average():
    x, y = [1.0, 2.0, 3.0, 5.0], [2.0, 2.5, 4.5, 6.0]
    assert stats.ols_slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0])
    assert math.isnan(stats.ols_slope([1.0, 1.0], [2.0, 3.0]))
    y = np.array([1.0, 3.0, 5.0, 7.0])
    assert np.allclose(stats.moving_average(y, 2), [1.0, 2.0, 4.0, 6.0])
    assert np.allclose(stats.moving_average(y, 1), y)


@pytest.mark.parametrize("mean,half,side,bound,expected", [
    (0.1, 0.05, ">", 0.0, "holds"), (-0.1, 0.05, ">", 0.0, "does not hold"), (0.02, 0.05, ">", 0.0, "inconclusive"),
    (-0.1, 0.05, "<", 0.0, "holds"), (0.1, 0.05, "<", 0.0, "does not hold"), (0.0, 0.0, ">", 0.0, "inconclusive"),
    (-0.01, 0.005, ">", -0.02, "holds"), (-0.05, 0.01, ">", -0.02, "does not hold"),
    (0.1, float("nan"), ">", 0.0, "inconclusive"),
])
def test_verdict_rule(mean, half, side, bound, expected):
    assert stats.verdict(mean, half, side, bound) == expected


def test_combine():
    assert stats.combine(["holds", "holds"]) == "holds"
    assert stats.combine(["holds", "inconclusive"]) == "inconclusive"
    assert stats.combine(["inconclusive", "does not hold", "holds"]) == "does not hold"
    assert stats.combine([]) == "inconclusive"


def test_time_to_common_peak_known_case():
    steps = [1, 2, 3, 4, 5]
    grpo = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    pods = np.array([0.1, 0.3, 0.5, 0.5, 0.6])
    assert claims.time_to_common_peak(steps, grpo, pods) == (5, 3, True)
    slow = np.array([0.1, 0.1, 0.2, 0.3, 0.4])  # never reaches 0.5: the common target is its own peak 0.4
    assert claims.time_to_common_peak(steps, grpo, slow) == (4, 5, False)


def test_claims_options_defaults_match_the_schema():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["report"]["properties"]["claims"]["properties"]
    defaults = claims.ClaimsOptions()
    for name, spec in props.items():
        assert spec["default"] == (dict(getattr(defaults, name)) if name == "salt_pairs" else getattr(defaults, name)), name
    assert set(props) == set(claims.ClaimsOptions.__dataclass_fields__)
    with pytest.raises(ValueError, match="unknown keys"):
        claims.ClaimsOptions.from_manifest({"report": {"claims": {"bogus": 1}}})


def test_claims_read_the_metric_names_module():
    """The claims measure the names of salt.metric_names (tests/test_metric_names.py checks those
    against what the trainer logs)."""
    assert (claims.N_EFF, claims.PR, claims.N_EFF_FINAL, claims.UPDATE_NORM) == (
        mn.SALT_N_EFF, mn.SALT_PARTICIPATION_RATIO, mn.SALT_N_EFF_FINAL, mn.TRAIN_UPDATE_NORM)
    assert claims.ClaimsOptions().curve_metric == mn.TRAIN_ACCURACY_GENERATED


# ----------------------------------------------------------------------------- claims on synthetic runs


def _set_curves(manifest, method, fn):
    for r in manifest["runs"]:
        if r["method"] == method:
            rewrite_metric(r["run_dir"], mn.TRAIN_ACCURACY_GENERATED, [fn(i, r["G"], r["seed"]) for i in range(7)])


def _study(tmp_path, effects, prepare=None):
    manifest = make_runs(tmp_path / "results", studies=MAIN_ALL, effects=effects, gram=False, duplicate_step=False)
    if prepare:
        prepare(manifest)
    paths = aggregate.main(manifest, tmp_path / "tables")
    result = json.loads(paths["claims_json"].read_text())
    return {c["id"]: c for c in result["claims"]}, paths


def test_claims_holds_does_not_hold_inconclusive(tmp_path):
    def prepare(manifest):
        for r in manifest["runs"]:
            G, s = r["G"], r["seed"]
            if r["method"] == "grpo":  # n_eff and the update norm fall with G (claim a holds)
                rewrite_metric(r["run_dir"], mn.SALT_N_EFF, 4.0 / G + 0.01 * s)
                rewrite_metric(r["run_dir"], mn.TRAIN_UPDATE_NORM, 1.0 / G + 0.02 * s)
        _set_curves(manifest, "grpo", lambda i, G, s: 0.1 * i)
        # PODS is 2 steps ahead in seed 0, 2 behind in seed 1, even in seed 2: inconclusive
        _set_curves(manifest, "pods", lambda i, G, s: 0.1 * (i + {0: 2, 1: -2, 2: 0}[s]))

    c, paths = _study(tmp_path, {"grpo_salt": 0.1, "dapo_salt": 0.1, "fgrpo": -0.2, "vip": 0.15}, prepare)
    assert c["a"]["verdict"] == "holds"
    neff = c["a"]["parts"][0]
    assert neff["seeds"] == 3 and neff["estimate"] < 0
    # per seed: slope of 4/G against log2 G over G = 2, 4, 8, brute force
    assert neff["estimate"] == pytest.approx(np.polyfit([1, 2, 3], [2.0, 1.0, 0.5], 1)[0], abs=1e-5)
    assert c["c"]["verdict"] == "inconclusive"
    assert c["c"]["parts"][0]["per_seed"] == {"0": pytest.approx(2.0), "1": pytest.approx(-2.0), "2": pytest.approx(0.0)}
    assert c["d"]["verdict"] == "does not hold" and "pass@4" in c["d"]["parts"][0]["measure"]
    assert c["e"]["verdict"] == "holds" and c["e"]["parts"][0]["estimate"] > 0.1
    assert "rollouts generated vip / grpo: 1.000" in c["e"]["detail"]  # same P x G per step in the synthetic runs
    assert "grpo_salt / grpo: 1.000" in c["b"]["detail"]
    md = paths["claims_md"].read_text()
    assert "**holds**" in md and "**does not hold**" in md and "**inconclusive**" in md and "Verdict rule" in md


def test_claims_reverse_outcomes(tmp_path):
    def prepare(manifest):
        for r in manifest["runs"]:
            G = r["G"]
            if r["method"] == "grpo":  # n_eff grows with G: claim a does not hold
                rewrite_metric(r["run_dir"], mn.SALT_N_EFF, 0.5 * G + 0.01 * r["seed"])
            if r["method"] in ("grpo_salt", "dapo_salt"):  # SALT lowers the PR of its batches
                rewrite_metric(r["run_dir"], mn.SALT_PARTICIPATION_RATIO, 1.0)
        _set_curves(manifest, "grpo", lambda i, G, s: 0.1 * i)
        _set_curves(manifest, "pods", lambda i, G, s: 0.1 * (i + 2))  # always 2 steps ahead: holds

    c, _ = _study(tmp_path, {"grpo_salt": -0.3, "dapo_salt": 0.0, "fgrpo": 0.2,
                             "vip": {0: 0.1, 1: -0.1, 2: 0.0}}, prepare)
    assert c["a"]["verdict"] == "does not hold"
    assert c["b"]["verdict"] == "does not hold"
    acc = next(p for p in c["b"]["parts"] if p["measure"].startswith("grpo_salt") and "pass@1" in p["measure"])
    assert acc["verdict"] == "does not hold" and acc["bound"] == -0.02
    assert c["c"]["verdict"] == "holds" and c["c"]["parts"][0]["estimate"] == pytest.approx(2.0)
    assert c["d"]["verdict"] == "holds"
    assert c["e"]["verdict"] == "inconclusive"


def test_claims_without_methods_or_benchmarks(tmp_path):
    studies = {"main": ("main", ["grpo", "grpo_salt"], [4], [0], 4, None)}
    manifest = make_runs(tmp_path / "results", studies=studies, gram=False)
    paths = aggregate.main(manifest, tmp_path / "tables")
    result = json.loads(paths["claims_json"].read_text())
    by = {c["id"]: c for c in result["claims"]}
    assert all(c["verdict"] == "inconclusive" for c in by.values())
    assert "fewer than 2 group sizes" in by["a"]["parts"][0]["missing"]
    assert "pods or grpo did not run" in by["c"]["parts"][0]["missing"]
    assert "no data" in paths["claims_md"].read_text()
    json.loads(paths["claims_json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
