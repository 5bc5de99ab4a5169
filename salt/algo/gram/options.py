"""The options every Gram estimator reads, their defaults declared once, and their checks.

:data:`DEFAULTS` is the one declaration of the defaults: the entry points
(:func:`salt.algo.gram.lm_head_gram`, :func:`~salt.algo.gram.streaming_lm_head_gram`,
:func:`~salt.algo.gram.rollout_features`, :func:`~salt.algo.gram.distributed.distributed_lm_head_gram`)
take one :class:`GramOptions` (``options=``) and/or its fields as keywords (:func:`options_of`), and
the run config's ``algorithm.salt.*`` defaults (:class:`salt.train.config.SaltTrainConfig`) read it.
The token chunk and the sketch size are the values training has always used (4096 tokens, 256
buckets). Errors name the run-config key a
value comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class GramOptions:
    """What an estimator may read (each estimator reads only its own).

    chunk_size: tokens per block of ``exact`` (peak extra memory about 1.25 * chunk_size * V
        numbers); the sketch and the candidate pass stream cache-sized blocks of at most this many.
    sketch_dim: m, vocabulary buckets of the count sketch (clamped to V: exact at m >= V).
    sketch_hidden_dim: q, Gaussian projection of the hidden side of the sketch; None keeps all H.
    seed: seeds the sketches and samples; the same seed gives the same projection on every rank.
    tol: ``support``: relative Frobenius error bound to reach; ``auto``: the largest error
        estimate of the sparse Gram it accepts.
    support_eps: ``support`` / ``sparse``: probability above which an id is a position's candidate.
    tail_dim: ``support``: vocabulary rows sampled from the tail (0: drop the tail).
    sparse_samples: ``sparse``: expected number of vocabulary ids sampled for the correction
        (``auto`` skips the sparse estimator at 0).
    """

    chunk_size: int = 4096
    sketch_dim: int = 256
    sketch_hidden_dim: int | None = None
    seed: int = 0
    tol: float = 1e-3
    support_eps: float = 1e-6
    tail_dim: int = 256
    sparse_samples: int = 1024

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size (algorithm.salt.chunk_size) must be >= 1, got {self.chunk_size}")
        if self.sketch_dim < 1:
            raise ValueError(f"sketch_dim (algorithm.salt.sketch_dim) must be >= 1, got {self.sketch_dim}")
        if self.sketch_hidden_dim is not None and self.sketch_hidden_dim < 1:
            raise ValueError(f"sketch_hidden_dim must be >= 1 or None, got {self.sketch_hidden_dim}")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            raise ValueError(f"tol (algorithm.salt.gram_tol) must be a finite number >= 0, got {self.tol}")
        if not (0 < self.support_eps < 1):
            raise ValueError(f"support_eps (algorithm.salt.support_eps) must lie in (0, 1), got {self.support_eps}")
        if self.tail_dim < 0:
            raise ValueError(f"tail_dim (algorithm.salt.tail_dim) must be >= 0, got {self.tail_dim}")
        if self.sparse_samples < 0:
            raise ValueError(f"sparse_samples (algorithm.salt.sparse_samples) must be >= 0, got {self.sparse_samples}")


DEFAULTS = GramOptions()


OPTION_NAMES = tuple(f.name for f in fields(GramOptions))


def options_of(options: GramOptions | None, values: Mapping[str, Any], caller: str) -> GramOptions:
    """The options an entry point runs with: ``options`` (default :data:`DEFAULTS`) with the
    keyword ``values`` it was called with put over it (``lm_head_gram(..., tail_dim=0)``), checked
    once. A name that is not an option raises TypeError naming the valid ones."""
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: the Gram "
                        f"options are {', '.join(OPTION_NAMES)}")
    base = DEFAULTS if options is None else options
    return replace(base, **values) if values else base
