"""SALT decomposition (methods.md 3.4, 3.5): projector, invariants, switches, fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo.decomposition import METRIC_KEYS, SaltConfig, SaltResult, decompose
from salt.algo.gram_metrics import effective_sample_size, participation_ratio


def psd(B, d, seed=0, decay=1.0):
    """Random PSD Gram G G^T / B with feature scales decaying like decay^j."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(B, d, generator=g, dtype=torch.float64) * decay ** torch.arange(d, dtype=torch.float64)
    return G @ G.T / B


def adv(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, generator=g, dtype=torch.float64)


def projector(K, cfg):
    """Recover P column by column: with A = e_j, shared = P e_j (P depends on K and cfg only)."""
    B = K.shape[0]
    return torch.stack([decompose(K, torch.eye(B, dtype=torch.float64)[j], cfg).shared for j in range(B)], 1)


def check_metrics(res: SaltResult):
    assert set(res.metrics) == set(METRIC_KEYS)
    for key, value in res.metrics.items():
        assert isinstance(value, float) and math.isfinite(value), key


@pytest.mark.parametrize("subspace", ["top", "random"])
def test_projector_is_symmetric_idempotent_rank_k(subspace):
    K, cfg = psd(8, 5, seed=2, decay=0.6), SaltConfig(subspace=subspace, seed=3)
    res = decompose(K, adv(8), cfg)
    P = projector(K, cfg)
    assert torch.allclose(P, P.T, atol=1e-12)
    assert torch.allclose(P @ P, P, atol=1e-12)
    assert torch.linalg.matrix_rank(P).item() == res.k
    assert float(torch.trace(P)) == pytest.approx(res.k)


def test_top_subspace_spans_leading_eigenvectors():
    K = psd(8, 6, seed=4, decay=0.5)
    cfg = SaltConfig(k_fixed=2)
    P = projector(K, cfg)
    evals, evecs = torch.linalg.eigh(K)
    top = evecs[:, -2:]
    assert torch.allclose(P, top @ top.T, atol=1e-10)
    # shared channel energy: P is spectral, so (PA)^T K (PA) = sum of the top-2 energy
    A = adv(8, seed=5)
    res = decompose(K, A, cfg)
    coeffs = evecs.T @ A
    expect = float((evals[-2:] * coeffs[-2:] ** 2).sum() / (A @ K @ A))
    assert res.metrics["salt/shared_energy_ratio"] == pytest.approx(expect, rel=1e-9)
    resid = A - P @ A
    assert res.metrics["salt/residual_bound"] == pytest.approx(float(evals[-3]) * float(resid @ resid), rel=1e-9)
    assert float(resid @ K @ resid) <= res.metrics["salt/residual_bound"] * (1 + 1e-9)


def test_random_subspace_differs_from_top_and_is_seeded():
    K = psd(10, 10, seed=6, decay=0.7)
    P_top = projector(K, SaltConfig(k_fixed=3))
    P_rand = projector(K, SaltConfig(k_fixed=3, subspace="random", seed=1))
    P_rand2 = projector(K, SaltConfig(k_fixed=3, subspace="random", seed=1))
    P_rand3 = projector(K, SaltConfig(k_fixed=3, subspace="random", seed=2))
    assert float((P_top - P_rand).norm()) > 0.5
    assert torch.equal(P_rand, P_rand2) and not torch.allclose(P_rand, P_rand3)


def test_steps_follow_methods_formulas():
    B = 12
    K, A = psd(B, 4, seed=7), adv(B, seed=8)
    cfg = SaltConfig()
    res = decompose(K, A, cfg)
    pr = participation_ratio(K)
    n_eff = effective_sample_size(K, A)
    assert res.participation_ratio == pytest.approx(pr)
    assert res.k == min(max(round(pr), 1), min(64, B - 1))
    assert res.n_eff == pytest.approx(n_eff)
    assert res.alpha == pytest.approx(min(max(1 - n_eff, 0.0), 1.0))
    P = projector(K, cfg)
    assert torch.allclose(res.shared, P @ A, atol=1e-12)
    assert torch.allclose(res.residual, (torch.eye(B, dtype=torch.float64) - P) @ A.clamp_min(0), atol=1e-12)
    assert torch.allclose(res.advantages, res.shared + res.alpha * res.residual, atol=1e-12)
    assert float(res.shared @ res.residual) == pytest.approx(0.0, abs=1e-10)
    m = res.metrics
    sh2, r2 = float(res.shared @ res.shared), float(res.residual @ res.residual)
    assert m["salt/main_contrib_ratio"] == pytest.approx(sh2 / (sh2 + res.alpha**2 * r2))
    assert m["salt/exp_contrib_ratio"] == pytest.approx(1 - m["salt/main_contrib_ratio"])
    assert m["salt/positive_adv_ratio"] == pytest.approx(float((A > 0).double().mean()))
    assert m["salt/residual_energy_ratio"] == pytest.approx(1 - m["salt/shared_energy_ratio"])
    assert m["salt/n_eff_final"] == pytest.approx(effective_sample_size(K, res.advantages))
    Kf = res.advantages[:, None] * K * res.advantages[None, :]
    assert m["salt/pr_final"] == pytest.approx(participation_ratio(Kf))
    evals = torch.linalg.eigvalsh(K)
    assert m["salt/eig_max"] == pytest.approx(float(evals[-1]))
    assert m["salt/eig_min"] == pytest.approx(float(evals[0]), abs=1e-12)
    assert m["salt/k"] == res.k and m["salt/alpha"] == res.alpha and m["salt/fallback"] == 0.0
    check_metrics(res)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_one_without_relu_returns_advantages(dtype):
    K, A = psd(9, 5, seed=9), adv(9, seed=10).to(dtype)
    res = decompose(K, A, SaltConfig(alpha_fixed=1.0, relu_exploration=False))
    assert res.advantages.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(res.advantages, A, rtol=0, atol=tol)
    assert not res.fallback


def test_channel_switches():
    K, A = psd(10, 4, seed=11), adv(10, seed=12)
    both = decompose(K, A, SaltConfig(alpha_fixed=0.3))
    shared = decompose(K, A, SaltConfig(alpha_fixed=0.3, channels="shared_only"))
    resid = decompose(K, A, SaltConfig(alpha_fixed=0.3, channels="residual_only"))
    assert torch.allclose(shared.advantages, both.shared)
    assert torch.allclose(resid.advantages, 0.3 * both.residual)
    assert torch.allclose(shared.advantages + resid.advantages, both.advantages)
    no_relu = decompose(K, A, SaltConfig(alpha_fixed=0.3, relu_exploration=False))
    assert torch.allclose(no_relu.residual, A - both.shared)
    assert not torch.allclose(no_relu.residual, both.residual)


def test_alpha_rules():
    K, A = psd(10, 3, seed=13), adv(10, seed=14)
    res = decompose(K, A, SaltConfig(alpha_min=0.2, alpha_max=0.25))
    assert 0.2 <= res.alpha <= 0.25
    assert decompose(K, A, SaltConfig(alpha_fixed=0.7)).alpha == 0.7
    # all features identical, all A = 1: n_eff = B, alpha clamps to alpha_min = 0
    ones = torch.ones(6, 6, dtype=torch.float64)
    aligned = decompose(ones, torch.ones(6, dtype=torch.float64))
    assert aligned.n_eff == pytest.approx(6.0) and aligned.alpha == 0.0


def test_k_clamping():
    K = torch.eye(20, dtype=torch.float64)  # PR = 20
    A = adv(20, seed=15)
    assert decompose(K, A).k == 19  # capped at B - 1
    assert decompose(K, A, SaltConfig(k_max=5)).k == 5
    assert decompose(K, A, SaltConfig(rho=0.25)).k == 5
    v = torch.randn(20, 1, dtype=torch.float64)
    rank1 = v @ v.T  # PR = 1
    assert decompose(rank1, A, SaltConfig(k_min=3)).k == 3
    assert decompose(rank1, A, SaltConfig(k_fixed=7)).k == 7
    assert decompose(rank1, A, SaltConfig(k_fixed=50)).k == 19
    assert decompose(K[:2, :2], A[:2], SaltConfig(k_min=5)).k == 1  # B - 1 wins over k_min


def test_normalize_final_matches_std():
    K, A = psd(10, 4, seed=16), adv(10, seed=17)
    res = decompose(K, A, SaltConfig(normalize_final=True))
    assert float(res.advantages.std()) == pytest.approx(float(A.std()), rel=1e-9)
    plain = decompose(K, A)
    ratio = res.advantages / plain.advantages
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))


def test_deterministic_and_pure():
    K, A = psd(8, 8, seed=18), adv(8, seed=19)
    K0, A0 = K.clone(), A.clone()
    cfg = SaltConfig(subspace="random", seed=5)
    torch.manual_seed(0)
    r1 = decompose(K, A, cfg)
    torch.manual_seed(123)  # the global RNG plays no role
    r2 = decompose(K, A, cfg)
    assert torch.equal(r1.advantages, r2.advantages) and r1.metrics == r2.metrics
    assert torch.equal(K, K0) and torch.equal(A, A0)


def _assert_fallback(res: SaltResult, A: torch.Tensor):
    assert res.fallback and res.metrics["salt/fallback"] == 1.0
    assert res.advantages.dtype == A.dtype
    assert torch.allclose(res.advantages, A, rtol=0, atol=0, equal_nan=True)  # A unchanged
    check_metrics(res)


@pytest.mark.parametrize(
    "gram,advantages",
    [
        (torch.ones(1, 1), torch.tensor([0.5])),  # B < 2
        (torch.ones(0, 0), torch.zeros(0)),  # empty batch
        (torch.eye(4), torch.zeros(4)),  # all A = 0
        (torch.zeros(4, 4), torch.tensor([1.0, -1.0, 0.5, 0.0])),  # zero Gram
        (torch.full((3, 3), float("nan")), torch.tensor([1.0, -1.0, 0.0])),  # NaN Gram
        (torch.eye(3) * float("inf"), torch.tensor([1.0, -1.0, 0.0])),  # inf Gram
        (torch.eye(3), torch.tensor([1.0, float("nan"), 0.0])),  # NaN advantages
    ],
)
def test_degenerate_inputs_fall_back(gram, advantages):
    _assert_fallback(decompose(gram, advantages, SaltConfig()), advantages)


def test_eigensolver_failure_falls_back(monkeypatch):
    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated failure to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    A = torch.tensor([1.0, -0.5, 0.2])
    res = decompose(torch.eye(3), A)
    _assert_fallback(res, A)
    assert res.metrics["salt/participation_ratio"] == pytest.approx(3.0)


def test_shape_errors_raise():
    with pytest.raises(ValueError, match="advantages must be"):
        decompose(torch.eye(3), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"gram must be \(B, B\) = \(3, 3\)"):
        decompose(torch.eye(4), torch.ones(3))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(rho=0.0), "rho"),
        (dict(k_min=0), "k_min"),
        (dict(k_min=4, k_max=2), "k_max"),
        (dict(alpha_min=0.5, alpha_max=0.1), "alpha_max"),
        (dict(alpha_fixed=float("nan")), "alpha_fixed"),
        (dict(k_fixed=0), "k_fixed"),
        (dict(subspace="bottom"), "subspace"),
        (dict(channels="all"), "channels"),
        (dict(relu_exploration="yes"), "relu_exploration"),
        (dict(normalize_final=1), "normalize_final"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SaltConfig\.{field}="):
        SaltConfig(**kwargs)


def test_subspace_error_lists_allowed_values():
    with pytest.raises(ValueError, match="'top' or 'random'"):
        SaltConfig(subspace="bottom")


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(2, 12),
    d=st.integers(1, 12),
    seed=st.integers(0, 100_000),
    subspace=st.sampled_from(["top", "random"]),
    relu=st.booleans(),
    decay=st.floats(0.2, 1.0),
)
def test_properties_on_random_psd_grams(B, d, seed, subspace, relu, decay):
    K, A = psd(B, d, seed=seed, decay=decay), adv(B, seed=seed + 1)
    res = decompose(K, A, SaltConfig(subspace=subspace, relu_exploration=relu, seed=seed))
    check_metrics(res)
    assert not res.fallback
    assert 1 <= res.k <= B - 1
    assert -1e-9 <= res.n_eff <= B + 1e-9
    slack = 1e-10 / float((K * K).sum())  # the + 1e-10 of the PR denominator
    assert 1 - slack - 1e-9 <= res.participation_ratio <= B + 1e-9
    assert 0.0 <= res.alpha <= 1.0
    assert 0.0 <= res.metrics["salt/main_contrib_ratio"] <= 1.0
    assert float(res.shared @ res.residual) == pytest.approx(0.0, abs=1e-9 * (1 + float(A @ A)))
    assert torch.isfinite(res.advantages).all()
    if subspace == "top":
        assert -1e-9 <= res.metrics["salt/shared_energy_ratio"] <= 1 + 1e-9
    # P A + (I - P) A = A whatever the subspace
    same = decompose(K, A, SaltConfig(subspace=subspace, relu_exploration=False, alpha_fixed=1.0, seed=seed))
    assert torch.allclose(same.advantages, A, atol=1e-10)
