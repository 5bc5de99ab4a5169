"""Step-time breakdown of the trainer on the toy model: GRPO vs GRPO+SALT at several group sizes.

    python benchmarks/step_time.py --model results/models/toy/final [--groups 4 8 16 32] [--steps 4]

For every G it runs the real ``salt.train.trainer.Trainer.step`` (P prompts x G rollouts,
``--max-new-tokens`` tokens, tracking and checkpoints off) for ``--steps`` measured steps after
one warm-up step, once as plain GRPO (``algorithm.salt.diagnostics: false``: no Gram at all) and
once with SALT on (exact/auto Gram + decomposition from the training forward). It prints a
markdown table of mean seconds per phase (``time/*`` from metrics) and SALT's added time
(``time/gram + time/decompose`` of the SALT run) as a percentage of the GRPO step, next to the
whole-step difference (which also holds the cost of returning hidden states, and run-to-run noise:
the two runs sample different completions after the first update).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

PHASES = ("generate", "reward", "old_logprobs", "forward", "gram", "decompose", "backward", "optimizer", "step")


def measure(model: str, G: int, salt: bool, steps: int, prompts: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    from salt.train.config import from_dict
    from salt.train.trainer import Trainer

    cfg = from_dict({
        "seed": seed,
        "model": {"path": model},
        "data": {"train": "toy:train", "toy_rows": 500},
        "rollout": {"group_size": G, "prompts_per_step": prompts, "max_new_tokens": max_new_tokens},
        "algorithm": {"salt": {"enabled": salt, "diagnostics": salt}},
        "train": {"steps": steps + 1, "lr": 1e-5, "checkpoint_every": 0, "log_samples_every": 0, "progress": False,
                  "micro_batch_size": 256},
        "tracking": {"enabled": False},
    }).validate()
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp)
        tr.setup()
        rows = [tr.step(s) for s in range(steps + 1)][1:]  # drop the warm-up step
    out = {p: statistics.mean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}
    out["accuracy"] = statistics.mean(r["train/accuracy"] for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="results/models/toy/final", help="toy model dir (salt sft output's final/)")
    ap.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--steps", type=int, default=4, help="measured steps per setting (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if not Path(args.model, "config.json").is_file():
        print(f"--model {args.model} is not a model dir; build it with `salt sft --out results/models/toy`", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = []
    head = "| G | method | " + " | ".join(PHASES) + " | SALT added (gram+decompose) | step vs GRPO |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for G in args.groups:
        grpo = measure(args.model, G, False, args.steps, args.prompts, args.max_new_tokens, args.seed)
        salt = measure(args.model, G, True, args.steps, args.prompts, args.max_new_tokens, args.seed)
        added = salt["gram"] + salt["decompose"]
        pct = 100.0 * added / grpo["step"]
        for name, r in (("GRPO", grpo), ("GRPO+SALT", salt)):
            cells = " | ".join(f"{r[p]:.4f}" for p in PHASES)
            extra = f"{added:.4f} s = {pct:.1f}% of GRPO step" if name == "GRPO+SALT" else ""
            diff = f"{100.0 * (salt['step'] / grpo['step'] - 1):+.1f}%" if name == "GRPO+SALT" else ""
            print(f"| {G} | {name} | {cells} | {extra} | {diff} |", flush=True)
        results.append({"G": G, "grpo": grpo, "salt": salt, "salt_added_s": added, "salt_added_pct": pct})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
