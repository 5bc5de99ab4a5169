"""Cost of logging step metrics to MLflow's SQLite store (why `tracking.log_every` exists).

    python benchmarks/mlflow_log_cost.py [--metrics 57] [--steps 50]

Logs ``--steps`` steps of ``--metrics`` metrics (the trainer logs about 57 per step) with
``MlflowClient.log_batch`` (what :func:`salt.tracking.log_metrics` calls) into a fresh SQLite
store in a temporary folder, once one step per call and once ten steps per call, and prints the
mean milliseconds per step and per metric as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure(n_metrics: int, steps: int) -> dict[str, float]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        run_id = client.create_run(client.create_experiment("cost")).info.run_id
        now = int(time.time() * 1000)
        out = {}
        for per_call in (1, 10):
            t0 = time.perf_counter()
            for first in range(0, steps, per_call):
                batch = [Metric(f"m{i}", 1.0, now, per_call * 100_000 + s)
                         for s in range(first, first + per_call) for i in range(n_metrics)]
                for j in range(0, len(batch), 1000):  # MLflow's log_batch limit
                    client.log_batch(run_id, metrics=batch[j:j + 1000])
            dt = time.perf_counter() - t0
            out[f"ms_per_step_{per_call}_steps_per_call"] = 1000 * dt / steps
            out[f"ms_per_metric_{per_call}_steps_per_call"] = 1000 * dt / (steps * n_metrics)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", type=int, default=57)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    print(json.dumps({k: round(v, 3) for k, v in measure(args.metrics, args.steps).items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
