"""The public entry points of the LM-head Gram (methods.md 3.1, 3.2).

Per rollout i the feature is the LM-head gradient of the unweighted loss
L_i = -sum_t m_it log softmax(z_it / T)[y_it]:

    g_i = sum_t d_it h_it^T  in R^{V x H},   d_it = m_it (softmax(z_it / T) - e_{y_it})

and the Gram is K = G G^T / B, i.e.

    K_ij = (1/B) sum_{t,s} (d_it . d_js) (h_it . h_js).

Each function checks its inputs and options, builds the token view (:mod:`.tokens`), runs the
registered method (:data:`~salt.algo.gram.base.GRAM_METHODS`: ``dense`` and ``exact`` in
:mod:`.exact`, ``sketch`` in :mod:`.sketch`, ``support`` in :mod:`.support`, ``sparse`` in
:mod:`.sparse`, ``auto`` in :mod:`.auto`) and fills the caller's ``info`` once, from what that
method returns. All functions are pure: no global RNG (sketches use a ``torch.Generator`` seeded
by ``seed``), no logging. Inputs are never modified; gradients never flow (h and z are detached).
"""

from __future__ import annotations

from typing import Any

import torch

from salt.algo.gram.base import FEATURE_METHODS, GRAM_METHODS, GramEstimator
from salt.algo.gram.options import GramOptions, options_of
from salt.algo.gram.tokens import (_compute_dtype, _denominator, _LogitSource, _normalise, logits_source,
                                   streaming_source)
from salt.algo.registry import Registry


def _lookup(registry: Registry, method: str):
    if method not in registry:
        raise ValueError(f"unknown gram method '{method}': choose one of {', '.join(registry.names())}")
    return registry.get(method)


def _estimate(src: _LogitSource, estimate: GramEstimator, opts: GramOptions, normalizer: float | None,
              info: dict | None) -> torch.Tensor:
    """The normalised (B, B) Gram of one method; ``info`` (if a dict) is replaced by the method's."""
    _denominator(src.tok.B, normalizer)  # a bad normalizer fails before the work
    result = estimate(src, opts)
    if info is not None:
        info.clear()
        info.update(result.info)
    return _normalise(result.K, src.tok.B, normalizer, src.tok.dtype)


def gram_from_features(features: torch.Tensor, normalizer: float | None = None, *, method: str | None = None,
                       info: dict | None = None) -> torch.Tensor:
    """K = F F^T / normalizer, symmetrised. features (B, F); normalizer defaults to B. -> (B, B).

    ``method``: the feature method (``dense``, ``sketch``: :data:`~salt.algo.gram.base.FEATURE_METHODS`)
    that made the rows, e.g. all-gathered across ranks; ``info`` then receives what
    :func:`lm_head_gram` with that method reports."""
    if features.dim() != 2:
        raise ValueError(f"features must be (B, F), got shape {tuple(features.shape)}")
    fm = None if method is None else _lookup(FEATURE_METHODS, method)
    dtype = _compute_dtype(features)
    F = features.to(dtype)
    K = _normalise(F @ F.T, F.shape[0], normalizer, dtype)
    if info is not None and fm is not None:
        info.clear()
        info.update(fm.info(method))
    return K


def lm_head_gram(hidden: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                 temperature: float = 1.0, method: str = "exact", *, options: GramOptions | None = None,
                 normalizer: float | None = None, info: dict | None = None, **option_values: Any) -> torch.Tensor:
    """Gram of per-rollout LM-head gradients, K = G G^T / B (methods.md 3.2).

    Args:
        hidden: (B, T, H) final hidden states (input of the LM head); detached here.
        logits: (B, T, V) logits of the same forward pass (not yet divided by T).
        tokens: (B, T) long, the sampled response tokens y.
        mask: (B, T) response mask m (bool or numbers; only mask != 0 positions count and the
            value multiplies d_it).
        temperature: sampling temperature T (> 0); the softmax is of z / T.
        method: a registered Gram method (``GRAM_METHODS``: auto, dense, exact, sketch, sparse,
            support; the module of each says what it computes; ``auto`` chooses among them).
        options: the estimators' options (:class:`~salt.algo.gram.options.GramOptions`, each
            described and its default declared there; default ``DEFAULTS``); each method reads
            only its own.
        **option_values: any of its fields by name (``chunk_size``, ``sketch_dim``,
            ``sketch_hidden_dim``, ``seed``, ``tol``, ``support_eps``, ``tail_dim``,
            ``sparse_samples``), put over ``options`` (:func:`~salt.algo.gram.options.options_of`).
        normalizer: divide by this instead of B (e.g. the global batch size).
        info: if a dict, filled with ``method`` (the backend run), ``err_bound`` (bound on
            ||K_hat - K||_F / ||K||_F: 0 for dense/exact, the support bound, NaN for the
            count sketch, which has none; for ``sparse`` a probabilistic estimate, not a bound),
            ``err_kind`` ("deterministic", "probabilistic" or "none") and, for ``support`` and
            ``sparse``, ``support_size`` (sparse: the union of the S_t), ``tail_rows`` (sparse:
            the sampled ids), ``tail_mass`` (mean over tokens of the mass outside the support);
            ``sparse`` also ``sparse_entries`` (sum of |S_t|) and ``err_parts``.

    Returns:
        (B, B) symmetric, float64 if hidden or logits are float64, else float32.
    """
    estimate = _lookup(GRAM_METHODS, method)
    opts = options_of(options, option_values, "lm_head_gram")
    return _estimate(logits_source(hidden, logits, tokens, mask, temperature), estimate, opts, normalizer, info)


def streaming_lm_head_gram(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                           temperature: float = 1.0, method: str = "support", *, bias: torch.Tensor | None = None,
                           options: GramOptions | None = None, normalizer: float | None = None,
                           info: dict | None = None, **option_values: Any) -> torch.Tensor:
    """:func:`lm_head_gram` from the hidden states and the LM-head weight, never the logits.

    Every backend reads the logits z = h W^T (+ bias) of the valid tokens in blocks: ``exact``
    in its blocks of at most ``chunk_size`` tokens (the streamed blocks are formed again, at
    2 H flops per logit), the candidate pass of ``support`` / ``sparse`` likewise, their columns
    only on the support's and the sampled vocabulary rows (N x (u + r)); ``auto`` counts the
    matmul in its costs (:func:`gram_cost` with ``streaming``). So the N x V logits never exist
    at once. Same result as ``lm_head_gram(hidden, hidden @ weight.T + bias, ...)`` up to
    rounding. hidden (B, T, H), weight (V, H), bias (V,) or None; the options as in
    :func:`lm_head_gram`. -> (B, B).
    """
    estimate = _lookup(GRAM_METHODS, method)
    opts = options_of(options, option_values, "streaming_lm_head_gram")
    src = streaming_source(hidden, weight, bias, tokens, mask, temperature)
    return _estimate(src, estimate, opts, normalizer, info)


def rollout_features(hidden: torch.Tensor, logits: torch.Tensor | None, tokens: torch.Tensor, mask: torch.Tensor,
                     temperature: float = 1.0, method: str = "sketch", *, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, options: GramOptions | None = None,
                     **option_values: Any) -> torch.Tensor:
    """Per-rollout feature rows F (B, F) with K = F F^T / B_total.

    ``sketch``: F = m*q (m*H without a hidden sketch) numbers per rollout, the features whose
    Gram is ``lm_head_gram(..., method="sketch")`` with the same arguments and seed; the
    trainer all-gathers them across ranks (scope=global) and calls :func:`gram_from_features`.
    ``dense``: the full flattened g_i (V*H each); small models only. With ``weight`` (V, H) (and
    ``bias``) instead of ``logits`` (None), the logits are formed block by block from the hidden states.
    The options as in :func:`lm_head_gram` (the sketch reads ``sketch_dim``, ``sketch_hidden_dim``,
    ``seed`` and ``chunk_size``).
    """
    fm = _lookup(FEATURE_METHODS, method)
    if (logits is None) == (weight is None):
        raise ValueError("rollout_features needs exactly one of logits (B, T, V) and weight (V, H)")
    opts = options_of(options, option_values, "rollout_features")
    if weight is not None:
        src = streaming_source(hidden, weight, bias, tokens, mask, temperature)
    else:
        src = logits_source(hidden, logits, tokens, mask, temperature)
    return fm.features(src, opts)
