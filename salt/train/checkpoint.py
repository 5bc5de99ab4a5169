"""Atomic, resumable training checkpoints.

Layout of ``DIR/checkpoints/step_NNNNNN/`` (``NNNNNN`` = number of completed steps):

* ``model.pt``       the unwrapped model's ``state_dict``;
* ``optimizer.pt``   optimizer ``state_dict``;  ``scheduler.pt``  LR scheduler ``state_dict``;
* ``rng.pt``         Python, NumPy, torch CPU (and CUDA when present) RNG states;
* ``extra.pt``       picklable trainer objects (the VIP success predictor ...);
* ``state.json``     trainer counters: ``step``, data position, rollouts used, ``metrics_lines``;
* ``COMPLETE``       written last: a directory without it is not a checkpoint.

A checkpoint is written into a hidden temporary directory next to its final place and renamed
into place (``os.replace`` of a directory is atomic on POSIX), so ``kill -9`` at any moment
leaves either the previous set of checkpoints or the new one, never a half-written
``step_*``. Only the last ``keep`` checkpoints are kept.

The trainer derives every random draw of step ``s`` from ``(seed, s)`` (see
``salt.train.stepping.step_seed``), so the RNG states saved here are a second line of defence.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from salt.utils import atomic_write_text

COMPLETE = "COMPLETE"
PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    """Every global RNG state we know of (Python, NumPy, torch CPU, CUDA if available)."""
    import numpy as np

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and (p / COMPLETE).is_file():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (None if there is none)."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and prune to the last ``keep``.

    Args:
        root: ``DIR/checkpoints``.
        step: number of completed training steps (the resume point).
        model_state: ``state_dict`` of the unwrapped model.
        optimizer_state, scheduler_state: their ``state_dict()`` (FSDP / DeepSpeed: a pointer to the
            sharded Accelerate state, ``{"accelerate_state": DIR}``).
        state: JSON-serialisable trainer counters (``step`` is added).
        extra: picklable objects restored verbatim by :func:`load_checkpoint`.
        keep: how many checkpoints to keep (>= 1).
    Returns:
        The final checkpoint directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        torch.save({k: v.detach().cpu() for k, v in model_state.items()}, tmp / "model.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler_state, tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(extra or {}, tmp / "extra.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": int(step)}, indent=1))
        with open(tmp / COMPLETE, "w") as fh:
            fh.write("ok\n")
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and any stale temporary dirs."""
    root = Path(root)
    for p in list_checkpoints(root)[: -max(int(keep), 1)]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint directory into ``{model, optimizer, scheduler, rng, extra, state}``."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"checkpoint '{path}' is incomplete (no {COMPLETE} marker); delete it and resume from an older one")

    def _load(name: str) -> Any:
        return torch.load(path / name, map_location="cpu", weights_only=False)

    return {
        "model": _load("model.pt"),
        "optimizer": _load("optimizer.pt"),
        "scheduler": _load("scheduler.pt"),
        "rng": _load("rng.pt"),
        "extra": _load("extra.pt"),
        "state": json.loads((path / "state.json").read_text()),
    }


def truncate_jsonl(path: str | os.PathLike, lines: int) -> None:
    """Keep the first ``lines`` complete lines of a JSONL file (drops a torn last line too)."""
    path = Path(path)
    if not path.exists():
        if lines:
            raise ValueError(f"{path} is missing but the checkpoint expects {lines} lines; the run dir is damaged")
        return
    with open(path, encoding="utf-8") as fh:
        kept = []
        for line in fh:
            if len(kept) >= lines:
                break
            if not line.endswith("\n"):
                break
            kept.append(line)
    if len(kept) < lines:
        raise ValueError(f"{path} has {len(kept)} complete lines, the checkpoint expects {lines}; the run dir is damaged")
    atomic_write_text(path, "".join(kept))
