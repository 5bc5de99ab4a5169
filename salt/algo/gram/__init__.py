"""The LM-head Gram of per-rollout gradients (methods.md 3.1, 3.2), one module per estimator.

    options.py     GramOptions: every estimator option, its default declared once (DEFAULTS,
                   read by the run config) and checked
    base.py        GRAM_METHODS / FEATURE_METHODS registries, GramResult, register_features
    tokens.py      input checks, the token view (_Tokens), the logits (_LogitSource), normalising
    exact.py       dense (every g_i) and exact (token pairs)
    sketch.py      the count sketch (unbiased, no error bound)
    candidates.py  the candidate pass shared by support and sparse
    support.py     exact on a shared support, sampled tail, deterministic error bound
    sparse.py      exact on each token's candidates, sampled correction, probabilistic estimate
    auto.py        the cost model and ``auto``: the one place a backend is chosen
    api.py         lm_head_gram, streaming_lm_head_gram, rollout_features, gram_from_features

A new estimator is one module defining ``estimate(src, opts) -> GramResult`` registered with
``@GRAM_METHODS.register("name")`` (or, for per-rollout feature rows, ``@register_features``)
and one import line below. The scalar metrics of a Gram are in :mod:`salt.algo.gram_metrics`.
"""

from salt.algo.gram import auto, exact, sketch, sparse, support  # noqa: F401  (each registers its methods)
from salt.algo.gram.api import gram_from_features, lm_head_gram, rollout_features, streaming_lm_head_gram
from salt.algo.gram.auto import ELEMENTWISE_FLOP_WEIGHT, choose_method, gram_cost
from salt.algo.gram.base import FEATURE_METHODS, GRAM_METHODS, GramResult, register_features
from salt.algo.gram.options import DEFAULTS, GramOptions

__all__ = [
    "DEFAULTS", "ELEMENTWISE_FLOP_WEIGHT", "FEATURE_METHODS", "GRAM_METHODS", "GramOptions", "GramResult",
    "choose_method", "gram_cost", "gram_from_features", "lm_head_gram", "register_features", "rollout_features",
    "streaming_lm_head_gram",
]
