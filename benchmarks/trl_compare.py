"""Throughput against TRL's ``GRPOTrainer`` on the same tiny model, prompts, G and generation length.

TRL lives only in the benchmark's own environment, never in the project's dependencies. Without
touching the project's torch, e.g.:

    pip download --no-deps trl -d /tmp/trl_dl
    pip install --no-deps --target /tmp/trl_env /tmp/trl_dl/trl-*.whl
    PYTHONPATH=/tmp/trl_env python benchmarks/trl_compare.py --model results/models/toy/final

Each trainer runs in its own subprocess (so that peak memory, ``ru_maxrss``, is its own): one
warm-up step, then ``--steps`` timed optimizer steps of P prompts x G rollouts with the same
settings (GRPO loss, beta 0, one PPO epoch, one optimizer step per generation batch, AdamW,
temperature 1, top-p 1, ``--max-new-tokens``, CPU float32, one torch thread, toy exact-match
reward through ``salt.tasks.rewards.score_batch``). Prints steps/s and peak RSS side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _rows(n: int) -> list[dict]:
    from salt.tasks.toy import generate_problems

    return generate_problems(n, "train", seed=0)


def run_salt(args: argparse.Namespace, salt: bool) -> dict:
    import torch

    from salt.train.config import from_dict
    from salt.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = from_dict({
        "seed": 0, "model": {"path": args.model},
        "data": {"train": "toy:train", "toy_rows": 500},
        "rollout": {"group_size": args.group_size, "prompts_per_step": args.prompts, "max_new_tokens": args.max_new_tokens},
        "algorithm": {"loss": {"name": "grpo"}, "salt": {"enabled": salt, "diagnostics": salt}},
        "train": {"steps": args.steps + 1, "lr": 1e-5, "checkpoint_every": 0, "log_samples_every": 0,
                  "progress": False, "micro_batch_size": args.prompts * args.group_size},
        "tracking": {"enabled": False},
    }).validate()
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp)
        tr.setup()
        tr.step(0)  # warm-up
        t0 = time.perf_counter()
        for s in range(1, args.steps + 1):
            tr.step(s)
        dt = time.perf_counter() - t0
    return {"steps_per_s": args.steps / dt, "seconds": dt}


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from salt.tasks.rewards import score_batch

    torch.set_num_threads(1)
    rows = _rows(500)
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"], "task": "toy", "id": r["id"]} for r in rows])

    def reward(prompts, completions, answer, task, id, **kw):  # noqa: A002 (dataset column names)
        rs = [{"task": t, "answer": a, "id": i} for t, a, i in zip(task, answer, id)]
        return [r.reward for r in score_batch(rs, completions)]

    B = args.prompts * args.group_size
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=B, num_generations=args.group_size,
            generation_batch_size=B, gradient_accumulation_steps=1, num_iterations=1,
            max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
            loss_type="grpo", learning_rate=1e-5, max_steps=args.steps + 1, use_cpu=True, bf16=False,
            report_to=[], logging_steps=1000, save_strategy="no", disable_tqdm=True, seed=0,
            dataloader_num_workers=0,
        )
        tok = AutoTokenizer.from_pretrained(args.model)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        times: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):
                times.append(time.perf_counter())

        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()])
        trainer.train()
    dt = times[-1] - times[0]  # steps 2..N+1, after the warm-up step
    return {"steps_per_s": args.steps / dt, "seconds": dt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="results/models/toy/final")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--which", choices=["salt-grpo", "salt-salt", "trl"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.which:  # child process: run one trainer, report its numbers and peak memory
        res = run_trl(args) if args.which == "trl" else run_salt(args, args.which == "salt-salt")
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    for which, label in (("salt-grpo", "salt GRPO"), ("salt-salt", "salt GRPO+SALT"), ("trl", "TRL GRPOTrainer")):
        cmd = [sys.executable, __file__, "--which", which] + [a for a in (argv or sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{label} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append((label, json.loads(line[0][7:])))
    print(f"P={args.prompts} G={args.group_size} max_new_tokens={args.max_new_tokens} steps={args.steps}\n")
    print("| trainer | steps/s | s per step | peak RSS (MB) |")
    print("|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['steps_per_s']:.2f} | {1 / r['steps_per_s']:.3f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
