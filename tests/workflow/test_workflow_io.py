"""The workflow's glue (workflow/scripts/workflow_io.py): run-config files and the study's MLflow
parent run (idempotent: never duplicated)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml


def _script_module(name: str):
    """A module of workflow/scripts (standalone scripts beside the rules, not a package)."""
    path = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


workflow_io = _script_module("workflow_io")


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
    # the classic ML view (runs table) in `mlflow ui`, not MLflow 3's GenAI view
    assert client.get_experiment(first["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
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


def test_study_artifacts_on_parent_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "experiment": "exp"}
    parents, tables = {}, {}
    for name, kind in (("main", "main"), ("budget", "scaling_budget")):
        parents[name] = str(tmp_path / f"{name}.json")
        workflow_io.ensure_parent_run(tracking, {"name": name, "kind": kind}, parents[name])
        d = tmp_path / name
        d.mkdir()
        (d / "table.md").write_text(f"| {name} |\n")
        (d / "table.csv").write_text("a\n1\n")
        tables[name] = {"md": str(d / "table.md"), "csv": str(d / "table.csv")}
    files = {n: tmp_path / n for n in ("fig2_dynamics.png", "claims.md", "claims.json", "report.html")}
    for f in files.values():
        f.write_text("x")
    manifest = {"runs": [{"study": "main", "kind": "main"}, {"study": "budget", "kind": "scaling_budget"}],
                "parents": parents, "study_tables": tables, "tracking": tracking}
    assert workflow_io.log_study_artifacts(manifest, [files["fig2_dynamics.png"]],
                                           [files["claims.md"], files["claims.json"]], files["report.html"]) == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=json.loads((tmp_path / "main.json").read_text())["tracking_uri"])
    for name in ("main", "budget"):
        run_id = json.loads((tmp_path / f"{name}.json").read_text())["mlflow_run_id"]
        listed = {a.path for d in ("table", "figures", "report", "claims") for a in client.list_artifacts(run_id, d)}
        expected = {"table/table.md", "table/table.csv", "figures/fig2_dynamics.png", "report/report.html"}
        if name == "main":  # the claims are measured on the main study
            expected |= {"claims/claims.md", "claims/claims.json"}
        assert listed == expected
        text = client.download_artifacts(run_id, "table/table.md", str(tmp_path / f"dl_{name}"))
        assert open(text).read() == f"| {name} |\n"  # each study gets its own table
    assert workflow_io.log_study_artifacts({**manifest, "tracking": {"enabled": False}}, [], [], None) == 0
