"""The import path ``shared/docs/methods.md`` section 8 promises for the public Gram API; nothing
else lives here. The Gram estimators are in :mod:`salt.algo.gram`, the scalar metrics of a Gram
in :mod:`salt.algo.gram_metrics`: new code imports from those."""

from salt.algo.gram import lm_head_gram
from salt.algo.gram_metrics import effective_sample_size, participation_ratio

__all__ = ["effective_sample_size", "lm_head_gram", "participation_ratio"]
