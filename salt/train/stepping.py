"""What every stage of a step shares: the step's seeds, its named timers, metric means."""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Iterator, Sequence

from salt import metric_names as mn

def step_seed(seed: int, step: int, purpose: str = "") -> int:
    """A 62-bit seed derived from (seed, step, purpose): the only source of randomness of a step."""
    digest = hashlib.sha256(f"salt|{int(seed)}|{int(step)}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


class Timer:
    """Accumulates wall time per stage of a step under ``time/<stage>`` (:data:`salt.metric_names.TIME_STAGES`)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in mn.TIME_STAGES:
            raise ValueError(f"timer stage {stage!r} is not in salt.metric_names.TIME_STAGES; add it there")
        key = mn.time_of(stage)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0


def mean_metrics(items: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise means over dicts (a key missing from a dict does not count against it)."""
    keys = sorted({k for m in items for k in m})
    out = {}
    for k in keys:
        vals = [m[k] for m in items if k in m]
        out[k] = float(sum(vals) / len(vals))
    return out
