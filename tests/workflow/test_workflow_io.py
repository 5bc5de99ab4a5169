"""Run-config files and the study's MLflow parent run (idempotent: never duplicated)."""

from __future__ import annotations

import json

import yaml

from salt.figures import workflow_io


def test_write_run_config_fills_parent_id(tmp_path):
    parent = tmp_path / "parent.json"
    parent.write_text(json.dumps({"mlflow_run_id": "abc"}))
    run = {"seed": 1, "tracking": {"experiment": "e"}, "algorithm": {"salt": {"enabled": True}}}
    workflow_io.write_run_config(run, parent, tmp_path / "c" / "run.yaml")
    out = yaml.safe_load((tmp_path / "c" / "run.yaml").read_text())
    assert out == {"seed": 1, "tracking": {"experiment": "e", "parent_run_id": "abc"}, "algorithm": {"salt": {"enabled": True}}}
    assert "parent_run_id" not in run["tracking"]  # the params dict is not mutated


def test_parent_run_is_created_once_and_figures_attach(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "experiment": "exp"}
    first = workflow_io.ensure_parent_run(tracking, {"name": "main", "kind": "main"}, tmp_path / "p1.json")
    again = workflow_io.ensure_parent_run(tracking, {"name": "main", "kind": "main"}, tmp_path / "p2.json")
    other = workflow_io.ensure_parent_run(tracking, {"name": "ablation", "kind": "ablation"}, tmp_path / "p3.json")
    assert first["mlflow_run_id"] == again["mlflow_run_id"] != other["mlflow_run_id"]
    assert json.loads((tmp_path / "p2.json").read_text())["mlflow_run_id"] == first["mlflow_run_id"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=first["tracking_uri"])
    runs = client.search_runs([first["experiment_id"]])
    assert sorted(r.data.tags["salt.study"] for r in runs) == ["ablation", "main"]
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"\x89PNG fake")
    assert workflow_io.log_artifacts_to_parents([tmp_path / "p1.json", tmp_path / "p3.json"], [fig]) == 2
    assert [a.path for a in client.list_artifacts(first["mlflow_run_id"], "figures")] == ["figures/fig.png"]
    # artifacts live next to the database, never in ./mlruns
    assert (tmp_path / "db" / "mlartifacts").is_dir()


def test_tracking_disabled_writes_null_parent(tmp_path):
    rec = workflow_io.ensure_parent_run({"enabled": False, "experiment": "x"}, {"name": "s"}, tmp_path / "p.json")
    assert rec["mlflow_run_id"] is None
    assert workflow_io.log_artifacts_to_parents([tmp_path / "p.json"], []) == 0
