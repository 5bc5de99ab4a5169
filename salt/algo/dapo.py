"""DAPO's data-side pieces (methods.md section 2): dynamic sampling and overlong shaping.

The refill loop of dynamic sampling (generate again, at most ``max_gen_batches`` times) lives in
the trainer; this module holds the pure decisions it makes.
"""

from __future__ import annotations

import torch

FILTER_METRICS = ("acc", "reward")
"""What dynamic sampling filters on: ``acc`` (verl's DAPO recipe, ``filter_groups.metric=acc``: the task
score before any shaping; a group of one is kept) | ``reward`` (ours: the shaped reward, score plus the
overlong penalty; a group of one is dropped). docs/fidelity.md row 11."""


def dynamic_sampling_keep(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Which rollouts to keep: those whose group's rewards are not all equal.

    A group whose rollouts all got the same reward has zero group-relative advantage and gives no
    gradient signal, so DAPO drops it. A group of size 1 is "all equal" and is dropped too.

    Args:
        rewards: (B,) float rewards.
        group_ids: (B,) integer group ids (any values, any order).
    Returns:
        (B,) bool, True for rollouts of groups with at least two distinct rewards.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (B,), got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    r = rewards.to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,) dense 0..G-1
    n_groups = int(inverse.max()) + 1
    lo = torch.full((n_groups,), float("inf"), dtype=r.dtype).scatter_reduce(0, inverse, r, reduce="amin")
    hi = torch.full((n_groups,), float("-inf"), dtype=r.dtype).scatter_reduce(0, inverse, r, reduce="amax")
    return (hi > lo)[inverse]


def informative_groups(scores: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor,
                       metric: str = "reward") -> torch.Tensor:
    """Which rollouts DAPO's dynamic sampling keeps, filtering on ``metric`` (:data:`FILTER_METRICS`).

    ``acc``: verl's recipe keeps a prompt whose accuracies have std > 0 or that has one rollout, so an
    all-correct or all-wrong group is dropped even when the overlong penalty makes its rewards differ.
    ``reward``: :func:`dynamic_sampling_keep` on the shaped rewards.

    Args:
        scores: (B,) task scores before shaping (the accuracy: 0/1, or the fraction of tests passed).
        rewards: (B,) shaped rewards (scores + overlong penalty).
        group_ids: (B,) integer group ids.
    Returns:
        (B,) bool keep mask.
    """
    if metric == "reward":
        return dynamic_sampling_keep(rewards, group_ids)
    if metric != "acc":
        raise ValueError(f"algorithm.dynamic_sampling.metric={metric!r}: expected one of {', '.join(FILTER_METRICS)}")
    keep = dynamic_sampling_keep(scores, group_ids)
    if keep.numel():
        _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
        keep = keep | (counts[inverse] == 1)
    return keep


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the task reward.

    r_len = min(-(|o| - (L_max - L_buf)) / L_buf, 0) * factor: 0 up to L_max - L_buf, then linear
    down to -factor at |o| = L_max. Lengths beyond L_max (not produced by a generator capped at
    L_max) are held at -factor, the DAPO paper's third case.

    Args:
        lengths: (B,) response lengths |o| in tokens.
        max_len: L_max (the generation budget).
        buffer: L_buf, 0 < L_buf <= L_max.
        factor: penalty factor (>= 0).
    Returns:
        (B,) float32 penalties in [-factor, 0].
    """
    if not (isinstance(max_len, int) and max_len > 0):
        raise ValueError(f"algorithm.overlong.max_len must be a positive integer, got {max_len!r}")
    if not (isinstance(buffer, int) and 0 < buffer <= max_len):
        raise ValueError(f"algorithm.overlong.buffer must be an integer in (0, max_len={max_len}], got {buffer!r}")
    if factor < 0:
        raise ValueError(f"algorithm.overlong.factor must be >= 0, got {factor}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (B,), got {tuple(lengths.shape)}")
    if (lengths < 0).any():
        raise ValueError("lengths must be non-negative token counts")
    excess = lengths.to(torch.float32) - float(max_len - buffer)
    penalty = torch.clamp(-excess / float(buffer), min=-1.0, max=0.0)
    return penalty * float(factor)
