"""The model-level coefficients: the LM-head Gram of a mini-batch from its hidden states and the
head weight (gathered over ranks for scope ``global``), SALT's coefficients from it (identity
member: SALT off, the advantages pass through and the diagnostics are logged), and the Gram dumps
of ``train.dump_gram_steps``."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from salt import metric_names as mn
from salt.algo.decomposition import SaltConfig, decompose
from salt.algo.gram import FEATURE_METHODS, gram_from_features, rollout_features, streaming_lm_head_gram
from salt.algo.gram_metrics import group_geometry
from salt.train.collectives import all_gather_rows, world
from salt.utils import atomic_write_bytes

if TYPE_CHECKING:
    from salt.train.update import UpdateSettings


def lm_gram(hidden: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None], tokens: torch.Tensor,
            mask: torch.Tensor, settings: "UpdateSettings", seed: int, gather: bool,
            info: dict | None = None) -> torch.Tensor:
    """LM-head Gram (B, B) of the rows given, gathered over ranks when ``gather`` is set.

    The logits are formed block by block from ``hidden`` (b, T, H) and the head's full weight and
    bias ``head`` (:meth:`salt.train.strategy.GradientStrategy.head_weight`), never stored whole
    (:func:`~salt.algo.gram.streaming_lm_head_gram`). Across ranks the feature methods
    (:data:`~salt.algo.gram.FEATURE_METHODS`: sketch, dense) gather their per-rollout features,
    every other method (``auto`` included, which then decides once, on the gathered batch) the
    hidden states, tokens and mask (N x H numbers, nothing of size N x V). ``info`` (a dict)
    receives the backend's ``method``, ``err_bound`` (relative Frobenius error bound) and ``err_kind``."""
    W, _ = world()
    weight, bias = head
    method = settings.gram
    kw = dict(chunk_size=settings.chunk_size, sketch_dim=settings.sketch_dim, seed=seed)
    if gather and W > 1 and method in FEATURE_METHODS:
        feats = rollout_features(hidden, None, tokens, mask, settings.temperature, method, weight=weight, bias=bias,
                                 **kw)  # (b, F)
        return gram_from_features(all_gather_rows(feats), method=method, info=info)  # (B, F) rows
    if gather and W > 1:  # token-level inputs (support: one shared vocabulary set)
        hidden, tokens, mask = all_gather_rows(hidden), all_gather_rows(tokens), all_gather_rows(mask)
    return streaming_lm_head_gram(hidden, weight, tokens, mask, settings.temperature, method, bias=bias, info=info,
                                  **kw, **settings.gram_options)


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
    """Write ``record`` (from :func:`salt.train.update.update_minibatch`'s ``gram_out``) as an
    ``.npz`` atomically.

    Arrays: ``gram`` (B, B) float64, ``advantages`` (B,), ``advantages_final`` (B,) float64,
    ``group_ids`` (B,) int64 and, when given, ``rewards`` (B,) float64.
    """
    arrays = {k: record[k].numpy() for k in ("gram", "advantages", "advantages_final", "group_ids")}
    if rewards is not None:
        arrays["rewards"] = rewards.detach().to("cpu", torch.float64).numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
