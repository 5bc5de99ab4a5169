"""The ``support`` LM-head Gram: exact on small V, its error bound on random and peaked inputs,
an unbiased tail sketch, the streaming form, and ``auto``'s choice."""

from __future__ import annotations

import math

import pytest
import torch

from salt.algo.gram import GRAM_METHODS, choose_method, lm_head_gram, streaming_lm_head_gram


def batch(B, T, V, H, scale, seed=0, zipf=0.0, frac=0.8, dtype=torch.float64):
    """Logits z = scale * h W^T - zipf * log(1 + rank) (a heavy, shared tail), sampled tokens."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g, dtype=dtype)
    W = torch.randn(V, H, generator=g, dtype=dtype) * (scale / math.sqrt(H))
    bias = -zipf * torch.log1p(torch.randperm(V, generator=g).to(dtype))
    z = h @ W.T + bias
    y = torch.multinomial(torch.softmax(z.reshape(-1, V).double(), -1), 1, generator=g).reshape(B, T)
    mask = (torch.rand(B, T, generator=g) < frac).to(dtype)
    mask[0, 0] = 1.0
    return h, W, bias, z, y, mask


def rel(K, ref):
    return float((K.double() - ref.double()).norm() / ref.double().norm())


def test_method_registered():
    assert "support" in GRAM_METHODS and "auto" in GRAM_METHODS


@pytest.mark.parametrize("scale,zipf", [(1.0, 0.0), (4.0, 0.0), (12.0, 1.0), (0.0, 0.0)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_exact_when_tail_covered(scale, zipf, temperature):
    """tol=0 and a tail sample as large as the tail: every vocabulary row exactly (float64)."""
    h, W, b, z, y, mask = batch(4, 7, 97, 5, scale, seed=1, zipf=zipf)
    dense = lm_head_gram(h, z, y, mask, temperature, method="dense")
    info = {}
    K = lm_head_gram(h, z, y, mask, temperature, method="support", tol=0.0, tail_dim=1000, info=info)
    assert rel(K, dense) < 1e-12 and info["err_bound"] == 0.0
    Ks = streaming_lm_head_gram(h, W, y, mask, temperature, bias=b, tol=0.0, tail_dim=1000)
    assert rel(Ks, dense) < 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("scale,zipf", [(1.0, 0.0), (3.0, 1.0), (8.0, 1.0), (25.0, 0.0), (0.0, 0.0)])
@pytest.mark.parametrize("tail_dim", [0, 8])
@pytest.mark.parametrize("tol", [1e-3, 3e-2, 0.3])
def test_error_bound_holds(seed, scale, zipf, tail_dim, tol):
    """Random (low scale, flat) and peaked (high scale) inputs: the reported bound is an upper
    bound of the true relative Frobenius error, and the estimator stops at tol when it can."""
    h, W, b, z, y, mask = batch(5, 9, 400, 6, scale, seed=seed, zipf=zipf)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    info = {}
    K = lm_head_gram(h, z, y, mask, method="support", tol=tol, tail_dim=tail_dim, support_eps=1e-3,
                     seed=seed, info=info)
    err = rel(K, dense)
    assert err <= info["err_bound"] * (1 + 1e-9) + 1e-12
    assert info["support_size"] <= 400 and 0.0 <= info["tail_mass"] <= 1.0
    if info["support_size"] < 400 and tail_dim == 0:  # stopped early: because the bound met tol
        assert info["err_bound"] <= tol


def test_bound_tightens_with_support():
    h, W, b, z, y, mask = batch(4, 12, 500, 6, 3.0, seed=5, zipf=1.0)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    bounds, errs = [], []
    for tol in (0.3, 3e-2, 3e-3, 0.0):
        info = {}
        K = lm_head_gram(h, z, y, mask, method="support", tol=tol, tail_dim=0, support_eps=1e-4, info=info)
        bounds.append(info["err_bound"])
        errs.append(rel(K, dense))
    assert bounds == sorted(bounds, reverse=True) and errs[-1] <= errs[0]


def test_tail_sketch_unbiased_over_seeds():
    """E over seeds of the tail-sketched Gram equals the exact Gram (the dropped-tail Gram does not)."""
    h, W, b, z, y, mask = batch(3, 8, 120, 4, 1.0, seed=7, zipf=0.5)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    kw = dict(method="support", tol=0.3, support_eps=0.05)
    info = {}
    K0 = lm_head_gram(h, z, y, mask, tail_dim=0, info=info, **kw)
    u = info["support_size"]
    assert u < 120 - 40  # a real tail is left for the sketch
    bias0 = (dense - K0).norm()
    assert bias0 > 1e-3 * dense.norm()
    n = 3000
    mean = sum(lm_head_gram(h, z, y, mask, tail_dim=10, seed=s, **kw) for s in range(n)) / n
    # the sketch's standard error at n draws is far below the bias of dropping the tail
    assert (mean - dense).norm() < 0.1 * bias0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_matches_given_logits(dtype):
    h, W, b, z, y, mask = batch(4, 10, 300, 8, 4.0, seed=9, zipf=1.0, dtype=dtype)
    i1, i2 = {}, {}
    K = lm_head_gram(h, z, y, mask, 0.9, method="support", info=i1, seed=3)
    Ks = streaming_lm_head_gram(h, W, y, mask, 0.9, bias=b, info=i2, seed=3, chunk_size=7)
    assert K.dtype == Ks.dtype == dtype
    assert rel(Ks, K) < (1e-4 if dtype == torch.float32 else 1e-10)
    assert i1["support_size"] == i2["support_size"]


def test_masked_and_normaliser():
    h, W, b, z, y, mask = batch(4, 6, 80, 3, 2.0, seed=11)
    mask[2] = 0
    K = lm_head_gram(h, z, y, mask, method="support", tol=0.0, tail_dim=100)
    assert torch.all(K[2] == 0)
    z2 = z.clone()
    z2[mask == 0] = 40 * torch.randn_like(z2[mask == 0])
    assert torch.allclose(lm_head_gram(h, z2, y, mask, method="support", tol=0.0, tail_dim=100), K, atol=1e-13)
    K8 = lm_head_gram(h, z, y, mask, method="support", tol=0.0, tail_dim=100, normalizer=8)
    assert torch.allclose(K8, K * 4 / 8, rtol=1e-12)
    zero = lm_head_gram(h, z, y, torch.zeros_like(mask), method="support")
    assert torch.equal(zero, torch.zeros(4, 4, dtype=zero.dtype))


def test_deterministic_given_seed():
    h, W, b, z, y, mask = batch(3, 9, 200, 4, 2.0, seed=12, zipf=1.0)
    kw = dict(method="support", tol=0.1, tail_dim=16, support_eps=1e-3)
    assert torch.equal(lm_head_gram(h, z, y, mask, seed=5, **kw), lm_head_gram(h, z, y, mask, seed=5, **kw))


def test_auto_never_picks_the_count_sketch_and_reports_its_bound():
    assert choose_method(20, 50, 8, 4) == "exact"
    assert choose_method(4096, 151936, 896, 32) == "support"
    assert choose_method(5_120_000, 151936, 3584, 512) == "support"
    h, W, b, z, y, mask = batch(2, 200, 3000, 2, 3.0, seed=13, frac=1.0, dtype=torch.float32)
    info = {}
    K = lm_head_gram(h, z, y, mask, method="auto", info=info)
    # auto tries the sparse estimator first (kept when its probabilistic estimate meets tol), then
    # the support estimator or, when the sparse estimate misses tol by far, exact; never the sketch
    assert info["method"] in ("sparse", "support", "exact") and 0 <= info["err_bound"] <= 1e-3
    assert rel(K, lm_head_gram(h.double(), z.double(), y, mask.double(), method="dense")) <= 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=-1.0), "tol"), (dict(support_eps=0.0), "support_eps"), (dict(tail_dim=-1), "tail_dim"),
])
def test_bad_options(kwargs, match):
    h, W, b, z, y, mask = batch(2, 3, 10, 2, 1.0)
    with pytest.raises(ValueError, match=match):
        lm_head_gram(h, z, y, mask, method="support", **kwargs)
    with pytest.raises(ValueError, match="weight must be"):
        streaming_lm_head_gram(h, W.T, y, mask)


def test_feature_and_pair_forms_agree(monkeypatch):
    from salt.algo.gram import support

    h, W, b, z, y, mask = batch(5, 11, 250, 7, 3.0, seed=14, zipf=1.0)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    kw = dict(method="support", tol=1e-2, tail_dim=16, seed=2)
    K_pairs = lm_head_gram(h, z, y, mask, **kw)
    monkeypatch.setattr(support._RolloutAcc, "PAIR_MAX_TOKENS", 0)
    monkeypatch.setattr(support._RolloutAcc, "COLS", 5)  # several feature blocks
    K_feat = lm_head_gram(h, z, y, mask, **kw)
    assert rel(K_feat, K_pairs) < 1e-12
    assert rel(lm_head_gram(h, z, y, mask, method="support", tol=0.0), dense) < 1e-12


def test_small_column_blocks_change_nothing(monkeypatch):
    from salt.algo.gram import support

    h, W, b, z, y, mask = batch(4, 9, 300, 5, 3.0, seed=15, zipf=1.0)
    kw = dict(method="support", tol=1e-3, tail_dim=40, seed=4)
    i1, i2 = {}, {}
    K1 = lm_head_gram(h, z, y, mask, info=i1, **kw)
    monkeypatch.setattr(support, "_COLUMN_BLOCK_NUMBERS", 3 * 36)  # 3 columns per block
    K2 = lm_head_gram(h, z, y, mask, info=i2, **kw)
    assert i2["support_size"] <= i1["support_size"]  # finer blocks stop at least as early
    assert i2["err_bound"] <= 1e-3 and i1["err_bound"] <= 1e-3
    dense = lm_head_gram(h, z, y, mask, method="dense")
    assert rel(K2, dense) <= i2["err_bound"] + 1e-12 and rel(K1, dense) <= i1["err_bound"] + 1e-12


def test_auto_falls_back_to_exact_when_the_support_would_cover_most_of_v(monkeypatch):
    """A flat-ish batch at a very tight tol: auto stops growing U at the exact Gram's cost."""
    from salt.algo.gram import auto

    h, W, b, z, y, mask = batch(3, 40, 600, 4, 1.0, seed=16, frac=1.0)
    monkeypatch.setattr(auto, "choose_method", lambda *a, **k: "support")
    monkeypatch.setattr(auto, "_support_cap", lambda src, c: 50)
    info = {}
    # sparse_samples=0: auto skips the sparse estimator (on this flat-ish batch it would be exact:
    # every id is every token's candidate) and this tests the support -> exact fallback
    K = lm_head_gram(h, z, y, mask, method="auto", tol=1e-9, sparse_samples=0, info=info)
    assert info == {"method": "exact", "err_bound": 0.0, "err_kind": "deterministic"}
    assert torch.equal(K, lm_head_gram(h, z, y, mask, method="exact"))
    info = {}
    lm_head_gram(h, z, y, mask, method="support", tol=1e-9, info=info)  # explicit: keeps growing
    assert info["method"] == "support" and info["support_size"] > 50


def test_flush_denormal_state_restored():
    h, W, b, z, y, mask = batch(2, 5, 50, 3, 30.0, seed=17)
    lm_head_gram(h, z, y, mask, method="support")
    assert float(torch.tensor([1e-39]).mul(1.0)[0]) != 0.0  # denormals work again


def test_config_accepts_exactly_the_registered_gram_methods():
    from salt.train.config import ConfigError, from_dict

    for method in GRAM_METHODS:
        from_dict({"algorithm": {"salt": {"gram": method}}}).validate(check_paths=False, check_devices=False)
    with pytest.raises(ConfigError, match="algorithm.salt.gram"):
        from_dict({"algorithm": {"salt": {"gram": "bogus"}}}).validate(check_paths=False, check_devices=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("common", [0.0, 3.0])
@pytest.mark.parametrize("shared", [0.0, 0.9])
def test_tail_bound_brute_force(seed, common, shared):
    """The tail bound against the exact ||T T^T||_F for random non-negative tails (independent or
    sharing one direction) and isotropic or anisotropic hidden states (a common mean direction),
    ragged rollouts; with and without the pair refinement."""
    from salt.algo.gram import support

    g = torch.Generator().manual_seed(seed)
    B, H, Vt = 5, 7, 60
    counts = torch.randint(1, 12, (B,), generator=g).tolist()
    N = sum(counts)
    X = torch.randn(N, H, generator=g, dtype=torch.float64) + common * torch.randn(1, H, generator=g, dtype=torch.float64)
    base = torch.rand(1, Vt, generator=g, dtype=torch.float64) ** 4
    P = (shared * base + (1 - shared) * torch.rand(N, Vt, generator=g, dtype=torch.float64) ** 6)
    P = P * (torch.rand(N, 1, generator=g, dtype=torch.float64) * 0.2 / P.sum(1, keepdim=True))  # tail mass <= 0.2
    r = torch.repeat_interleave(torch.arange(B), torch.tensor(counts))
    onehot = torch.zeros(B, N, dtype=torch.float64)
    onehot[r, torch.arange(N)] = 1.0
    S = onehot @ ((P @ P.T) * (X @ X.T)) @ onehot.T
    truth = float(S.norm())

    class Tok:
        pass

    tok = Tok()
    tok.B, tok.N, tok.H, tok.counts, tok.r, tok.hw = B, N, H, counts, r, X
    tau, mu, beta = P.sum(1), P.amax(1), P.norm(dim=1)
    hs = support._HiddenSide(tok)
    for need in (0.0, truth, 10 * truth):  # refinement skipped, used, skipped
        bound = support._tail_bound(tok, tau, mu, beta, hs, onehot, need=need)
        assert truth <= bound * (1 + 1e-9)
    hs._pairs = None  # the cheap bound alone
    assert truth <= support._tail_bound(tok, tau, mu, beta, hs, onehot) * (1 + 1e-9)


@pytest.mark.parametrize("common", [0.0, 4.0])
def test_bound_holds_with_anisotropic_hidden_states(common):
    """Hidden states with a strong common direction (as a real LM's): the bound still holds."""
    for seed in range(4):
        h, W, b, z, y, mask = batch(6, 10, 500, 8, 6.0, seed=seed, zipf=1.0)
        g = torch.Generator().manual_seed(100 + seed)
        h = h + common * torch.randn(1, 1, 8, generator=g, dtype=h.dtype)
        z = h @ W.T + b
        dense = lm_head_gram(h, z, y, mask, method="dense")
        for tol, tail_dim in ((1e-3, 0), (3e-2, 0), (3e-2, 16)):
            info = {}
            K = lm_head_gram(h, z, y, mask, method="support", tol=tol, tail_dim=tail_dim, support_eps=1e-3,
                             seed=seed, info=info)
            assert rel(K, dense) <= info["err_bound"] * (1 + 1e-9) + 1e-12
            if tail_dim == 0 and info["support_size"] < 500:
                assert info["err_bound"] <= tol


def test_valid_row_gather_matches_generic(monkeypatch):
    """Gathering the support columns run by run of valid rows gives the same numbers."""
    from salt.algo.gram import tokens

    h, W, b, z, y, mask = batch(4, 12, 300, 5, 3.0, seed=18, zipf=1.0, dtype=torch.float32)
    mask = (torch.arange(12)[None, :] < torch.tensor([[12], [5], [9], [1]])).float()  # prefix masks: 4 runs
    kw = dict(method="support", tol=1e-3, tail_dim=8, seed=1)
    K1 = lm_head_gram(h, z, y, mask, **kw)
    monkeypatch.setattr(tokens._Tokens, "runs", lambda self: None)
    K2 = lm_head_gram(h, z, y, mask, **kw)
    assert torch.equal(K1, K2)


def test_auto_sparse_fallback_costs_the_configured_tail(monkeypatch):
    """When the sparse estimate misses tol by far, ``auto`` compares exact with the support estimator
    at the configured ``tail_dim`` (a larger tail makes support dearer, so exact wins here), not at
    the default one. The batch sits between the two: with tail_dim 4096 exact costs 2.1x support,
    with the default 256 3.8x; the cut-off is set between them."""
    from salt.algo.gram import DEFAULTS, auto, gram_cost

    B, T, V, H, tail = 8, 128, 8192, 256, 4096
    configured, default = (gram_cost(B * T, V, H, B, tail_dim=t) for t in (tail, DEFAULTS.tail_dim))
    r_conf, r_def = configured["exact"] / configured["support"], default["exact"] / default["support"]
    assert 2.0 < r_conf < 3.0 < r_def  # support first (choose_method) at either tail; the cut-off between
    monkeypatch.setattr(auto, "_EXACT_AFTER_SPARSE", 3.0)
    h, W, b, z, y, mask = batch(B, T, V, H, 0.5, seed=2, frac=1.0, dtype=torch.float32)
    info = {}
    lm_head_gram(h, z, y, mask, method="auto", tol=1e-6, tail_dim=tail, info=info)
    assert info["method"] == "exact", info  # the sparse estimate (high entropy) misses tol = 1e-6 by far
