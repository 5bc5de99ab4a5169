"""F-GRPO difficulty-aware focal scaling (methods.md section 5, arXiv 2602.06717)."""

from __future__ import annotations

import torch


def focal_weights(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    gamma: float,
    success_threshold: float = 1.0,
) -> torch.Tensor:
    """Per-rollout focal weight w_{g(i)} = (1 - mu_g)^gamma.

    mu_g is the fraction of the group's rollouts that are correct (reward >= success_threshold).
    The trainer multiplies the advantages by these weights before SALT. gamma = 0 gives all ones.

    Args:
        rewards: (B,) rewards.
        group_ids: (B,) integer group ids (any values, any order).
        gamma: focusing exponent (>= 0; the pipeline sweeps 0.5, 1, 2).
        success_threshold: reward at or above which a rollout counts as correct.
    Returns:
        (B,) weights in [0, 1], in the rewards' float dtype (float32 for integer rewards).
    """
    if gamma < 0:
        raise ValueError(f"algorithm.focal.gamma must be >= 0, got {gamma}")
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (B,), got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=dtype, device=rewards.device)
    correct = (rewards >= success_threshold).to(dtype)  # (B,)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,)
    n_groups = int(inverse.max()) + 1
    hits = torch.zeros(n_groups, dtype=dtype, device=rewards.device).index_add_(0, inverse, correct)
    count = torch.zeros(n_groups, dtype=dtype, device=rewards.device).index_add_(0, inverse, torch.ones_like(correct))
    mu = hits / count  # (G,)
    return torch.pow(1.0 - mu, float(gamma))[inverse]
