"""The registries of Gram methods and what an estimator returns.

A Gram method is a function ``estimate(src, opts) -> GramResult`` registered under its name in
:data:`GRAM_METHODS` (the run config's ``algorithm.salt.gram`` choices are its names):

    @GRAM_METHODS.register("exact")
    def exact(src: LogitSource, opts: GramOptions) -> GramResult: ...

``src`` (:class:`~salt.algo.gram.tokens._LogitSource`) gives the valid tokens and their softmax
block by block, ``opts`` (:class:`~salt.algo.gram.options.GramOptions`) the options; the result is
the unnormalised (B, B) Gram sum_ij <g_i, g_j> and the complete ``info`` dict the caller receives
(``method``: the backend that ran, ``err_bound``, ``err_kind``, estimator extras). A method whose
Gram is F F^T of per-rollout feature rows registers those with :func:`register_features` instead:
it is then a Gram method and a :data:`FEATURE_METHODS` entry, and data-parallel ranks all-gather
its features (B x F numbers) instead of the token-level inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from salt.algo.registry import Registry

if TYPE_CHECKING:
    from salt.algo.gram.options import GramOptions
    from salt.algo.gram.tokens import _LogitSource


class GramResult(NamedTuple):
    """K: the unnormalised (B, B) Gram; info: what the caller's ``info`` dict receives."""

    K: torch.Tensor
    info: dict


GramEstimator = Callable[["_LogitSource", "GramOptions"], GramResult]
FeatureFn = Callable[["_LogitSource", "GramOptions"], torch.Tensor]

GRAM_METHODS: Registry[GramEstimator] = Registry("gram method")


@dataclass(frozen=True)
class FeatureMethod:
    """Per-rollout feature rows F (B, F) with K = F F^T, and what their Gram's ``err_bound`` is."""

    features: FeatureFn
    err_bound: float  # 0.0: exact; NaN: no bound exists
    err_kind: str  # "deterministic" | "none"

    def info(self, name: str) -> dict:
        return {"method": name, "err_bound": self.err_bound, "err_kind": self.err_kind}


FEATURE_METHODS: Registry[FeatureMethod] = Registry("rollout feature method")


def register_features(name: str, *, err_bound: float, err_kind: str) -> Callable[[FeatureFn], FeatureFn]:
    """Registers ``features(src, opts) -> F`` in :data:`FEATURE_METHODS` and its Gram F F^T in
    :data:`GRAM_METHODS`, both under ``name``."""

    def decorator(features: FeatureFn) -> FeatureFn:
        method = FEATURE_METHODS.register(name)(FeatureMethod(features, err_bound, err_kind))

        def estimate(src: "_LogitSource", opts: "GramOptions") -> GramResult:
            F = features(src, opts)
            return GramResult(F @ F.T, method.info(name))

        estimate.__doc__ = f"The Gram F F^T of :func:`{features.__name__}`."
        GRAM_METHODS.register(name)(estimate)
        return features

    return decorator


def exact_info(method: str = "exact") -> dict:
    """``info`` of a Gram with no error (err_bound 0)."""
    return {"method": method, "err_bound": 0.0, "err_kind": "deterministic"}
