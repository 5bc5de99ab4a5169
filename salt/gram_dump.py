"""The Gram dump: one mini-batch's LM-head Gram and its coefficients, written by the trainer for
the steps in ``train.dump_gram_steps`` and drawn in Figure 1. This module owns the format: the
file name, the arrays, the writer, the reader and the search aggregation runs.

File: ``<run dir>/gram_step_NNNN.npz`` (NNNN: the 1-based step, 4 digits), a NumPy ``.npz`` with

- ``gram`` (B, B) float64: the Gram of the step's first mini-batch (rows in mini-batch order),
- ``advantages`` (B,) float64: the batch-level coefficients A the Gram's SALT step started from,
- ``advantages_final`` (B,) float64: the coefficients the loss used (A_final with SALT on, else A),
- ``group_ids`` (B,) int64: each rollout's prompt group,
- ``rewards`` (B,) float64: optional, the rollouts' rewards.

Writers: :func:`salt.train.gram.write_gram_dump` (from the trainer's tensors) and the synthetic runs
of the tests, both through :func:`write`. Readers: :func:`latest_informative` (``salt aggregate``:
the ``gram_file`` column of runs.csv) and :func:`read` (Figure 1, :func:`salt.figures.figures.gram_batch`).
NumPy only: no torch is needed to read a dump.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from salt.utils import atomic_write_bytes

PREFIX = "gram_step_"
PATTERN = f"{PREFIX}*.npz"  # glob of a run dir's dumps
_NAME = re.compile(rf"^{PREFIX}(\d+)\.npz$")
ROW_ARRAYS = ("advantages", "advantages_final", "group_ids")  # (B,) each, always written
OPTIONAL_ROW_ARRAYS = ("rewards",)


def path_of(run_dir: str | os.PathLike, step: int) -> Path:
    """The dump of 1-based ``step`` in ``run_dir``."""
    return Path(run_dir) / f"{PREFIX}{int(step):04d}.npz"


def step_of(path: str | os.PathLike) -> int:
    """The 1-based step of a dump's file name."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a Gram dump name ({PREFIX}NNNN.npz)")
    return int(m.group(1))


def write(path: str | os.PathLike, gram: np.ndarray, advantages: np.ndarray, advantages_final: np.ndarray,
          group_ids: np.ndarray, rewards: np.ndarray | None = None) -> Path:
    """Write one dump atomically (the file appears complete or not at all); arrays as the module says."""
    arrays = {"gram": np.asarray(gram, dtype=np.float64), "advantages": np.asarray(advantages, dtype=np.float64),
              "advantages_final": np.asarray(advantages_final, dtype=np.float64),
              "group_ids": np.asarray(group_ids, dtype=np.int64)}
    if rewards is not None:
        arrays["rewards"] = np.asarray(rewards, dtype=np.float64)
    _check(arrays, path)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _check(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    missing = [k for k in ("gram",) + ROW_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: the Gram dump has no {', '.join(missing)} (keys: {sorted(arrays)}); "
                         f"a dump holds gram, {', '.join(ROW_ARRAYS)} (salt/gram_dump.py)")
    K = arrays["gram"]
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{path}: 'gram' must be square (B, B), got shape {K.shape}")
    for key in ROW_ARRAYS + OPTIONAL_ROW_ARRAYS:
        if key in arrays and arrays[key].shape != (K.shape[0],):
            raise ValueError(f"{path}: '{key}' must have shape ({K.shape[0]},) like the Gram, got {arrays[key].shape}")


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One dump's arrays, checked (ValueError naming the file and what is missing or misshaped)."""
    with np.load(path) as z:
        arrays = {k: np.asarray(z[k]) for k in z.files}
    _check(arrays, path)
    return arrays


def latest_informative(run_dir: str | os.PathLike) -> Path | None:
    """The run's latest dump whose batch has a non-zero advantage, or None.

    A batch whose groups all got the same reward has A = 0 everywhere: nothing to draw in Figure 1."""
    dumps = [p for p in Path(run_dir).glob(PATTERN) if _NAME.match(p.name)]
    for path in sorted(dumps, key=step_of, reverse=True):
        with np.load(path) as z:
            if np.any(np.asarray(z["advantages"]) != 0):
                return path
    return None
