"""Every Gram backend from the hidden states and the LM-head weight (``streaming_lm_head_gram``,
``rollout_features(weight=...)``) equals the same backend on the stored logits, and ``auto``
counts the logit matmul in its costs."""

from __future__ import annotations

import pytest
import torch

from salt.algo.gram import GRAM_METHODS, choose_method, gram_cost, lm_head_gram, rollout_features, \
    streaming_lm_head_gram
from tests.algo.test_gram_support import batch, rel


@pytest.mark.parametrize("method", [m for m in GRAM_METHODS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_streaming_equals_the_gram_of_stored_logits(method, dtype):
    h, W, b, z, y, mask = batch(5, 9, 211, 6, 3.0, seed=4, zipf=0.5, dtype=dtype)
    kw = dict(chunk_size=7, seed=2, sketch_dim=32, tol=1e-3, tail_dim=16)
    i1, i2 = {}, {}
    K = lm_head_gram(h, z, y, mask, 0.8, method, info=i1, **kw)
    Ks = streaming_lm_head_gram(h, W, y, mask, 0.8, method, bias=b, info=i2, **kw)
    assert i1["method"] == i2["method"] and i1["err_kind"] == i2["err_kind"]
    assert rel(Ks, K) < (1e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("method", ["sketch", "dense"])
def test_streaming_rollout_features_equal_features_of_stored_logits(method):
    h, W, b, z, y, mask = batch(4, 6, 150, 5, 2.0, seed=6)
    F = rollout_features(h, z, y, mask, 0.9, method, sketch_dim=16, seed=1, chunk_size=5)
    Fs = rollout_features(h, None, y, mask, 0.9, method, sketch_dim=16, seed=1, chunk_size=5, weight=W, bias=b)
    assert rel(Fs, F) < 1e-12
    with pytest.raises(ValueError, match="exactly one of logits"):
        rollout_features(h, z, y, mask, 0.9, method, weight=W)


def test_auto_counts_the_logit_matmul_when_streaming():
    """Forming a logit costs 2 H flops: exact pays it for every softmax row it forms (its streamed
    blocks again and again), support for the candidate pass and its N x (u + r) columns. Inside one
    chunk both form every logit once, and the shared matmul makes exact the better buy sooner."""
    V, H, B, c = 151936, 896, 2, 512
    for N in (256, 384, 2048):
        plain, streamed = gram_cost(N, V, H, B, chunk_size=c), gram_cost(N, V, H, B, chunk_size=c, streaming=True)
        rows = N + N * max(N - c, 0) / (2 * c)
        assert streamed["exact"] - plain["exact"] == pytest.approx(2 * H * rows * V)
        assert streamed["support"] - plain["support"] == pytest.approx(2 * H * (N * V + min(V, N + 256) * N))
    assert choose_method(384, V, H, B, chunk_size=c) == "support"
    assert choose_method(384, V, H, B, chunk_size=c, streaming=True) == "exact"
