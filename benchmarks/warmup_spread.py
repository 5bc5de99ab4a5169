"""Spread of the default warm-up (and of the RL gain after it) across warm-up seeds.

The bounds of ``tests/train/test_learning.py::test_default_warmup_reaches_partial_accuracy`` and
``tests/train/test_learning.py`` are set from this spread, not from one run: 6,000 SFT steps turn
another CPU's rounding into a different model, about as different as another seed.

    python benchmarks/warmup_spread.py --seeds 0 1 2 3 4 --out results/bench/warmup_spread
    python benchmarks/warmup_spread.py --seeds 0 1 2 --rl --out results/bench/warmup_spread

Per seed: the default warm-up (``salt.train.sft`` defaults, tracking off, ``seed`` = the seed) and
its held-out metrics (greedy pass@1, sampled pass@1 and pass@8 at T = 1); with ``--rl`` also the
learning test's check: held-out sampled pass@1 (300 problems x 8 samples) before and after 300 GRPO
and 300 GRPO+SALT steps (the settings of ``tests/train/test_learning.py``). Each seed's results are
kept in ``OUT/seed_N/`` and reused when the script runs again. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARMUP_KEYS = ("eval/pass@1_greedy", "eval/pass@1_t1", "eval/pass@8_t1", "eval/stop_rate_greedy")


def warmup(seed: int, out: Path) -> dict:
    """The default warm-up with ``seed`` (cached in ``out``): its metrics and wall seconds."""
    from salt.train.sft import run_sft

    done = out / "warmup.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    metrics = run_sft({"seed": seed, "tracking": {"enabled": False}}, out / "sft")
    row = {k: metrics[k] for k in WARMUP_KEYS} | {"seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(row, indent=1))
    return row


def rl_gain(out: Path, salt: bool) -> dict:
    """Held-out sampled pass@1 before / after the learning test's RL run from ``out/sft/final``."""
    from salt.train.outputs import warmup_files
    from tests.train.test_learning import _held_out_pass1, _rl

    name = "grpo_salt" if salt else "grpo"
    done = out / f"rl_{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    warm = warmup_files(out / "sft")["final"]
    before = _held_out_pass1(warm)
    after = _held_out_pass1(_rl(warm, out / f"rl_{name}", salt))
    row = {"before": before, "after": after, "gain": after - before, "seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(row, indent=1))
    return row


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else ""
    mean, sd = statistics.mean(values), statistics.stdev(values)
    return f"{min(values):.3f} - {max(values):.3f} (mean {mean:.3f}, sd {sd:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rl", action="store_true", help="also the RL gain (300 GRPO and 300 GRPO+SALT steps per seed)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "warmup_spread")
    args = ap.parse_args()
    rows = {}
    for seed in args.seeds:
        out = args.out / f"seed_{seed}"
        out.mkdir(parents=True, exist_ok=True)
        rows[seed] = warmup(seed, out)
        if args.rl:
            for name, salt in (("grpo", False), ("grpo_salt", True)):
                rows[seed][f"gain_{name}"] = rl_gain(out, salt)["gain"]
        print(f"seed {seed}: {json.dumps(rows[seed])}", flush=True)
    cols = [*WARMUP_KEYS] + (["gain_grpo", "gain_grpo_salt"] if args.rl else [])
    print("\n| seed | " + " | ".join(cols) + " | warm-up s |")
    print("|---" * (len(cols) + 2) + "|")
    for seed, r in rows.items():
        print(f"| {seed} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['seconds']:.0f} |")
    print("| spread | " + " | ".join(_spread([r[c] for r in rows.values()]) for c in cols) + " | |")


if __name__ == "__main__":
    main()
