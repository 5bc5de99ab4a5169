"""What the training commands leave in their output folders, named once.

* :func:`warmup_files`: a warm-up SFT (``salt sft --out DIR``). Written by :mod:`salt.train.sft`;
  declared and read by the workflow (:data:`salt.workflow_plan.LAYOUT`: ``warmup_model``,
  ``warmup_metrics``).
* :func:`run_files`: an RL run (``salt train --out DIR``). Written by the trainer
  (:mod:`salt.train.trainer`, :mod:`salt.train.run_io`, :func:`salt.train.config.save_resolved`);
  declared by the workflow (``LAYOUT``: ``run_done``, ``run_model``) and read by ``salt evaluate``
  (the model), ``salt aggregate`` (the metrics), ``salt figures`` (the resolved config) and the GPU
  checks.

Both keep their model in :data:`MODEL_DIR`, so ``salt evaluate --model DIR`` takes either folder.
The MLflow run file next to it (``run.json``) is :data:`salt.tracking.RUN_FILE`. Standard library
only: the Snakefile imports this module while parsing.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR = "final"
"""The trained model (a Hugging Face model dir, tokenizer included) inside an output folder."""


def warmup_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """``final`` (the model dir, tokenizer included) and ``metrics`` (its held-out evaluation,
    metrics.json) in ``out_dir``."""
    out = Path(out_dir)
    return {"final": out / MODEL_DIR, "metrics": out / "metrics.json"}


def run_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files and folders of an RL run in ``out_dir``:

    * ``done``: ``DONE``, the run's summary (JSON), written last: the workflow's only declared output,
      so an interrupted run keeps the rest and resumes;
    * ``final``: the trained model (``final/``, written through ``.final.tmp/``);
    * ``metrics``: ``metrics.jsonl``, one line per step;
    * ``config``: ``config.resolved.yaml``, the run config after every override;
    * ``checkpoints``: ``checkpoints/``, the resumable states;
    * ``samples``: ``samples/``, the rollouts of the logged steps.
    """
    out = Path(out_dir)
    return {"done": out / "DONE", "final": out / MODEL_DIR, "metrics": out / "metrics.jsonl",
            "config": out / "config.resolved.yaml", "checkpoints": out / "checkpoints", "samples": out / "samples"}
