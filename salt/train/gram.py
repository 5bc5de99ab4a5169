"""The model-level coefficients: the LM-head Gram of a mini-batch from its hidden states and the
head weight (for scope ``global`` over several ranks: the distributed estimator of
:mod:`salt.algo.gram.distributed`, each rank keeping its tokens), SALT's coefficients from it
(identity member: SALT off, the advantages pass through and the diagnostics are logged), and the
Gram dumps of ``train.dump_gram_steps``."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from salt import gram_dump
from salt import metric_names as mn
from salt.algo.decomposition import SaltConfig, decompose
from salt.algo.gram import FEATURE_METHODS, gram_from_features, rollout_features, streaming_lm_head_gram
from salt.algo.gram.distributed import DISTRIBUTED_METHODS, distributed_lm_head_gram
from salt.algo.gram_metrics import group_geometry
from salt.train.collectives import RankCollectives, all_gather_rows, world

if TYPE_CHECKING:
    from salt.train.update import UpdateSettings


def lm_gram(hidden: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None], tokens: torch.Tensor,
            mask: torch.Tensor, settings: "UpdateSettings", seed: int, gather: bool,
            info: dict | None = None) -> torch.Tensor:
    """LM-head Gram (B, B) of the rows given, over every rank's rows when ``gather`` is set.

    The logits are formed block by block from ``hidden`` (b, T, H) and the head's full weight and
    bias ``head`` (:meth:`salt.train.strategy.GradientStrategy.head_weight`), never stored whole
    (:func:`~salt.algo.gram.streaming_lm_head_gram`). One process (or scope micro): the
    single-process estimators on the rows given, ``auto`` included (it decides once, on this batch).
    Across ranks (``gather`` with several processes) nothing per token leaves a rank:
    ``exact``, ``support`` and ``auto`` run :func:`~salt.algo.gram.distributed.distributed_lm_head_gram`
    (per-rollout feature blocks exchanged; ``auto`` = exact when it is cheap, else support, never
    sparse), the feature methods (:data:`~salt.algo.gram.FEATURE_METHODS`: sketch, dense) gather
    their per-rollout features, and ``sparse`` is refused (its exact part is a token-pair product
    over the whole mini-batch). ``info`` (a dict) receives the backend's ``method`` and ``err_bound``
    (relative Frobenius error bound)."""
    W, _ = world()
    weight, bias = head
    method = settings.gram
    opts = replace(settings.gram_options, seed=seed)
    if not gather or W == 1:
        return streaming_lm_head_gram(hidden, weight, tokens, mask, settings.temperature, method, bias=bias,
                                      options=opts, info=info)
    if method in DISTRIBUTED_METHODS:
        return distributed_lm_head_gram(hidden, weight, tokens, mask, settings.temperature, method, comm=RankCollectives(),
                                        bias=bias, options=opts, info=info)
    if method not in FEATURE_METHODS:
        raise ValueError(sparse_across_ranks(method, W))
    feats = rollout_features(hidden, None, tokens, mask, settings.temperature, method, weight=weight, bias=bias,
                             options=opts)  # (b, F)
    return gram_from_features(all_gather_rows(feats), method=method, info=info)  # (B, F) rows


def sparse_across_ranks(method: str, world_size: int) -> str:
    """The error for a Gram method that has no form across ranks (``sparse``) at scope global."""
    return (f"algorithm.salt.gram: {method} cannot build one Gram over {world_size} processes "
            f"(algorithm.salt.scope: global): its exact part is a token-pair product over the whole "
            f"mini-batch, which would need every rank's hidden states. Use gram: auto or support (the "
            f"distributed support estimator, deterministic error bound), or scope: micro")


def with_err_bound(gm: dict, info: dict) -> dict:
    """gm plus ``geom/gram_err_bound`` (the Gram backend's relative Frobenius error bound: 0 for
    exact/dense; the count sketch has no bound and logs none)."""
    b = info.get("err_bound", float("nan"))
    return {**gm, mn.GEOM_GRAM_ERR_BOUND: float(b)} if math.isfinite(b) else gm


def salt_coefficients(K: torch.Tensor | None, advantages: torch.Tensor, group_ids: torch.Tensor,
                      settings: "UpdateSettings", seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The model-level coefficients: SALT's A_final, or A itself (identity) with diagnostics."""
    if K is None:
        return advantages, {}
    opts = {"seed": seed, **settings.salt_options}
    res = decompose(K, advantages, SaltConfig(**opts))
    metrics = dict(res.metrics)
    metrics.update(group_geometry(K, group_ids, advantages))
    coef = res.advantages.to(advantages.dtype) if settings.salt_enabled else advantages
    return coef, metrics


def gram_record(K: torch.Tensor, positions: torch.Tensor, advantages: torch.Tensor, coef: torch.Tensor,
                group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached CPU copies of one Gram (B, B) and its (B,) row data (for ``train.dump_gram_steps``)."""
    return {
        "gram": K.detach().to("cpu", torch.float64).clone(),
        "positions": positions.detach().cpu().long().clone(),
        "advantages": advantages.detach().to("cpu", torch.float64).clone(),
        "advantages_final": coef.detach().to("cpu", torch.float64).clone(),
        "group_ids": group_ids.detach().cpu().long().clone(),
    }


def write_gram_dump(path: str | os.PathLike, record: dict[str, torch.Tensor], rewards: torch.Tensor | None) -> Path:
    """Write ``record`` (from :func:`salt.train.update.update_minibatch`'s ``gram_out``) and the rows'
    ``rewards`` as a Gram dump (:mod:`salt.gram_dump`: the format, written atomically)."""
    return gram_dump.write(path, record["gram"].numpy(), record["advantages"].numpy(),
                           record["advantages_final"].numpy(), record["group_ids"].numpy(),
                           None if rewards is None else rewards.detach().to("cpu", torch.float64).numpy())
