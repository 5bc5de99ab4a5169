"""One RL training job: ``salt train --config RUN.yaml --out DIR [--set key.sub=value ...]``.

:meth:`Trainer.step` is one policy iteration, a short list of stages (pipeline.md). Every stage has
an identity member, so a baseline and a SALT run execute the same code and log the same metrics:

1. ``collect``       draw prompts, allocate rollouts per prompt (uniform | VIP), generate, score,
                     overlong shaping, DAPO dynamic sampling refills (:mod:`salt.train.rollouts`).
2. ``select``        keep all | PODS: keep ``group_size`` of ``selection.n`` per prompt.
3. ``coefficients``  group advantages, then F-GRPO focal weights (identity: weight 1).
4. ``update``        old log-probs (one no-grad forward), then ``ppo_epochs`` x mini-batches of
                     :func:`salt.train.update.update_minibatch`: forward, LM-head Gram from that
                     same forward, SALT coefficients (:mod:`salt.train.gram`), policy loss,
                     backward, clipping, optimizer and scheduler step.
5. ``metrics``       the step's metrics line (rewards, lengths, counters, loss, SALT, timings).

:meth:`Trainer.run` loops over steps with checkpoints, samples, MLflow and the final weights
(:mod:`salt.train.run_io`). Every random draw of step ``s`` is derived from ``(seed, s)``
(:func:`salt.train.stepping.step_seed`), and the data position, optimizer, scheduler and VIP
predictor are checkpointed, so a resumed run repeats an uninterrupted one number for number on CPU.

Data parallelism: ``accelerate launch --config_file config/accelerate/<ddp|fsdp|deepspeed_*>.yaml``
starts N processes; every rank generates its share of the prompts, the rollout batch is
all-gathered, and each optimizer mini-batch is split into contiguous per-rank slices. How the
ranks' gradients meet (none / DDP / FSDP / DeepSpeed) is one :mod:`salt.train.strategy` chosen at
set-up. With ``algorithm.salt.scope: global`` one Gram covers every rank's rollouts; each rank keeps
its tokens and the ranks exchange per-rollout features (:mod:`salt.algo.gram.distributed`; the same
Gram as one process up to rounding, or within ``gram_tol`` where ``auto`` picks differently). DDP and FSDP are tested on CPU (gloo, ``tests/train/test_ddp.py``,
``tests/train/test_fsdp.py``); DeepSpeed only on GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from salt import gram_dump
from salt import metric_names as mn
from salt import rollout
from salt.algo.advantages import compute_advantages
from salt.algo.focal import focal_weights
from salt.algo.selection import select_per_group
from salt.tasks.rewards import check_code_sandbox
from salt.tasks.sandbox import SandboxIsolationError
from salt.train import run_io
from salt.train.batch import RolloutBatch, to_tensors
from salt.train.collectives import world
from salt.train.config import ConfigError, RunConfig, describe, load_run_config, save_resolved
from salt.train.forward import compute_logprobs
from salt.train.gram import sparse_across_ranks, write_gram_dump
from salt.train.outputs import run_files
from salt.train.rollouts import RolloutCollector, gen_batch_prompts, load_rows
from salt.train.stepping import Timer, mean_metrics, step_seed
from salt.train.strategy import (GradientStrategy, make_accelerator, master_dtype, resolve_mixed_precision,
                                 strategy_for)
from salt.train.update import UpdateSettings, make_optimizer, update_minibatch
from salt.utils import InputError, append_jsonl, report_input_error, seed_everything


def check_inputs(cfg: RunConfig) -> dict | None:
    """Fail at start-up, before any model is loaded: every row of the data.train / data.eval files
    is read and validated (:func:`salt.train.rollouts.load_rows`; the first bad row raises
    ``DatasetError`` naming ``FILE:LINE``), and code rows need the code sandbox's isolation or
    ``sandbox.allow_unisolated: true`` (else :class:`salt.tasks.sandbox.SandboxIsolationError`).
    Missing files are left to ``cfg.validate(check_paths=True)``."""
    rows = [row for key, spec in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval))
            if spec and not str(spec).startswith("toy:") and Path(spec).is_file()
            for row in load_rows(spec, cfg, key=key)]
    return check_code_sandbox(rows, cfg.sandbox.allow_unisolated)


class Trainer:
    """Holds the run's state; :meth:`run` is the loop, :meth:`step` one policy iteration."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.files = run_files(self.out)  # DONE, final/, metrics.jsonl, ... (salt.train.outputs)
        self.timer = Timer()
        self.start_step = 0  # steps completed before this process started (maybe_resume)

    # ---------------------------------------------------------------------------- step
    def step(self, step: int) -> dict[str, Any]:
        """One policy iteration; returns the metrics line of this step."""
        seed = step_seed(self.cfg.seed, step)
        seed_everything(seed % (2**31))
        self.timer = Timer()
        t0 = time.perf_counter()
        batch, data_metrics = self.collect(seed)
        batch = self.select(batch, seed)
        batch = self.coefficients(batch)
        self.rollouts_used += len(batch)
        train_metrics = self.update(batch, seed, step)
        self.timer.t[mn.TIME_STEP] = time.perf_counter() - t0
        return self.metrics(step, seed, batch, {**data_metrics, **train_metrics})

    # -------------------------------------------------------------------------- stages
    def collect(self, seed: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Rollouts of this step (:meth:`salt.train.rollouts.RolloutCollector.collect`)."""
        return self.rollouts.collect(seed, self.timer)

    def select(self, batch: RolloutBatch, seed: int) -> RolloutBatch:
        """Keep all (identity) or PODS: keep ``group_size`` of ``n`` per prompt."""
        sel = self.cfg.algorithm.selection
        if sel.rule == "none":
            return batch
        g = torch.Generator().manual_seed(step_seed(seed, 0, "select"))
        idx = select_per_group(sel.rule, batch.rewards, batch.group_ids, self.cfg.rollout.group_size, generator=g,
                               ties=sel.ties)
        return batch.select(idx)

    def coefficients(self, batch: RolloutBatch) -> RolloutBatch:
        """Batch-level coefficients: group advantages, then F-GRPO focal weights (identity: 1)."""
        a = self.cfg.algorithm
        eps = a.advantage_eps if a.advantage_eps is not None else (1e-4 if a.selection.rule != "none" else 1e-6)
        adv = compute_advantages(batch.rewards, batch.group_ids, a.advantage, eps)
        if a.focal.enabled:
            adv = adv * focal_weights(batch.scores, batch.group_ids, a.focal.gamma, a.focal.success_threshold)
        batch.advantages = adv
        return batch

    def mini_batches(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """Row indices of each optimizer mini-batch: the prompts split into equal chunks."""
        n_groups = len(batch.rows)
        k = min(self.cfg.num_mini_batches, n_groups)
        chunks = [c for c in torch.arange(n_groups).tensor_split(k) if c.numel()]
        return [torch.nonzero(torch.isin(batch.group_ids, c)).flatten() for c in chunks]

    def update(self, batch: RolloutBatch, seed: int, step: int | None = None) -> dict[str, float]:
        """Old log-probs, then ``ppo_epochs`` x mini-batches of :func:`update_minibatch`.

        When ``step + 1`` is in ``train.dump_gram_steps``, the first mini-batch's Gram is written
        to ``OUT/gram_step_NNNN.npz`` (:func:`salt.train.gram.write_gram_dump`, rank 0; format: :mod:`salt.gram_dump`)."""
        cfg = self.cfg
        tb = to_tensors(batch, self.pad_id)
        self.backend.sleep()  # vllm: free the KV cache for the training phase (no-op for hf)
        minis = self.mini_batches(batch)
        # One epoch, one mini-batch, one process: the policy that sampled the batch is the one
        # being updated, so its old log-probs are the training forward's own (detached); the
        # separate no-grad forward would recompute the same numbers (tested in test_trainer.py).
        on_policy = cfg.train.ppo_epochs == 1 and len(minis) == 1 and not self.strategy.wrapped
        with self.timer("old_logprobs"):
            dev_tb = tb.to(self.device) if not on_policy or self.ref_model is not None else None  # one copy
            if not on_policy:
                tb.old_logp = compute_logprobs(self.model, dev_tb, cfg.rollout.temperature,
                                               cfg.train.micro_batch_size, cfg.train.head_chunk_size).cpu()
            if self.ref_model is not None:
                tb.ref_logp = compute_logprobs(self.ref_model, dev_tb, cfg.rollout.temperature,
                                               cfg.train.micro_batch_size, cfg.train.head_chunk_size).cpu()
        metrics = []
        dump = step is not None and (step + 1) in cfg.train.dump_gram_steps
        s = cfg.algorithm.salt  # without SALT the Gram only feeds metrics: every k-th step is enough
        diagnostics = s.diagnostics and (step is None or dump or step % s.diagnostics_every == 0)
        for epoch in range(cfg.train.ppo_epochs):
            for i, idx in enumerate(minis):
                gram_out: dict | None = {} if (dump and epoch == 0 and i == 0) else None
                metrics.append(update_minibatch(self.model, self.optimizer, self.scheduler, tb.index(idx),
                                                self.settings, step_seed(seed, epoch * 1000 + i, "gram"), self.timer,
                                                strategy=self.strategy, gram_out=gram_out, diagnostics=diagnostics))
                if gram_out and self.is_main:  # empty when the Gram is off (no SALT, no diagnostics)
                    rows = idx[gram_out["positions"]]  # (B,) rows of the rollout batch
                    write_gram_dump(gram_dump.path_of(self.out, step + 1), gram_out, batch.rewards[rows])
        self.backend.wake_up()
        self.sync_rollout_weights()  # vllm: push the new weights; hf: no-op
        self.on_engine_weights("sync", step)
        return mean_metrics(metrics)

    def metrics(self, step: int, seed: int, batch: RolloutBatch, stage_metrics: dict[str, float]) -> dict[str, Any]:
        """The step's metrics line: the batch trained on, the counters, the stages' metrics, the greedy
        eval every ``train.eval_every`` steps and the timings; rank 0 dumps the samples."""
        lengths = batch.lengths.float()
        metrics = {
            mn.STEP: step + 1,
            mn.REWARD_MEAN: float(batch.rewards.mean()),
            mn.REWARD_STD: float(batch.rewards.std()) if len(batch) > 1 else 0.0,
            mn.TRAIN_ACCURACY: float((batch.scores >= 1.0).float().mean()),
            mn.TRAIN_RESPONSE_LENGTH: float(lengths.mean()),
            mn.TRAIN_RESPONSE_LENGTH_MAX: float(lengths.max()),
            mn.TRAIN_TRUNCATED_FRAC: float(sum(r == "length" for r in batch.finish_reasons) / len(batch)),
            mn.TRAIN_ADVANTAGE_ABS_MEAN: float(batch.advantages.abs().mean()),
            mn.TRAIN_ROLLOUTS: float(self.rollouts_used),
            mn.TRAIN_ROLLOUTS_GENERATED: float(self.rollouts.generated),
            mn.TRAIN_GROUP_SIZE_MEAN: float(len(batch) / max(1, len(batch.rows))),
            **stage_metrics,
        }
        t = self.cfg.train
        if self.eval_rows and t.eval_every and (step + 1) % t.eval_every == 0:
            with self.timer("eval"):
                metrics.update(self.rollouts.greedy_accuracy(self.eval_rows, seed))
        metrics.update(self.timer.t)
        if t.log_samples_every and (step + 1) % t.log_samples_every == 0 and self.is_main:
            run_io.write_samples(self.out, step + 1, batch)
        return metrics

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        done = self.files["done"]
        if done.is_file():
            return json.loads(done.read_text() or "{}")
        check_inputs(cfg)
        self.setup()
        if self.is_main:
            save_resolved(cfg, self.out)
        start = self.maybe_resume()
        tracker = run_io.RunTracking(cfg, self.out) if (cfg.tracking.enabled and self.is_main) else None
        if tracker is not None:
            tracker.start()
        bar = self._progress(start)
        last: dict[str, Any] = {}
        t_run = time.perf_counter()
        failed = True
        try:
            for step in range(start, cfg.train.steps):
                last = self.step(step)
                if self.is_main:
                    append_jsonl(self.files["metrics"], last)
                    self.metrics_lines += 1
                    log_now = (step + 1) % cfg.tracking.log_every == 0 or step + 1 == cfg.train.steps
                    if tracker is not None and log_now:
                        tracker.log_metrics(last, step + 1)
                if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < cfg.train.steps:
                    run_io.save_run_checkpoint(self, step + 1)
                if bar is not None:
                    bar.set_postfix(reward=f"{last[mn.REWARD_MEAN]:.3f}", acc=f"{last[mn.TRAIN_ACCURACY]:.3f}",
                                    step_s=f"{last[mn.TIME_STEP]:.2f}")
                    bar.update(1)
            failed = False
        finally:
            if bar is not None:
                bar.close()
            if failed and tracker is not None:
                tracker.fail()
        summary = {"steps": cfg.train.steps, "out_dir": str(self.out), "wall_time_s": time.perf_counter() - t_run,
                   **{k: v for k, v in last.items() if not k.startswith(mn.TIME)}}
        run_io.save_final(self)
        if self.is_main:
            if tracker is not None:
                tracker.finish(summary)
            run_io.write_done(self.out, summary)
        self.backend.close()
        return summary

    def _progress(self, start: int) -> Any:
        if not (self.cfg.train.progress and self.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=start, file=sys.stderr, desc="salt train", unit="step")

    # ------------------------------------------------------------ set-up, weights, resume
    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        # the scheduler is stepped once per optimizer step on every rank (no num_processes multiple)
        self.accelerator = make_accelerator(resolve_mixed_precision(cfg.model.mixed_precision))
        self.strategy: GradientStrategy = strategy_for(self.accelerator)
        self.device = self.accelerator.device
        if self.device.type == "cpu" and cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.world, self.rank = world()
        self.is_main = self.rank == 0
        self.settings = UpdateSettings.from_config(cfg)
        if self.settings.loss_cfg.beta > 0 and self.strategy.sharded:
            raise ConfigError(
                "algorithm.loss.beta > 0 needs a reference model, which salt keeps replicated on every rank; "
                "under FSDP / DeepSpeed ZeRO-3 it would be loaded sharded (meta / partitioned weights). "
                "Set algorithm.loss.beta: 0, or launch with config/accelerate/ddp.yaml or deepspeed_zero2.yaml")
        if self.strategy.sharded and cfg.rollout.backend == "hf":
            self.check_sharded_hf_generation()
        self.check_distributed_gram()
        dtype = master_dtype(cfg.model.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype)
        if not any(p.is_meta for p in self.model.parameters()):
            # FSDP's cpu_ram_efficient_loading leaves ranks > 0 on the meta device: prepare places them
            self.model = self.model.to(self.device)
        if cfg.model.gradient_checkpointing:  # non-reentrant: required by DDP's no_sync / FSDP
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.config.use_cache = False
        self.ref_model = None
        if self.settings.loss_cfg.beta > 0:  # the reference model exists only when it is used
            self.ref_model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype).to(self.device)
            self.ref_model.eval().requires_grad_(False)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        total_updates = cfg.train.steps * cfg.train.ppo_epochs * cfg.num_mini_batches
        optimizer, scheduler = make_optimizer(self.model, cfg, total_updates)
        self.model, self.optimizer, self.scheduler = self.strategy.prepare(self.model, optimizer, scheduler, cfg.train)
        if cfg.rollout.backend == "vllm" and self.strategy.sharded:
            # weights reach vLLM through full_state_every_rank (every rank), not get_state_dict (rank 0 only)
            self.backend = rollout.make_backend(cfg.rollout, self.unwrapped(), self.tokenizer, None)
        else:
            self.backend = rollout.make_backend(cfg.rollout, self.model, self.tokenizer, self.accelerator)
        self.rollouts = RolloutCollector(cfg, self.backend, self.tokenizer, self.world, self.rank)
        self.eval_rows = (load_rows(cfg.data.eval, cfg, cfg.data.eval_limit, key="data.eval")[: cfg.data.eval_limit]
                          if cfg.data.eval else None)
        self.rollouts_used = 0
        self.metrics_lines = 0

    def check_sharded_hf_generation(self) -> None:
        """Under FSDP / ZeRO-3 every forward is a collective, so with ``rollout.backend: hf`` all
        ranks must issue the same ``generate`` calls (HF's ``synced_gpus`` only evens out lengths)."""
        cfg, W = self.cfg, self.world
        problems = []
        if cfg.rollout.prompts_per_step % W:
            problems.append(f"rollout.prompts_per_step = {cfg.rollout.prompts_per_step} is not divisible by the "
                            f"{W} processes")
        elif gen_batch_prompts(cfg) % W:
            problems.append(f"ceil(algorithm.dynamic_sampling.gen_batch_factor * prompts_per_step) = "
                            f"{gen_batch_prompts(cfg)} is not divisible by the {W} processes")
        if cfg.algorithm.vip.enabled:
            problems.append("algorithm.vip.enabled gives the ranks different rollout counts")
        if cfg.data.eval and cfg.train.eval_every and cfg.data.eval_limit % W:
            problems.append(f"data.eval_limit = {cfg.data.eval_limit} is not divisible by the {W} processes")
        if problems:
            raise ConfigError("rollout.backend: hf under FSDP / DeepSpeed ZeRO-3 needs the same generate calls on "
                              "every rank: " + "; ".join(problems) + ". Fix those keys or use rollout.backend: vllm")

    def check_distributed_gram(self) -> None:
        """Scope ``global`` over several processes builds its Gram without moving tokens between
        ranks (:mod:`salt.algo.gram.distributed`); the ``sparse`` Gram has no such form."""
        s = self.settings
        if self.world > 1 and s.scope == "global" and s.gram == "sparse" and (s.salt_enabled or s.salt_diagnostics):
            raise ConfigError(sparse_across_ranks(s.gram, self.world))

    def unwrapped(self) -> Any:
        """The bare ``PreTrainedModel`` (generation, ``save_pretrained``)."""
        return self.strategy.unwrap(self.model)

    def sync_rollout_weights(self) -> None:
        """Push the current weights to the rollout engine (vLLM; a no-op reference update for hf).
        Under FSDP / ZeRO-3 every rank's colocated vLLM engine gets the FULL weights, gathered on
        every rank and handed over as a plain state dict."""
        if self.cfg.rollout.backend == "vllm" and self.strategy.sharded:
            self.backend.sync_weights(self.strategy.full_state_every_rank(self.model))
        else:
            self.backend.sync_weights(self.model)

    def maybe_resume(self) -> int:
        """Restore the newest complete checkpoint; returns (and keeps as ``start_step``) the number of
        completed steps."""
        start = run_io.resume_run(self)
        if start:
            self.sync_rollout_weights()
        self.start_step = start
        self.on_engine_weights("resume", start)
        return start

    def on_engine_weights(self, kind: str, step: int | None) -> None:
        """Hook (no-op): the rollout engine now holds the trainer's current weights. ``kind``
        ``"resume"``: once, after set-up and resume (``step`` = completed steps; the starting or
        restored weights); ``"sync"``: after each update's push (``step`` = the step's index). An
        observer such as :func:`salt.train.engine_probe.probe_trainer_cls` overrides this alone, so
        that the loop, the update and the push it watches are the trainer's own."""


def train(cfg: RunConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume, or skip when ``DIR/DONE`` exists) one training job; returns its summary."""
    check_inputs(cfg)  # first: bad rows, or a code task without isolation, stop before anything else
    cfg.validate(check_paths=True)  # model.path and the data files exist
    return Trainer(cfg, out_dir).run()


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="salt train", description="One RL training run from a run config.")
    ap.add_argument("--config", help="run config YAML (see config/examples/)")
    ap.add_argument("--out", help="output dir (metrics.jsonl, samples/, checkpoints/, final/, DONE); "
                                  "default results/runs/<config file name>")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set rollout.group_size=16 (repeatable)")
    ap.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = ap.parse_args(argv)
    if args.help_config:
        print(describe())
        return 0
    if not args.config:
        ap.error("--config is required (see config/examples/)")
    out = args.out or str(Path("results") / "runs" / Path(args.config).stem)
    try:
        cfg = load_run_config(args.config, args.overrides, check_paths=False)
        check_inputs(cfg)
        cfg.validate(check_paths=True)
    except ConfigError as exc:
        return report_input_error("salt train: config error", exc)
    except (InputError, SandboxIsolationError) as exc:  # a bad data row (FILE:LINE), no sandbox isolation
        return report_input_error("salt train", exc)
    summary = Trainer(cfg, out).run()
    print(json.dumps({k: summary[k] for k in ("steps", "out_dir", "wall_time_s") if k in summary}))
    return 0
