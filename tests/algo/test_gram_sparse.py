"""The ``sparse`` LM-head Gram: exact when nothing is dropped, unbiased over the sampling seed,
the measured coverage of its probabilistic error estimate, the streaming form, and ``auto``."""

from __future__ import annotations

import warnings

import pytest
import torch

from salt.algo.gram import FEATURE_METHODS, GRAM_METHODS, lm_head_gram, streaming_lm_head_gram

from tests.algo.test_gram_support import batch, rel  # the same synthetic batches

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def test_method_registered():
    assert "sparse" in GRAM_METHODS and "sparse" not in FEATURE_METHODS  # ranks gather its token-level inputs


@pytest.mark.parametrize("scale,zipf", [(1.0, 0.0), (4.0, 0.0), (12.0, 1.0), (0.0, 0.0)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_exact_when_nothing_is_dropped(scale, zipf, temperature):
    """Small V: eps below every probability (every id is every token's candidate), or every id
    sampled with probability 1: the float64 Gram is exact and the estimate is 0."""
    h, W, b, z, y, mask = batch(4, 7, 97, 5, scale, seed=1, zipf=zipf)
    dense = lm_head_gram(h, z, y, mask, temperature, method="dense")
    info = {}
    K = lm_head_gram(h, z, y, mask, temperature, method="sparse", support_eps=1e-300, info=info)
    assert rel(K, dense) < 1e-12 and info["err_bound"] == 0.0 and info["err_kind"] == "probabilistic"
    info = {}
    K = lm_head_gram(h, z, y, mask, temperature, method="sparse", support_eps=0.05, sparse_samples=97, info=info)
    assert info["tail_rows"] == 97 and rel(K, dense) < 1e-12 and info["err_bound"] == 0.0
    Ks = streaming_lm_head_gram(h, W, y, mask, temperature, bias=b, method="sparse", support_eps=0.05,
                                sparse_samples=97)
    assert rel(Ks, dense) < 1e-12


def test_no_samples_gives_a_deterministic_bound():
    """sparse_samples=0: the dropped part is not estimated and the reported value is the sum of
    the per-id bounds b_v, a deterministic bound."""
    for seed in range(6):
        h, W, b, z, y, mask = batch(5, 9, 300, 6, 6.0, seed=seed, zipf=1.0)
        info = {}
        K = lm_head_gram(h, z, y, mask, method="sparse", support_eps=1e-2, sparse_samples=0, info=info)
        assert rel(K, lm_head_gram(h, z, y, mask, method="dense")) <= info["err_bound"]


def test_unbiased_over_seeds():
    """E over the sampling seed of K_hat is K: the mean over 1,500 seeds is within its own
    sampling noise of the exact Gram, while the part computed exactly (no correction) is not."""
    h, W, b, z, y, mask = batch(3, 6, 60, 4, 2.0, seed=3, zipf=1.0)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    kw = dict(method="sparse", support_eps=0.05, sparse_samples=6)
    K0 = lm_head_gram(h, z, y, mask, method="sparse", support_eps=0.05, sparse_samples=0)
    Ks = torch.stack([lm_head_gram(h, z, y, mask, seed=s, **kw) for s in range(1500)])
    mean, sd = Ks.mean(0), Ks.std(0) / 1500 ** 0.5
    bias0 = float((K0 - dense).norm())
    assert bias0 > 0
    assert float((mean - dense).norm()) < 0.1 * bias0
    assert float((mean - dense).norm()) <= 4.0 * float(sd.norm()) + 1e-15


KINDS = {  # (scale, zipf): random, peaked, flat, Zipf-tailed, peaked with a Zipf tail
    "random": (1.0, 0.0), "peaked": (25.0, 0.0), "flat": (0.0, 0.0), "zipf": (2.0, 2.0), "peaked_zipf": (8.0, 1.0),
}


def test_error_estimate_coverage():
    """Measured coverage of the probabilistic estimate: over 5 batch kinds x 2 eps x 2 sample
    counts x 16 seeds (320 trials, each a new batch and a new sample) the true relative Frobenius
    error is at most the reported estimate in >= 99% of the trials (measured: 320 / 320), and
    the estimate is not vacuous (median estimate / error below 10 where the error is not 0)."""
    hits, trials, ratios = 0, 0, []
    for kind, (scale, zipf) in KINDS.items():
        for eps in (1e-2, 1e-3):
            for samples in (16, 64):
                for seed in range(16):
                    h, W, b, z, y, mask = batch(6, 10, 300, 8, scale, seed=100 + seed, zipf=zipf)
                    dense = lm_head_gram(h, z, y, mask, method="dense")
                    info = {}
                    K = lm_head_gram(h, z, y, mask, method="sparse", support_eps=eps, sparse_samples=samples,
                                     seed=seed, info=info)
                    err = rel(K, dense)
                    trials += 1
                    hits += err <= info["err_bound"] * (1 + 1e-9) + 1e-12
                    if err > 1e-12:
                        ratios.append(info["err_bound"] / err)
    ratios.sort()
    print(f"coverage {hits}/{trials}; estimate / error quantiles 0, 0.1, 0.5, 0.9: "
          f"{ratios[0]:.2f} {ratios[len(ratios) // 10]:.2f} {ratios[len(ratios) // 2]:.2f} {ratios[9 * len(ratios) // 10]:.2f}")
    assert hits >= 0.99 * trials, f"coverage {hits}/{trials}"
    assert ratios[len(ratios) // 2] < 100.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_matches_given_logits(dtype):
    h, W, b, z, y, mask = batch(4, 10, 500, 6, 5.0, seed=9, zipf=1.0, dtype=dtype)
    kw = dict(support_eps=1e-3, sparse_samples=32, seed=5)
    i1, i2 = {}, {}
    K1 = lm_head_gram(h, z, y, mask, 0.8, method="sparse", info=i1, **kw)
    K2 = streaming_lm_head_gram(h, W, y, mask, 0.8, bias=b, method="sparse", info=i2, **kw)
    assert rel(K2, K1) < (1e-10 if dtype == torch.float64 else 1e-4)
    assert i1["tail_rows"] == i2["tail_rows"] and i2["method"] == "sparse"


def test_masked_rows_and_empty_batch():
    h, W, b, z, y, mask = batch(3, 8, 200, 4, 3.0, seed=2, zipf=1.0)
    mask = mask * torch.rand(3, 8, generator=torch.Generator().manual_seed(0), dtype=mask.dtype)  # weights
    mask[1] = 0.0  # an empty rollout
    dense = lm_head_gram(h, z, y, mask, method="dense")
    info = {}
    K = lm_head_gram(h, z, y, mask, method="sparse", support_eps=1e-3, sparse_samples=64, info=info)
    assert rel(K, dense) <= info["err_bound"] + 1e-12 and float(K[1].abs().max()) == 0.0
    info = {}
    K = lm_head_gram(h, z, y, torch.zeros_like(mask), method="sparse", info=info)
    assert float(K.abs().max()) == 0.0 and info["err_bound"] == 0.0


def test_auto_uses_sparse_only_when_its_estimate_meets_tol(monkeypatch):
    from salt.algo.gram import auto

    h, W, b, z, y, mask = batch(4, 30, 800, 6, 6.0, seed=21, zipf=1.0, frac=1.0)
    monkeypatch.setattr(auto, "choose_method", lambda *a, **k: "support")
    dense = lm_head_gram(h, z, y, mask, method="dense")
    info = {}
    K = lm_head_gram(h, z, y, mask, method="auto", tol=1e-2, support_eps=1e-3, sparse_samples=64, info=info)
    assert info["method"] == "sparse" and info["err_kind"] == "probabilistic" and info["err_bound"] <= 1e-2
    assert rel(K, dense) <= info["err_bound"]
    info = {}
    K = lm_head_gram(h, z, y, mask, method="auto", tol=1e-9, support_eps=1e-3, sparse_samples=64, info=info)
    assert info["method"] in ("support", "exact") and info["err_kind"] == "deterministic"
    assert rel(K, dense) <= info["err_bound"] + 1e-12


def test_auto_skips_the_support_estimator_when_sparse_misses_far_and_exact_is_affordable(monkeypatch):
    """A sparse estimate far above tol (mass spread beyond the candidates): auto goes to exact at
    once when exact costs at most _EXACT_AFTER_SPARSE x the support's nominal cost, and still
    tries the support estimator when exact is dearer than that (as at 7B scale)."""
    from salt.algo.gram import auto

    h, W, b, z, y, mask = batch(4, 30, 800, 6, 6.0, seed=21, zipf=1.0, frac=1.0)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    monkeypatch.setattr(auto, "choose_method", lambda *a, **k: "support")
    calls = []

    def support(*a, **k):
        calls.append(1)
        return None  # as when the support reaches its cap: auto falls back to exact

    monkeypatch.setattr(auto, "_support_gram", support)
    info = {}
    K = lm_head_gram(h, z, y, mask, method="auto", tol=1e-9, support_eps=1e-3, sparse_samples=64, info=info)
    assert calls == [] and info["method"] == "exact" and info["err_bound"] == 0.0
    assert info["err_kind"] == "deterministic" and rel(K, dense) <= 1e-6
    monkeypatch.setattr(auto, "gram_cost", lambda *a, **k: {"exact": 100.0, "support": 1.0, "sketch": 1.0})
    info = {}
    K = lm_head_gram(h, z, y, mask, method="auto", tol=1e-9, support_eps=1e-3, sparse_samples=64, info=info)
    assert calls == [1] and info["method"] == "exact" and rel(K, dense) <= 1e-6
