"""The names in salt.metric_names are the ones the algorithm library returns (the trainer prefixes them)."""

from __future__ import annotations

import pytest
import torch

from salt import metric_names as mn
from salt.algo.decomposition import METRIC_KEYS, SaltConfig, decompose
from salt.algo.gram_metrics import group_geometry
from salt.algo.losses import LossConfig, compute_policy_loss


def _batch(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, 4, generator=g, dtype=torch.float64)
    return X @ X.T, torch.randn(B, generator=g, dtype=torch.float64), torch.arange(B) // 2


def test_salt_metrics_are_decompose_keys():
    K, A, _ = _batch()
    assert METRIC_KEYS == mn.SALT_METRICS
    assert set(decompose(K, A, SaltConfig()).metrics) == set(mn.SALT_METRICS)
    assert all(k.startswith(mn.SALT) for k in mn.SALT_METRICS)


def test_geom_metrics_are_group_geometry_keys():
    K, A, ids = _batch()
    assert set(group_geometry(K, ids, A)) == set(mn.GEOM_METRICS)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_loss_metrics_are_known(beta):
    B, T = 3, 5
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(B, T, generator=g)
    cfg = LossConfig(name="grpo", beta=beta)
    _, metrics = compute_policy_loss(cfg, logp, logp.detach() - 0.1, torch.randn(B, generator=g), torch.ones(B, T),
                                     ref_logp=logp.detach(), entropy=torch.rand(B, T, generator=g))
    assert set(metrics) <= set(mn.LOSS_KEYS) and mn.LOSS not in metrics
    assert mn.train(mn.CLIP_FRAC) == mn.TRAIN_CLIP_FRAC == "train/clip_frac"


def test_parameterised_names():
    assert mn.pass_at(8) == "pass@8" and mn.PAIRED_METRIC.match(mn.pass_at(8))
    assert mn.BENCHMARK_METRIC.match(mn.AVG_AT_N) and mn.BENCHMARK_METRIC.match(mn.MAJ_AT_N)
    assert mn.eval_benchmark("math500", mn.pass_at(1)) == "eval/math500/pass@1"
    assert mn.eval_pass_at_t1(1) == "eval/pass@1_t1"
    assert mn.eval_pass1_t1_level(2) == "eval/pass@1_t1_level2"
    assert mn.eval_pass1_greedy_level(3) == "eval/pass@1_greedy_level3"
    assert mn.TIME_STEP == mn.time_of("step") == "time/step"
    assert set(mn.CUMULATIVE) | set(mn.CURVES) <= {v for v in vars(mn).values() if isinstance(v, str)}


def _module_names() -> set[str]:
    return {v for k, v in vars(mn).items() if k.isupper() and isinstance(v, str) and "/" in v}


def test_logged_names_are_the_modules():
    """Every key of the pinned training runs' metrics lines (what the trainer writes) is a name of
    the module, and every per-step name aggregation and figures read is logged."""
    import json
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "train" / "golden" / "pinned_runs.json").read_text())
    logged = {k for case in golden.values() for line in case["metrics"] for k in line}
    known = _module_names() | {mn.STEP}
    assert logged - known == set()
    read = set(mn.CUMULATIVE) | {mn.FINAL_WINDOW_METRIC, mn.TRAIN_UPDATE_NORM, mn.TRAIN_CLIP_FRAC}
    read |= set(mn.CURVES) - {mn.EVAL_ACCURACY}  # eval/accuracy: only with train.eval_every
    assert read <= logged
    assert set(mn.SALT_METRICS) | set(mn.GEOM_METRICS) <= logged
