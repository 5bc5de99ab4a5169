import math

import pytest
import torch

from salt.algo.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    LossConfig,
    agg_loss,
    compute_policy_loss,
    kl_penalty,
)

CLAMP = 20.0


# ---------------------------------------------------------------------------------------------
# slow references: one scalar at a time


def ref_agg(values, mask, mode, norm_len=None):
    """values: dict (b, t) -> scalar tensor for masked tokens."""
    B, T = mask.shape
    if mode == "token-mean":
        items = [values[(b, t)] for b in range(B) for t in range(T) if mask[b, t]]
        return sum(items) / max(len(items), 1) if items else torch.tensor(0.0, dtype=torch.float64)
    if mode == "seq-mean-token-mean":
        seqs = []
        for b in range(B):
            items = [values[(b, t)] for t in range(T) if mask[b, t]]
            if items:
                seqs.append(sum(items) / len(items))
        return sum(seqs) / len(seqs) if seqs else torch.tensor(0.0, dtype=torch.float64)
    if mode == "seq-mean-token-sum-norm":
        items = [values[(b, t)] for b in range(B) for t in range(T) if mask[b, t]]
        L = T if norm_len is None else norm_len
        return sum(items) / (B * L)
    raise AssertionError(mode)


def ref_clipped(ratio, a, lo, hi, c):
    clipped = torch.clamp(ratio, 1 - lo, 1 + hi)
    obj = torch.minimum(ratio * a, clipped * a)
    if c and a < 0:
        obj = torch.maximum(obj, torch.tensor(c * a, dtype=torch.float64))
    return -obj


def ref_kl(lp, ref, est):
    log_r = ref - lp
    if est == "k1":
        return -log_r
    if est == "k2":
        return 0.5 * log_r**2
    log_r = torch.clamp(log_r, -CLAMP, CLAMP)
    return torch.exp(log_r) - 1 - log_r


def ref_loss(cfg, logp, old, adv, mask, ref=None, ent=None):
    B, T = mask.shape

    def a_of(b, t):
        return float(adv[b] if adv.dim() == 1 else adv[b, t])

    per = {}
    if cfg.name == "gspo":
        # sequence-level objective; only meaningful with seq-mean-token-mean
        assert cfg.agg_mode == "seq-mean-token-mean" and adv.dim() == 1
        seq_losses = []
        for b in range(B):
            toks = [t for t in range(T) if mask[b, t]]
            if not toks:
                continue
            lr = sum(torch.clamp(logp[b, t] - old[b, t], -CLAMP, CLAMP) for t in toks) / len(toks)
            s = torch.exp(lr)
            seq_losses.append(ref_clipped(s, float(adv[b]), cfg.gspo_eps_low, cfg.gspo_eps_high, cfg.dual_clip_c))
        pg = sum(seq_losses) / len(seq_losses)
    else:
        for b in range(B):
            for t in range(T):
                if not mask[b, t]:
                    continue
                lr = torch.clamp(logp[b, t] - old[b, t], -CLAMP, CLAMP)
                ratio = torch.exp(lr)
                a = a_of(b, t)
                if cfg.name == "cispo":
                    w = min(float(ratio.detach()), cfg.eps_high_is)
                    if cfg.dual_clip_c and a < 0:
                        w = min(w, cfg.dual_clip_c)
                    per[(b, t)] = -(w * a * logp[b, t])
                else:
                    per[(b, t)] = ref_clipped(ratio, a, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)
        pg = ref_agg(per, mask, cfg.agg_mode, cfg.norm_len)
    loss = pg
    if cfg.beta > 0:
        kl = {(b, t): ref_kl(logp[b, t], ref[b, t], cfg.kl_estimator) for b in range(B) for t in range(T) if mask[b, t]}
        loss = loss + cfg.beta * ref_agg(kl, mask, cfg.agg_mode, cfg.norm_len)
    if cfg.entropy_coef > 0:
        en = {(b, t): ent[b, t] for b in range(B) for t in range(T) if mask[b, t]}
        loss = loss - cfg.entropy_coef * ref_agg(en, mask, cfg.agg_mode, cfg.norm_len)
    return loss


def make_batch(seed, B=3, T=5, adv_dim=1, scale=0.8):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05).requires_grad_()
    old = logp.detach() + torch.randn(B, T, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    mask[-1] = False  # an empty sequence
    shape = (B,) if adv_dim == 1 else (B, T)
    adv = torch.randn(*shape, generator=g, dtype=torch.float64)
    return logp, old, adv, mask


def check_against_ref(cfg, seed, adv_dim=1, with_ref=False, with_ent=False):
    logp, old, adv, mask = make_batch(seed, adv_dim=adv_dim)
    g = torch.Generator().manual_seed(seed + 100)
    ref = logp.detach() + torch.randn(logp.shape, generator=g, dtype=torch.float64) * 0.3 if with_ref else None
    ent = torch.rand(logp.shape, generator=g, dtype=torch.float64).requires_grad_() if with_ent else None
    loss, metrics = compute_policy_loss(cfg, logp, old, adv, mask, ref_logp=ref, entropy=ent)
    want = ref_loss(cfg, logp, old, adv, mask, ref=ref, ent=ent)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    inputs = [logp] + ([ent] if with_ent else [])
    got_g = torch.autograd.grad(loss, inputs)
    want_g = torch.autograd.grad(want, inputs)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    return metrics


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "cispo"])
@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dual", [0.0, 3.0])
@pytest.mark.parametrize("adv_dim", [1, 2])
def test_token_losses_match_loop(name, agg, dual, adv_dim):
    extra = {"eps_high_is": 5.0} if name == "cispo" else {}  # a cap above c, so the dual clip can act
    cfg = LossConfig.for_loss(name, agg_mode=agg, dual_clip_c=dual, **extra)
    seen = {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "dual_clip_frac": 0.0}
    for seed in range(6):
        metrics = check_against_ref(cfg, seed, adv_dim=adv_dim)
        for key in seen:
            seen[key] += metrics[key]
    # the random batches exercise every clipping branch the loss has
    assert seen["clip_frac_high"] > 0
    assert (seen["clip_frac_low"] > 0) == (name != "cispo")
    assert (seen["dual_clip_frac"] > 0) == bool(dual)


@pytest.mark.parametrize("dual", [0.0, 3.0])
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.05, 0.1)])
def test_gspo_equals_sequence_level_objective(dual, eps):
    cfg = LossConfig.for_loss("gspo", dual_clip_c=dual, gspo_eps_low=eps[0], gspo_eps_high=eps[1])
    low = high = 0.0
    for seed in range(6):
        metrics = check_against_ref(cfg, seed)
        low, high = low + metrics["clip_frac_low"], high + metrics["clip_frac_high"]
    assert low > 0 and high > 0


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("name", ["grpo", "cispo", "dapo"])
def test_kl_and_entropy_terms_match_loop(est, name):
    cfg = LossConfig.for_loss(name, beta=0.1, kl_estimator=est, entropy_coef=0.01)
    metrics = check_against_ref(cfg, 7, with_ref=True, with_ent=True)
    assert "kl" in metrics and "entropy" in metrics


def test_norm_len_used_by_seq_mean_token_sum_norm():
    cfg = LossConfig.for_loss("dr_grpo", norm_len=11)
    check_against_ref(cfg, 3)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "cispo", "gspo"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_sign(name, sign):
    logp = torch.full((1, 1), math.log(0.5), dtype=torch.float64, requires_grad=True)
    old = logp.detach().clone()
    loss, _ = compute_policy_loss(
        LossConfig.for_loss(name),
        logp,
        old,
        torch.tensor([sign], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.bool),
    )
    loss.backward()
    # gradient descent moves logp by -grad: a positive advantage must increase logp
    assert logp.grad.item() * sign < 0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "cispo", "gspo"])
def test_masked_tokens_get_zero_gradient_even_with_inf_padding(name):
    logp, old, adv, mask = make_batch(5)
    with torch.no_grad():
        logp[~mask] = float("-inf")
    old = old.clone()
    old[~mask] = float("nan")
    for agg in AGG_MODES:
        cfg = LossConfig.for_loss(name, agg_mode=agg)
        loss, metrics = compute_policy_loss(cfg, logp, old, adv, mask)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss)
        assert torch.all(grad[~mask] == 0)
        assert torch.isfinite(grad).all() and grad[mask].abs().sum() > 0
        assert all(math.isfinite(v) for v in metrics.values())


def test_agg_modes_against_loops_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    vals = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.4
    mask[2] = False
    for mode in AGG_MODES:
        d = {(b, t): vals[b, t] for b in range(4) for t in range(6) if mask[b, t]}
        want = torch.as_tensor(ref_agg(d, mask, mode), dtype=torch.float64)
        torch.testing.assert_close(agg_loss(vals, mask, mode), want)
        assert agg_loss(vals, torch.zeros_like(mask), mode).item() == 0.0
    torch.testing.assert_close(agg_loss(vals, mask, "seq-mean-token-sum-norm", norm_len=10), vals[mask].sum() / 40)
    with pytest.raises(ValueError, match="unknown agg_mode 'sum'"):
        agg_loss(vals, mask, "sum")


def test_kl_penalty_formulas():
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    d = ref - lp
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), -d)
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), d * d / 2)
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), torch.exp(d) - 1 - d)
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="allowed: k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_clip_metrics_on_hand_example():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    old = torch.full((1, 4), -1.0, dtype=torch.float64)
    logp = (old + torch.log(ratios)).requires_grad_()
    mask = torch.ones(1, 4, dtype=torch.bool)
    cfg = LossConfig.for_loss("grpo", dual_clip_c=1.4)
    loss, m = compute_policy_loss(cfg, logp, old, adv, mask)
    assert m["clip_frac_high"] == pytest.approx(0.25)
    assert m["clip_frac_low"] == pytest.approx(0.25)
    assert m["clip_frac"] == pytest.approx(0.5)
    assert m["dual_clip_frac"] == pytest.approx(0.25)
    r = ratios.flatten()
    assert m["approx_kl"] == pytest.approx(float((r - 1 - torch.log(r)).mean()))
    assert m["ratio_max"] == pytest.approx(1.5)
    assert "entropy" not in m and "kl" not in m
    # per-token objectives: 1.2*1, -max(0.5,0.8)... = 0.8*-1 -> loss 0.8, dual: min(1.5, 1.4)*-1, 1.0*1
    expected = -(1.2 - 0.8 - 1.4 + 1.0) / 4
    assert loss.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0] == 0 and grad[0, 1] == 0 and grad[0, 2] == 0 and grad[0, 3] != 0


def test_cispo_keeps_gradient_where_ppo_clips():
    old = torch.zeros(1, 1, dtype=torch.float64) - 1.0
    logp = (old + math.log(8.0)).requires_grad_()  # ratio 8 > eps_high_is 5
    adv = torch.tensor([1.0], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, m = compute_policy_loss(LossConfig.for_loss("cispo", eps_high_is=5.0), logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-5.0)  # weight capped at 5, gradient kept
    loss, _ = compute_policy_loss(LossConfig.for_loss("cispo"), logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-1.2)  # the default cap of verl's CISPO recipe
    assert m["clip_frac_high"] == 1.0 and m["clip_frac_low"] == 0.0
    loss, _ = compute_policy_loss(LossConfig.for_loss("dapo"), logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == 0.0


def test_loss_config_defaults_follow_methods_table():
    g = LossConfig.for_loss("grpo")
    assert (g.clip_eps_low, g.clip_eps_high, g.agg_mode, g.beta) == (0.2, 0.2, "seq-mean-token-mean", 0.0)
    assert LossConfig.for_loss("dr_grpo").agg_mode == "seq-mean-token-sum-norm"
    d = LossConfig.for_loss("dapo")
    assert (d.clip_eps_low, d.clip_eps_high, d.agg_mode, d.beta) == (0.2, 0.28, "token-mean", 0.0)
    c = LossConfig.for_loss("cispo")
    assert (c.eps_high_is, c.agg_mode, c.dual_clip_c) == (1.2, "token-mean", 0.0)
    s = LossConfig.for_loss("gspo")
    assert (s.gspo_eps_low, s.gspo_eps_high, s.agg_mode) == (3e-4, 4e-4, "seq-mean-token-mean")
    assert g.dual_clip_c == 3.0 and d.dual_clip_c == 10.0 and s.dual_clip_c == 0.0
    assert LossConfig.for_loss("grpo", dual_clip_c=0).dual_clip_c == 0  # explicitly off
    assert g.entropy_coef == 0.0 and g.kl_estimator in ("k1", "k2", "k3")
    assert LossConfig(name="dapo").clip_eps_high == 0.28
    assert LossConfig.for_loss("dapo", clip_eps_high=0.3).clip_eps_high == 0.3
    assert set(POLICY_LOSSES.names()) == {"grpo", "dr_grpo", "dapo", "cispo", "gspo"}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"agg_mode": "mean"}, "agg_mode"),
        ({"kl_estimator": "k5"}, "kl_estimator"),
        ({"clip_eps_low": 1.5}, "clip_eps_low"),
        ({"clip_eps_high": -0.1}, "clip_eps_high"),
        ({"dual_clip_c": 0.5}, "dual_clip_c"),
        ({"eps_high_is": 0.0}, "eps_high_is"),
        ({"beta": -1.0}, "beta"),
        ({"entropy_coef": -0.1}, "entropy_coef"),
        ({"norm_len": 0}, "norm_len"),
    ],
)
def test_loss_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"algorithm.loss.{field}"):
        LossConfig.for_loss("grpo", **kwargs)


def test_loss_config_unknown_name_and_key():
    with pytest.raises(ValueError, match="allowed: cispo, dapo, dr_grpo, grpo, gspo"):
        LossConfig.for_loss("ppo2")
    with pytest.raises(ValueError, match="unknown key\\(s\\) clip_eps"):
        LossConfig.for_loss("grpo", clip_eps=0.1)


def test_missing_inputs_raise():
    logp, old, adv, mask = make_batch(0)
    with pytest.raises(ValueError, match="needs ref_logp"):
        compute_policy_loss(LossConfig.for_loss("grpo", beta=0.1), logp, old, adv, mask)
    with pytest.raises(ValueError, match="entropy_coef > 0 needs"):
        compute_policy_loss(LossConfig.for_loss("grpo", entropy_coef=0.1), logp, old, adv, mask)
    with pytest.raises(ValueError, match="advantages \\(B,\\) must have B = 3"):
        compute_policy_loss(LossConfig.for_loss("grpo"), logp, old, adv[:2], mask)
    with pytest.raises(ValueError, match="old_logp must have the shape"):
        compute_policy_loss(LossConfig.for_loss("grpo"), logp, old[:, :2], adv, mask)
