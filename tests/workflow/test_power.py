"""Variance components recovered from synthetic data with known components; the MDE against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from salt.figures import power


def synthetic_rows(rng, W, S, P, n, var_w, var_s, var_p, var_rp, var_eps):
    """Scores from the model of salt.figures.power: y = mu + a_w + b_ws + c_p + e_wsp + mean of n samples' noise."""
    a = rng.normal(0, math.sqrt(var_w), W)
    c = rng.normal(0, math.sqrt(var_p), P)
    rows = []
    for w in range(W):
        for s in range(S):
            b = rng.normal(0, math.sqrt(var_s))
            e = rng.normal(0, math.sqrt(var_rp), P)
            noise = rng.normal(0, math.sqrt(var_eps), (P, n))
            for p in range(P):
                samples = 0.5 + a[w] + b + c[p] + e[p] + noise[p]
                rows.append({"warmup": w, "seed": 100 * w + s, "problem": f"p{p}", "value": float(samples.mean()),
                             "sample_var": float(samples.var(ddof=1) / n)})
    return rows


def test_variance_components_recover_known_components():
    truth = dict(var_w=0.004, var_s=0.002, var_p=0.03, var_rp=0.01, var_eps=0.2)
    n = 8
    est = {k: [] for k in ("var_warmup", "var_seed", "var_problem", "var_run_problem", "var_sample")}
    rng = np.random.default_rng(0)
    for _ in range(30):
        c = power.variance_components(synthetic_rows(rng, W=12, S=2, P=60, n=n, **truth))
        for k in est:
            est[k].append(getattr(c, k))
    assert c.warmups == 12 and c.runs == 24 and c.problems == 60
    mean = {k: float(np.mean(v)) for k, v in est.items()}
    assert mean["var_sample"] == pytest.approx(truth["var_eps"] / n, rel=0.02)
    assert mean["var_run_problem"] == pytest.approx(truth["var_rp"], rel=0.05)
    assert mean["var_problem"] == pytest.approx(truth["var_p"], rel=0.15)
    assert mean["var_seed"] == pytest.approx(truth["var_s"], rel=0.2)
    assert mean["var_warmup"] == pytest.approx(truth["var_w"], rel=0.2)


def test_components_detect_a_missing_warmup_effect_and_unidentifiable_split():
    rng = np.random.default_rng(1)
    # no warm-up variance at all: the estimate is centred on 0, the seed variance is found
    ws = [power.variance_components(synthetic_rows(rng, 10, 3, 40, 4, 0.0, 0.003, 0.02, 0.005, 0.1)) for _ in range(20)]
    assert abs(np.mean([c.var_warmup for c in ws])) < 0.0008
    assert np.mean([c.var_seed for c in ws]) == pytest.approx(0.003, rel=0.25)
    # one seed per warm-up (the default design): warm-up and seed are confounded, their sum is estimated
    cs = [power.variance_components(synthetic_rows(rng, 20, 1, 40, 4, 0.004, 0.002, 0.02, 0.005, 0.1)) for _ in range(20)]
    assert all(math.isnan(c.var_warmup) and math.isnan(c.var_seed) for c in cs)
    assert np.mean([c.var_warmup_plus_seed for c in cs]) == pytest.approx(0.006, rel=0.15)
    # without sample variances the sampling part cannot be separated from run x problem
    rows = synthetic_rows(rng, 3, 1, 10, 4, 0.004, 0.002, 0.02, 0.005, 0.1)
    for r in rows:
        r.pop("sample_var")
    c = power.variance_components(rows)
    assert math.isnan(c.var_sample) and math.isnan(c.var_run_problem) and math.isfinite(c.var_problem)


def test_variance_components_need_a_crossed_table():
    with pytest.raises(ValueError, match="need >= 2 runs"):
        power.variance_components([{"warmup": 0, "seed": 0, "problem": "a", "value": 1.0},
                                   {"warmup": 0, "seed": 0, "problem": "b", "value": 0.0}])


@pytest.mark.parametrize("replicates", [2, 3, 4, 6])
def test_mde_matches_brute_force_simulation(replicates):
    sd = 0.013
    d = power.mde(sd, replicates)
    # the verdict rule says "holds" in 80% of simulated studies at the MDE ...
    assert power.rejection_rate(d, sd, replicates, sims=60000, seed=replicates) == pytest.approx(0.8, abs=0.008)
    # ... less often below it, in 2.5% at no effect; MDE shrinks with more replicates
    assert power.rejection_rate(0.8 * d, sd, replicates, sims=20000, seed=1) < 0.76
    assert power.rejection_rate(0.0, sd, replicates, sims=60000, seed=2) == pytest.approx(0.025, abs=0.003)
    assert power.mde(sd, replicates + 1) < d
    assert power.mde(2 * sd, replicates) == pytest.approx(2 * d, rel=1e-9)


def test_mde_edge_cases_and_normal_limit():
    assert math.isnan(power.mde(0.1, 1)) and math.isnan(power.mde(float("nan"), 5))
    assert power.mde(0.0, 3) == 0.0
    # many replicates: the z approximation (1.96 + 0.84) sd / sqrt(R)
    assert power.mde(1.0, 2000) == pytest.approx((1.95996 + 0.84162) / math.sqrt(2000), rel=2e-3)


def test_design_table_projects_the_replicate_sd():
    c = power.Components(mean=0.5, var_warmup=0.004, var_seed=0.002, var_warmup_plus_seed=0.006, var_problem=0.03,
                         var_run_problem=0.01, var_sample=0.025, warmups=5, runs=10, problems=300)
    sd = power.replicate_sd(c, problems=300, cells=3)
    assert sd == pytest.approx(math.sqrt(0.004 + (0.002 + (0.01 + 0.025) / 300) / 3))
    assert power.replicate_sd(c, problems=300, samples_ratio=2.0) < power.replicate_sd(c, problems=300)
    rows = power.design_table(c, [{"replicates": 3, "cells": 3, "problems": 300}, {"replicates": 5, "cells": 2, "problems": 300}])
    assert rows[1]["mde"] < rows[0]["mde"] and rows[0]["mde"] == pytest.approx(power.mde(sd, 3))
