"""What a training run reads and writes besides its metrics line: checkpoints (save, resume),
sample dumps, the final weights, the ``DONE`` marker and MLflow tracking (:mod:`salt.tracking`).

Checkpoints: one process and DDP write the single-process format (full model, optimizer and
scheduler state dicts); FSDP / DeepSpeed add the sharded optimizer / scheduler state through
``accelerator.save_state`` (:mod:`salt.train.strategy`). Layout in :mod:`salt.train.checkpoint`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salt import metric_names as mn
from salt import tracking
from salt.train.batch import RolloutBatch
from salt.train.checkpoint import (checkpoint_name, latest_checkpoint, list_checkpoints, load_checkpoint,
                                   save_checkpoint, set_rng_state, truncate_jsonl)
from salt.train.collectives import barrier
from salt.train.config import RunConfig, flatten
from salt.train.outputs import run_files
from salt.utils import atomic_write_text, git_commit, write_jsonl_atomic

if TYPE_CHECKING:
    from salt.train.trainer import Trainer


def save_run_checkpoint(t: "Trainer", step: int) -> None:
    """Checkpoint ``step`` of trainer ``t`` (a collective: every rank calls it)."""
    root = t.files["checkpoints"]
    state: dict[str, Any] = {"data_position": t.rollouts.sampler.position, "rollouts_used": t.rollouts_used,
                             "rollouts_generated": t.rollouts.generated, "metrics_lines": t.metrics_lines}
    model_state, opt_state, sched_state, sharded_dir = t.strategy.checkpoint_state(
        root, checkpoint_name(step), t.model, t.optimizer, t.scheduler)
    if sharded_dir is not None:
        state["accelerate_state"] = sharded_dir
    if t.is_main:
        predictor = t.rollouts.predictor
        save_checkpoint(root, step, model_state=model_state, optimizer_state=opt_state, scheduler_state=sched_state,
                        state=state, extra={"predictor": predictor.state_dict() if predictor is not None else None},
                        keep=t.cfg.train.keep_checkpoints)
        if (root / "accelerate").is_dir():  # drop the sharded states of pruned checkpoints
            kept = {p.name for p in list_checkpoints(root)}
            for d in (root / "accelerate").iterdir():
                if d.name not in kept:
                    shutil.rmtree(d, ignore_errors=True)
    barrier()


def resume_run(t: "Trainer") -> int:
    """Restore the newest complete checkpoint into ``t``; returns the number of completed steps."""
    path = latest_checkpoint(t.files["checkpoints"])
    metrics_path = t.files["metrics"]
    if path is None:
        if t.is_main and metrics_path.exists():
            metrics_path.unlink()  # a run killed before its first checkpoint restarts from 0
        return 0
    ck = load_checkpoint(path)
    st = ck["state"]
    t.strategy.load_checkpoint(ck, path, t.model, t.optimizer, t.scheduler)
    set_rng_state(ck["rng"])
    t.rollouts.sampler.position = int(st["data_position"])
    t.rollouts.generated = int(st["rollouts_generated"])
    t.rollouts_used = int(st["rollouts_used"])
    t.metrics_lines = int(st["metrics_lines"])
    if t.rollouts.predictor is not None and ck["extra"].get("predictor") is not None:
        t.rollouts.predictor.load_state_dict(ck["extra"]["predictor"])
    if t.is_main:
        truncate_jsonl(metrics_path, t.metrics_lines)
        print(f"salt train: resuming from checkpoint {path.name} ({st['step']} steps done)", file=sys.stderr)
    return int(st["step"])


def write_samples(out: Path, step: int, batch: RolloutBatch) -> None:
    """``OUT/samples/step_NNNN.jsonl``: every rollout of the step with its prompt, scores and advantage."""
    rows = []
    for i in range(len(batch)):
        g = int(batch.group_ids[i])
        rows.append({
            "step": step, "id": batch.rows[g].get("id"), "group": g, "prompt": batch.prompts[g],
            "completion": batch.texts[i], "answer": batch.rows[g].get("answer"),
            "score": float(batch.scores[i]), "reward": float(batch.rewards[i]),
            "advantage": float(batch.advantages[i]), "finish_reason": batch.finish_reasons[i],
        })
    write_jsonl_atomic(run_files(out)["samples"] / f"step_{step:04d}.jsonl", rows)


def save_final(t: "Trainer") -> None:
    """``OUT/final``: the full weights (gathered under FSDP / ZeRO-3, a collective) and the tokenizer."""
    state_dict = t.strategy.full_state(t.model)
    if not t.is_main:
        return
    final = t.files["final"]
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if state_dict is None:
        t.model.save_pretrained(tmp)
    else:
        t.unwrapped().save_pretrained(tmp, state_dict=state_dict)
    t.tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def write_done(out: Path, summary: dict[str, Any]) -> None:
    """``OUT/DONE`` (the run's summary), written last."""
    atomic_write_text(run_files(out)["done"], json.dumps(summary, indent=1, default=float))


class RunTracking:
    """MLflow logging of one training run through :mod:`salt.tracking`."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg, self.out, self.run = cfg, out, None

    def start(self) -> None:
        cfg = self.cfg
        tags = {"method": cfg.method_name, "G": str(cfg.rollout.group_size), "seed": str(cfg.seed),
                "git_commit": git_commit() or "unknown", "out_dir": str(self.out.resolve())}
        self.run = tracking.start_run(
            cfg.tracking, run_name=cfg.tracking.run_name or self.out.name, out_dir=self.out,
            params=flatten(cfg.to_dict()), tags=tags, parent_run_id=cfg.tracking.parent_run_id,
        )

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        tracking.log_metrics(self.run, {k: v for k, v in metrics.items() if k != mn.STEP}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        files = run_files(self.out)
        tracking.log_artifacts(self.run, files["config"])
        if files["samples"].is_dir():
            tracking.log_artifacts(self.run, files["samples"], "samples")
        tracking.set_tags(self.run, {"final_dir": str(files["final"].resolve())})
        tracking.end_run(self.run)

    def fail(self) -> None:
        tracking.end_run(self.run, "FAILED")
