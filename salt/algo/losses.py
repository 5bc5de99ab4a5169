"""Policy losses (methods.md section 2): one registry, every method in it, the GRPO baseline too.

``compute_policy_loss`` is the only entry point the trainer calls::

    cfg = LossConfig.for_loss("dapo")                      # per-loss defaults from methods.md
    loss, metrics = compute_policy_loss(cfg, logp, old_logp, advantages, mask,
                                        ref_logp=ref_logp, entropy=entropy)
    loss.backward()                                        # loss is MINIMISED

Conventions (all documented choices):

- rho_it = exp(clamp(logp_it - old_logp_it, -20, 20)); the clamp (as in verl) only guards
  against overflow, its gradient is 0 outside the range.
- Tokens outside ``mask`` are replaced by 0 before any arithmetic (``torch.where``), so padding
  that holds -inf or NaN log-probs neither poisons the loss nor receives gradient.
- Every metric is a masked token mean over the whole batch, whatever ``agg_mode`` is, and a
  python float:
  ``clip_frac_high`` = fraction of tokens whose gradient the upper clip zeroes (A > 0, rho above
  1 + eps_high; for GSPO the sequence ratio; for CISPO: tokens whose IS weight was truncated),
  ``clip_frac_low`` = the same for the lower clip (A < 0, rho below 1 - eps_low; 0 for CISPO),
  ``clip_frac`` = their sum, ``dual_clip_frac`` = tokens capped by the dual clip (0 when it is
  off), ``approx_kl`` = k3 estimate of KL(old || new) = mean(rho - 1 - log rho),
  ``ratio_mean`` / ``ratio_max``, ``pg_loss`` (the aggregated surrogate alone),
  ``entropy`` = mean token entropy, present only when the trainer passes ``entropy`` (the key
  is omitted, never faked, when it is None), ``kl`` = mean of the ``kl_estimator`` penalty,
  present only when ``beta > 0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from salt.algo.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0

# Per-loss defaults (methods.md section 2 table); anything not listed takes the field default.
# They are the published settings (docs/fidelity.md): verl's vanilla loss has the dual clip c = 3 on,
# verl's DAPO recipe sets clip_ratio_c = 10, verl's CISPO recipe clamps the IS weight to
# [1 - 10, 1 + 0.2] (a cap of 1.2, no effective floor), GSPO and CISPO have no dual clip.
_LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {"clip_eps_low": 0.2, "clip_eps_high": 0.2, "agg_mode": "seq-mean-token-mean", "dual_clip_c": 3.0},
    "dr_grpo": {"clip_eps_low": 0.2, "clip_eps_high": 0.2, "agg_mode": "seq-mean-token-sum-norm", "dual_clip_c": 3.0},
    "dapo": {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "agg_mode": "token-mean", "beta": 0.0, "dual_clip_c": 10.0},
    "cispo": {"eps_high_is": 1.2, "agg_mode": "token-mean", "dual_clip_c": 0.0},
    "gspo": {"gspo_eps_low": 3e-4, "gspo_eps_high": 4e-4, "agg_mode": "seq-mean-token-mean", "dual_clip_c": 0.0},
}
_FIELD_DEFAULTS: dict[str, Any] = {
    "clip_eps_low": 0.2,
    "clip_eps_high": 0.2,
    "eps_high_is": 1.2,
    "dual_clip_c": 0.0,
    "gspo_eps_low": 3e-4,
    "gspo_eps_high": 4e-4,
    "agg_mode": "seq-mean-token-mean",
    "beta": 0.0,
    "kl_estimator": "k3",
    "entropy_coef": 0.0,
}

@dataclass
class LossConfig:
    """Configuration of the policy loss. ``None`` fields take the per-loss default of methods.md.

    Attributes:
        name: registered loss (grpo, dr_grpo, dapo, cispo, gspo).
        clip_eps_low: lower clip, ratio >= 1 - clip_eps_low (grpo, dr_grpo, dapo).
        clip_eps_high: upper clip, ratio <= 1 + clip_eps_high (grpo, dr_grpo, dapo).
        eps_high_is: CISPO's cap on the (stop-gradient) importance weight: w = min(rho, eps_high_is)
            (1.2 = 1 + clip_ratio_high of verl's CISPO recipe).
        gspo_eps_low / gspo_eps_high: GSPO's clip of the sequence ratio (3e-4 / 4e-4).
        dual_clip_c: dual-clip constant c > 1 for negative advantages, 0 = off. None takes the
            loss's published default: 3.0 for grpo / dr_grpo (verl's vanilla loss), 10.0 for dapo
            (verl's DAPO recipe), off for cispo and gspo.
            Clipped-ratio losses: objective max(min(rho A, clip(rho) A), c A) for A < 0.
            CISPO: the IS weight of A < 0 tokens is further capped at c.
        agg_mode: token-mean | seq-mean-token-mean | seq-mean-token-sum-norm.
        norm_len: the length L in seq-mean-token-sum-norm (sum / (B * L)); None = padded T of
            the batch. Dr. GRPO uses the generation budget (max_new_tokens) here.
        beta: KL coefficient against the reference policy (0 = no reference model).
        kl_estimator: k1 | k2 | k3 (see :func:`kl_penalty`).
        entropy_coef: coefficient of the entropy bonus (loss -= entropy_coef * agg(entropy)).
    """

    name: str = "grpo"
    clip_eps_low: Optional[float] = None
    clip_eps_high: Optional[float] = None
    eps_high_is: Optional[float] = None
    gspo_eps_low: Optional[float] = None
    gspo_eps_high: Optional[float] = None
    dual_clip_c: Optional[float] = None
    agg_mode: Optional[str] = None
    norm_len: Optional[int] = None
    beta: Optional[float] = None
    kl_estimator: Optional[str] = None
    entropy_coef: Optional[float] = None

    def __post_init__(self) -> None:
        if self.name not in POLICY_LOSSES:
            raise ValueError(
                f"algorithm.loss.name: unknown policy loss '{self.name}'; allowed: {', '.join(POLICY_LOSSES.names())}"
            )
        defaults = {**_FIELD_DEFAULTS, **_LOSS_DEFAULTS.get(self.name, {})}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"algorithm.loss.{field} = {value!r} is invalid; allowed: {allowed}")

        if self.agg_mode not in AGG_MODES:
            raise bad("agg_mode", self.agg_mode, ", ".join(AGG_MODES))
        if self.kl_estimator not in KL_ESTIMATORS:
            raise bad("kl_estimator", self.kl_estimator, ", ".join(KL_ESTIMATORS))
        if not 0.0 <= float(self.clip_eps_low) < 1.0:
            raise bad("clip_eps_low", self.clip_eps_low, "a number in [0, 1)")
        if not float(self.clip_eps_high) >= 0.0:
            raise bad("clip_eps_high", self.clip_eps_high, "a number >= 0")
        if not 0.0 <= float(self.gspo_eps_low) < 1.0:
            raise bad("gspo_eps_low", self.gspo_eps_low, "a number in [0, 1)")
        if not float(self.gspo_eps_high) >= 0.0:
            raise bad("gspo_eps_high", self.gspo_eps_high, "a number >= 0")
        if not float(self.eps_high_is) > 0.0:
            raise bad("eps_high_is", self.eps_high_is, "a number > 0")
        if not (float(self.dual_clip_c) == 0.0 or float(self.dual_clip_c) > 1.0):
            raise bad("dual_clip_c", self.dual_clip_c, "0 (off), a number > 1 (verl: 3.0), or null (the loss's default)")
        if self.norm_len is not None and not (isinstance(self.norm_len, int) and self.norm_len > 0):
            raise bad("norm_len", self.norm_len, "null (padded length) or a positive integer")
        if not float(self.beta) >= 0.0:
            raise bad("beta", self.beta, "a number >= 0 (0 disables the KL term)")
        if not float(self.entropy_coef) >= 0.0:
            raise bad("entropy_coef", self.entropy_coef, "a number >= 0")

    @classmethod
    def for_loss(cls, name: str, **overrides: Any) -> "LossConfig":
        """Config of loss ``name`` with its methods.md defaults, then ``overrides`` applied."""
        valid = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"algorithm.loss: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
            )
        return cls(name=name, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# shared helpers


def agg_loss(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: Optional[int] = None) -> torch.Tensor:
    """Aggregate per-token values into a scalar.

    Args:
        values: (B, T) per-token values.
        mask: (B, T) response mask (bool or 0/1).
        mode: ``token-mean`` (sum over tokens / number of tokens in the batch),
            ``seq-mean-token-mean`` (token mean per sequence, then mean over the sequences that
            have at least one token), ``seq-mean-token-sum-norm`` (sum / (B * norm_len)).
        norm_len: L of ``seq-mean-token-sum-norm``; None = T.
    Returns:
        scalar tensor; 0 when the mask is empty.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"values and mask must both be (B, T), got {tuple(values.shape)} and {tuple(mask.shape)}")
    m = mask.to(values.dtype)
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))  # (B, T)
    if mode == "token-mean":
        return masked.sum() / m.sum().clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        tokens = m.sum(dim=1)  # (B,)
        seq = masked.sum(dim=1) / tokens.clamp_min(1.0)  # (B,)
        has = (tokens > 0).to(values.dtype)
        return (seq * has).sum() / has.sum().clamp_min(1.0)
    if mode == "seq-mean-token-sum-norm":
        length = values.shape[1] if norm_len is None else int(norm_len)
        return masked.sum() / float(max(values.shape[0] * length, 1))
    raise ValueError(f"unknown agg_mode '{mode}'; allowed: {', '.join(AGG_MODES)}")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With log r = ref_logp - logp: ``k1`` = -log r, ``k2`` = (log r)^2 / 2,
    ``k3`` = exp(log r) - 1 - log r (non-negative, low variance; log r clamped to +-20 first).

    Args:
        logp, ref_logp: (B, T).
    Returns:
        (B, T).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have the same shape")
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r * log_r
    if estimator == "k3":
        log_r = log_r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.exp(log_r) - 1.0 - log_r
    raise ValueError(f"unknown kl_estimator '{estimator}'; allowed: {', '.join(KL_ESTIMATORS)}")


@dataclass
class TokenLoss:
    """What a registered loss returns: per-token loss to minimise and clip indicators, all (B, T)."""

    loss: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    dual_clipped: torch.Tensor


def _clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float, dual_clip_c: Optional[float]
) -> TokenLoss:
    """-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), with the optional dual clip for A < 0."""
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped  # the clipped branch is active: zero gradient
    clipped_high = clipped & (adv > 0)
    clipped_low = clipped & (adv < 0)
    dual = torch.zeros_like(clipped)
    if dual_clip_c:  # 0 / None = off
        loss_dual = -adv * dual_clip_c
        dual = (adv < 0) & (loss > loss_dual)
        loss = torch.where(adv < 0, torch.minimum(loss, loss_dual), loss)
    return TokenLoss(loss, clipped_low, clipped_high, dual)


# Registered losses: fn(cfg, logp, log_ratio, adv, mask) -> TokenLoss
#   logp (B, T) current log-probs (0 outside the mask), log_ratio (B, T) clamped logp - old_logp
#   (0 outside the mask), adv (B, T) token advantages, mask (B, T) bool.


def _ratio_clip_loss(cfg: LossConfig, logp, log_ratio, adv, mask) -> TokenLoss:
    """PPO's clipped surrogate on the token ratio rho = exp(log_ratio)."""
    return _clipped_surrogate(torch.exp(log_ratio), adv, cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c)


# One per-token objective, three names: Dr. GRPO differs from GRPO in aggregation and advantages,
# DAPO in clip-higher (asymmetric eps) and token-mean aggregation, all of them config defaults.
for _name in ("grpo", "dr_grpo", "dapo"):
    POLICY_LOSSES.register(_name)(_ratio_clip_loss)


@POLICY_LOSSES.register("cispo")
def _cispo_loss(cfg: LossConfig, logp, log_ratio, adv, mask) -> TokenLoss:
    """-sg(min(rho, eps_high_is)) A logp: every token keeps a gradient, only its weight is capped."""
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(max=cfg.eps_high_is)
    truncated = ratio > cfg.eps_high_is
    dual = torch.zeros_like(truncated)
    if cfg.dual_clip_c:  # 0 = off (the CISPO default)
        dual = (adv < 0) & (weight > cfg.dual_clip_c)
        weight = torch.where(adv < 0, weight.clamp(max=cfg.dual_clip_c), weight)
    loss = -(weight.detach() * adv * logp)
    return TokenLoss(loss, torch.zeros_like(truncated), truncated, dual)


@POLICY_LOSSES.register("gspo")
def _gspo_loss(cfg: LossConfig, logp, log_ratio, adv, mask) -> TokenLoss:
    """Sequence ratio s_i = exp(mean_t log_ratio_it), clipped to [1 - 3e-4, 1 + 4e-4].

    Token form (GSPO-token): s_it = sg(s_i) * exp(logp_it - sg(logp_it)) has the value s_i and
    d s_it / d logp_it = s_i, so under ``seq-mean-token-mean`` the value and the gradient equal
    those of the sequence objective mean_i min(s_i A_i, clip(s_i) A_i) (d s_i / d logp_it =
    s_i / |y_i|), and per-token advantages (B, T) are supported as in the paper.
    """
    m = mask.to(log_ratio.dtype)
    seq_log_ratio = (log_ratio * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # (B,)
    s_tok = torch.exp(seq_log_ratio.detach()[:, None] + logp - logp.detach())  # (B, T), value s_i
    return _clipped_surrogate(s_tok, adv, cfg.gspo_eps_low, cfg.gspo_eps_high, cfg.dual_clip_c)


# ---------------------------------------------------------------------------------------------
# entry point


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.to(torch.float64)
    return float((x.to(torch.float64) * m).sum() / m.sum().clamp_min(1.0))


def compute_policy_loss(
    cfg: LossConfig,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy loss of ``cfg.name`` (to MINIMISE) and its metrics.

    Args:
        cfg: :class:`LossConfig`.
        logp: (B, T) log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: (B, T) log-probs under the policy that sampled them (treated as constants).
        advantages: (B,) per-rollout or (B, T) per-token advantages.
        mask: (B, T) response mask (bool or 0/1).
        ref_logp: (B, T) reference-policy log-probs; required when ``cfg.beta > 0``.
        entropy: (B, T) per-token policy entropy (from the logits, differentiable if the entropy
            bonus should train); required when ``cfg.entropy_coef > 0``, else only logged.
    Returns:
        (scalar loss, metrics dict of python floats; keys in the module docstring).
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask)):
        if t.shape != logp.shape:
            raise ValueError(f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages (B,) must have B = {logp.shape[0]}, got {tuple(advantages.shape)}")
        adv = advantages[:, None].expand_as(logp)  # (B, T)
    elif advantages.shape == logp.shape:
        adv = advantages
    else:
        raise ValueError(f"advantages must be (B,) or (B, T) = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("algorithm.loss.beta > 0 needs ref_logp (load a reference model) or set beta: 0")
    if cfg.entropy_coef > 0 and entropy is None:
        raise ValueError("algorithm.loss.entropy_coef > 0 needs the per-token entropy tensor (B, T)")
    for name, t in (("ref_logp", ref_logp), ("entropy", entropy)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(t.shape)}")

    bmask = mask.bool()
    zeros = torch.zeros_like(logp)
    logp_safe = torch.where(bmask, logp, zeros)  # (B, T)
    old_safe = torch.where(bmask, old_logp.detach().to(logp.dtype), zeros)
    adv = torch.where(bmask, adv.detach().to(logp.dtype), zeros)
    log_ratio = (logp_safe - old_safe).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)

    token = POLICY_LOSSES.get(cfg.name)(cfg, logp_safe, log_ratio, adv, bmask)
    pg_loss = agg_loss(token.loss, bmask, cfg.agg_mode, cfg.norm_len)
    loss = pg_loss
    metrics: dict[str, float] = {}
    if cfg.beta > 0:
        ref_safe = torch.where(bmask, ref_logp.detach().to(logp.dtype), zeros)
        kl = kl_penalty(logp_safe, ref_safe, cfg.kl_estimator)  # (B, T)
        loss = loss + cfg.beta * agg_loss(kl, bmask, cfg.agg_mode, cfg.norm_len)
        metrics["kl"] = _masked_mean(kl.detach(), bmask)
    if entropy is not None:
        ent = torch.where(bmask, entropy.to(logp.dtype), zeros)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * agg_loss(ent, bmask, cfg.agg_mode, cfg.norm_len)
        metrics["entropy"] = _masked_mean(ent.detach(), bmask)

    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        low = _masked_mean(token.clipped_low, bmask)
        high = _masked_mean(token.clipped_high, bmask)
        metrics.update(
            {
                "clip_frac": low + high,
                "clip_frac_low": low,
                "clip_frac_high": high,
                "dual_clip_frac": _masked_mean(token.dual_clipped, bmask),
                "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, bmask),
                "ratio_mean": _masked_mean(ratio, bmask),
                "ratio_max": float(ratio[bmask].max()) if bool(bmask.any()) else 1.0,
                "pg_loss": float(pg_loss.detach()),
            }
        )
    return loss, metrics
