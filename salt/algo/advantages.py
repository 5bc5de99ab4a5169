"""Group-relative advantage estimators (methods.md section 1).

All estimators are vectorised over the batch with ``index_add_``; groups are given by integer
ids that may be non-contiguous (``[7, 3, 7, 3]``) and of different sizes. A group of size 1 always
gets advantage 0 (there is nothing to compare it with).

Registered estimators (``ADVANTAGE_ESTIMATORS``):

- ``grpo``: (r - mean_g) / (std_g + eps), unbiased std.
- ``dr_grpo``: r - mean_g.
- ``rloo``: r - mean of the other members of the group = n / (n - 1) * (r - mean_g).
- ``batch``: (r - mean_g) / (std_batch + eps), std_batch the unbiased std of all B rewards
  (Lite-PPO: group mean, batch std); 0 when B < 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from salt.algo.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics broadcast back to rollouts, all (B,) in the rewards' float dtype.

    Attributes:
        rewards: the rewards themselves (float).
        count: size of the rollout's group.
        mean: group mean reward.
        centred: r - mean_g.
        std: unbiased group std (0 for groups of size 1).
    """

    rewards: torch.Tensor
    count: torch.Tensor
    mean: torch.Tensor
    centred: torch.Tensor
    std: torch.Tensor


def _check_inputs(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_ids.dim() != 1 or group_ids.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"group_ids must be 1-D with the same length as rewards {tuple(rewards.shape)}, "
            f"got shape {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; fix the reward function before computing advantages")


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> GroupStats:
    """Group counts, means, centred rewards and unbiased stds, broadcast to each rollout.

    Args:
        rewards: (B,) float.
        group_ids: (B,) integer group id of each rollout (any values, any order).
    Returns:
        :class:`GroupStats` of (B,) tensors.
    """
    _check_inputs(rewards, group_ids)
    r = rewards if rewards.dtype.is_floating_point else rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,) dense ids 0..G-1
    n_groups = int(inverse.max().item()) + 1 if r.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    total = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    mean = (total / count)[inverse]  # (B,)
    centred = r - mean  # (B,)
    sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, centred * centred)
    dof = (count - 1).clamp_min(1)
    std = torch.sqrt(sq / dof)[inverse]  # (B,); size-1 groups: sq = 0 -> std 0
    return GroupStats(rewards=r, count=count[inverse], mean=mean, centred=centred, std=std)


@ADVANTAGE_ESTIMATORS.register("grpo")
def _grpo(stats: GroupStats, eps: float) -> torch.Tensor:
    adv = stats.centred / (stats.std + eps)
    return torch.where(stats.count > 1, adv, torch.zeros_like(adv))


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def _dr_grpo(stats: GroupStats, eps: float) -> torch.Tensor:
    return torch.where(stats.count > 1, stats.centred, torch.zeros_like(stats.centred))


@ADVANTAGE_ESTIMATORS.register("rloo")
def _rloo(stats: GroupStats, eps: float) -> torch.Tensor:
    # r - (sum - r) / (n - 1) = n / (n - 1) * (r - mean)
    scale = stats.count / (stats.count - 1).clamp_min(1)
    adv = scale * stats.centred
    return torch.where(stats.count > 1, adv, torch.zeros_like(adv))


@ADVANTAGE_ESTIMATORS.register("batch")
def _batch(stats: GroupStats, eps: float) -> torch.Tensor:
    r = stats.rewards
    batch_std = r.std(unbiased=True) if r.numel() > 1 else r.new_zeros(())
    adv = stats.centred / (batch_std + eps)
    return torch.where(stats.count > 1, adv, torch.zeros_like(adv))


def compute_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-rollout advantages A_i from the registered ``estimator``.

    Args:
        rewards: (B,) rewards (integer rewards are promoted to float32).
        group_ids: (B,) integer group (prompt) id per rollout; non-contiguous ids and unequal
            group sizes are fine.
        estimator: a name in ``ADVANTAGE_ESTIMATORS`` (grpo, dr_grpo, rloo, batch).
        eps: added to the std in ``grpo`` and ``batch`` (PODS uses 1e-4).
    Returns:
        (B,) advantages in the rewards' float dtype; 0 for every rollout of a size-1 group.
    """
    fn = ADVANTAGE_ESTIMATORS.get(estimator)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return fn(group_stats(rewards, group_ids), float(eps))
