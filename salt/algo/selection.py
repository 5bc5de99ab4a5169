"""PODS rollout down-sampling (methods.md section 4, Xu et al., 2025).

Generate n rollouts per prompt, train on m < n of them. Rules (``SELECTION_RULES``), each
``fn(rewards (n,), m, generator) -> LongTensor (m,)`` of distinct indices in ascending order:

- ``max_variance``: the m-subset of largest unbiased reward variance. For any m-subset, the
  variance is maximised by a set made of the i largest and the m - i smallest rewards, so only
  the m + 1 candidates {top i} U {bottom m - i} are scored (prefix sums over the sorted rewards,
  O(n log n)). Ties (``TIE_RULES``): the top-m set wins any tie it is part of; otherwise
  ``fewest_top`` (the published trainer, the default: it scans i = 0, 1, ... and keeps the first
  maximum) keeps the candidate with the fewest top rewards, ``most_top`` (our variant) the one
  with the most. They differ only for odd m, where {top i} and {top m - i} can tie. Rewards are
  sorted with a stable descending sort, so equal rewards are taken in index order.
- ``max_reward``: the m largest rewards (stable, lower index first among equals).
- ``random``: m indices uniformly without replacement from ``generator``.
"""

from __future__ import annotations

from typing import Optional

import torch

from salt.algo.registry import Registry

SELECTION_RULES: Registry = Registry("selection rule")

# Relative tolerance (of the largest candidate variance) under which two variances count as tied.
_TIE_RTOL = 1e-9
#: How max_variance breaks ties between candidate sets (see the module docstring).
TIE_RULES = ("fewest_top", "most_top")


def _check(rewards: torch.Tensor, m: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (n,), got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= n:
        raise ValueError(
            f"algorithm.selection.m must be an integer in [1, n={n}] (rollouts kept per prompt), got {m!r}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")


@SELECTION_RULES.register("max_variance")
def _max_variance(
    rewards: torch.Tensor, m: int, generator: Optional[torch.Generator] = None, ties: str = "fewest_top"
) -> torch.Tensor:
    if ties not in TIE_RULES:
        raise ValueError(f"algorithm.selection.ties = {ties!r} is invalid; allowed: {', '.join(TIE_RULES)}")
    n = rewards.shape[0]
    r = rewards.detach().to(torch.float64).cpu()
    order = torch.sort(r, descending=True, stable=True).indices  # (n,) positions, largest first
    if m == n:
        return torch.sort(order).values
    if m == 1:
        return order[:1].clone()  # every 1-subset has variance 0: ties keep the top set
    x = r[order]
    x = x - x.mean()  # shift for numerical stability of the sum-of-squares formula
    zero = torch.zeros(1, dtype=torch.float64)
    s1 = torch.cat([zero, torch.cumsum(x, 0)])  # (n+1,) s1[k] = sum of the k largest
    s2 = torch.cat([zero, torch.cumsum(x * x, 0)])  # (n+1,)
    i = torch.arange(m + 1)  # number taken from the top
    j = m - i  # number taken from the bottom
    top1, top2 = s1[i], s2[i]
    bot1, bot2 = s1[n] - s1[n - j], s2[n] - s2[n - j]
    tot1, tot2 = top1 + bot1, top2 + bot2
    var = (tot2 - tot1 * tot1 / m) / (m - 1)  # (m+1,) unbiased variance of each candidate
    best_i = m  # the top-m set first: it wins every tie it is part of
    best = float(var[m])
    tol = _TIE_RTOL * float(var.abs().max())
    scan = range(m) if ties == "fewest_top" else range(m - 1, -1, -1)
    for cand in scan:  # a later candidate must beat the best by more than the tolerance
        if float(var[cand]) > best + tol:
            best, best_i = float(var[cand]), cand
    chosen = torch.cat([order[:best_i], order[n - (m - best_i) :]])
    return torch.sort(chosen).values.to(rewards.device)


@SELECTION_RULES.register("max_reward")
def _max_reward(rewards: torch.Tensor, m: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    order = torch.sort(rewards.detach().cpu(), descending=True, stable=True).indices
    return torch.sort(order[:m]).values.to(rewards.device)


@SELECTION_RULES.register("random")
def _random(rewards: torch.Tensor, m: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if generator is None:
        raise ValueError("selection rule 'random' needs a torch.Generator (seeded from the run seed)")
    perm = torch.randperm(rewards.shape[0], generator=generator)
    return torch.sort(perm[:m]).values.to(rewards.device)


def max_variance_subset(rewards: torch.Tensor, m: int, ties: str = "fewest_top") -> torch.Tensor:
    """Indices of the m rewards with the largest unbiased sample variance (PODS).

    Args:
        rewards: (n,) rewards of one prompt's rollouts.
        m: number to keep, 1 <= m <= n.
        ties: ``fewest_top`` (published) or ``most_top`` (see the module docstring).
    Returns:
        LongTensor (m,) of distinct indices into ``rewards``, ascending.
    """
    _check(rewards, m)
    return _max_variance(rewards, m, ties=ties)


def select_subset(
    rule: str, rewards: torch.Tensor, m: int, generator: Optional[torch.Generator] = None, ties: str = "fewest_top"
) -> torch.Tensor:
    """Apply selection ``rule`` (max_variance | max_reward | random) to one prompt's rewards.

    Args:
        rule: name in ``SELECTION_RULES``.
        rewards: (n,).
        m: number to keep.
        generator: required by ``random``.
        ties: tie rule of ``max_variance`` (ignored by the other rules).
    Returns:
        LongTensor (m,) of distinct ascending indices.
    """
    fn = SELECTION_RULES.get(rule)
    _check(rewards, m)
    return fn(rewards, m, generator, **_rule_kwargs(rule, ties))


def _rule_kwargs(rule: str, ties: str) -> dict:
    return {"ties": ties} if rule == "max_variance" else {}


def select_per_group(
    rule: str,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    m: int,
    generator: Optional[torch.Generator] = None,
    ties: str = "fewest_top",
) -> torch.Tensor:
    """Apply ``rule`` inside every group; groups with at most m rollouts are kept whole.

    Args:
        rewards: (B,).
        group_ids: (B,) integer group ids (any values, any order).
        m: rollouts kept per group.
    Returns:
        LongTensor of kept indices into ``rewards``, ascending (length sum_g min(n_g, m)).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be (B,), got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    SELECTION_RULES.get(rule)  # an unknown rule fails even when no group needs selecting
    kept = []
    for gid in torch.unique(group_ids).tolist():  # ascending group id: deterministic RNG use
        idx = torch.nonzero(group_ids == gid, as_tuple=False).flatten()  # (n_g,)
        if idx.numel() <= m:
            kept.append(idx)
            continue
        kept.append(idx[select_subset(rule, rewards[idx], m, generator, ties).to(idx.device)])
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=rewards.device)
    return torch.sort(torch.cat(kept)).values
