"""What a warm-up SFT (``salt sft --out DIR``) leaves in its output folder, named once: the writer
(:mod:`salt.train.sft`) and the workflow that declares and reads the files
(:data:`salt.workflow_plan.LAYOUT`: ``warmup_model``, ``warmup_metrics``) both call
:func:`warmup_files`. Standard library only: the Snakefile imports it while parsing."""

from __future__ import annotations

import os
from pathlib import Path


def warmup_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """``final`` (the model dir, tokenizer included) and ``metrics`` (its held-out evaluation,
    metrics.json) in ``out_dir``."""
    out = Path(out_dir)
    return {"final": out / "final", "metrics": out / "metrics.json"}
