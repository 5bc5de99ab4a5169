"""Wall time of the code sandbox per program, in each mode available here.

::

    python benchmarks/sandbox_overhead.py [--n 40] [--workers 4]

Modes: ``bwrap`` (when bubblewrap works) and ``fallback`` (``SALT_SANDBOX_NO_BWRAP=1`` plus the
opt-in). For each: the mean and median seconds of ``--n`` trivial programs run one after the
other, and the total seconds for HumanEval's 164 canonical solutions with ``--workers``
sandboxes at a time (all must pass). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salt.tasks import sandbox  # noqa: E402
from salt.tasks.datasets import humaneval_data_path  # noqa: E402


def measure(n: int, workers: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        res = sandbox.run_tests("def f(x):\n    return x + 1\n", ["assert f(1) == 2"], timeout_s=10)
        times.append(time.perf_counter() - t0)
        assert res.passed, res.stderr
    with gzip.open(humaneval_data_path(), "rt", encoding="utf-8") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    jobs = [{"program": p["prompt"] + p["canonical_solution"], "entry_point": p["entry_point"], "timeout_s": 20,
             "tests": [p["test"] + f"\ncheck({p['entry_point']})\n"]} for p in problems]
    t0 = time.perf_counter()
    results = sandbox.run_tests_many(jobs, max_workers=workers)
    total = time.perf_counter() - t0
    assert all(r.passed for r in results)
    return {"mean": statistics.mean(times), "median": statistics.median(times), "humaneval": total,
            "python": sandbox.capabilities()["python"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    rows = []
    if sandbox.capabilities(refresh=True)["bwrap"]:
        rows.append(("bwrap", measure(args.n, args.workers)))
    os.environ[sandbox.NO_BWRAP_ENV] = "1"
    sandbox.allow_unisolated(True)
    sandbox.capabilities(refresh=True)
    rows.append(("fallback (opted in)", measure(args.n, args.workers)))
    print(f"| mode | trivial program: mean s | median s | HumanEval 164 canonical, {args.workers} workers: total s | interpreter |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['mean']:.3f} | {r['median']:.3f} | {r['humaneval']:.1f} | {r['python']} |")


if __name__ == "__main__":
    main()
