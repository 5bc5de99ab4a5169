"""`make ui`: start `mlflow ui` on a local SQLite store and print the URL of the default study's runs table.

MLflow 3.17 opens an experiment on the GenAI overview (traces, "Detect issues") whatever the
experiment's ``mlflow.experimentKind`` tag says: the UI takes the kind from its sidebar switch
"GenAI / Model training" (the workflow type, localStorage ``mlflow.workflowType``, default GenAI),
which the URL parameter ``workflowType`` overrides for the page. The URL printed here is therefore
``#/experiments/<id>/runs?workflowType=machine_learning``: the runs table in the Model training view
(checked in headless Chromium; a later visit without the parameter is on the GenAI overview again).

    python workflow/scripts/mlflow_ui.py [--store results/mlflow.db] [--experiment NAME] [--port 5000] [--url-only]

The experiment defaults to ``tracking.experiment`` of config/config.yaml; its id is read from the store.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def default_experiment() -> str:
    import yaml

    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tracking"]["experiment"]


def experiment_id(store: Path, name: str) -> str:
    """The id of experiment ``name`` in the SQLite store (read-only); a clear error when absent."""
    if not store.is_file():
        raise SystemExit(f"{store}: no MLflow store here; run the DAG first (make run, or make smoke for "
                         "results/mlflow.db with experiment salt-smoke), or pass --store")
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?", (name,)).fetchall()
        names = [r[0] for r in con.execute("SELECT name FROM experiments ORDER BY experiment_id")]
    finally:
        con.close()
    if not rows:
        raise SystemExit(f"{store}: no experiment named {name!r} (experiments: {', '.join(names) or 'none'}); "
                         "pass --experiment NAME")
    return str(rows[0][0])


def runs_url(host: str, port: int, exp_id: str) -> str:
    return f"http://{host}:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="results/mlflow.db", help="the SQLite file of the MLflow store")
    p.add_argument("--experiment", default=None, help="experiment name (default: tracking.experiment of config/config.yaml)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--url-only", action="store_true", help="print the URL, do not start the UI")
    args = p.parse_args(argv)
    store = Path(args.store)
    url = runs_url(args.host, args.port, experiment_id(store, args.experiment or default_experiment()))
    print(url, flush=True)
    if args.url_only:
        return 0
    print(f"mlflow ui on sqlite:///{store} (Ctrl-C stops it); open the URL above for the runs table", file=sys.stderr, flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    os.execv(str(mlflow), [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", args.host,
                           "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
