"""The smoke DAG end to end in a temporary working directory (what CI runs).

Checks the outputs (figures, tables, report), the MLflow bookkeeping (one parent per study, one
nested run per training job, evaluation metrics on the training runs, figures on the parents), and
that a rerun after losing a job's DONE marker resumes that job alone without a new MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "smoke.yaml"
FIGURES = ("fig1_gram", "fig2_dynamics", "fig3_ablations", "fig4_residual", "fig5_proxy",
           "fig6_alpha_channels", "fig7_comparison")


def run_snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(workdir),
           "--configfile", str(CONFIG), "--cores", "2", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def expected_jobs(cfg: dict) -> list[str]:
    out = []
    for study, s in cfg["studies"].items():
        for m in s["models"]:
            for t in s["tasks"]:
                for meth in s["methods"]:
                    for g in s["group_sizes"]:
                        for seed in s.get("seeds", [0]):
                            out.append(f"{study}/{m}/{t}/{meth}/G{g}/seed{seed}")
    return out


@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path):
    res = run_snakemake(tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    cfg = yaml.safe_load(CONFIG.read_text())
    jobs = expected_jobs(cfg)
    results = tmp_path / cfg["results_dir"]  # every output of the config lives there

    # outputs
    for name in FIGURES:
        for ext in ("png", "pdf"):
            path = results / "figures" / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
    table = (results / "tables" / "results.md").read_text()
    assert "pass@1" in table and "GRPO+SALT" in table
    assert "pass@1" in (results / "main" / "table.md").read_text()
    assert "final train reward" in (results / "budget" / "table.md").read_text()
    html = (results / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) and "<table>" in html
    for job in jobs:
        study, rest = job.split("/", 1)
        run_dir = results / study / "runs" / rest
        assert (run_dir / "DONE").exists() and (run_dir / "final").is_dir()
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        assert len({r["step"] for r in steps}) == cfg["run"]["train"]["steps"]
    proxy = json.loads((results / "proxy" / "toy" / "proxy.json").read_text())
    assert -1.0 <= proxy["pearson"] <= 1.0 and proxy["n_rollouts"] >= 2
    # Figure 1 reads one batch's Gram dump (gram_step_XXXX.npz/.pt); required once the trainer offers it
    from dataclasses import fields

    from salt.train.config import TrainConfig

    if any("gram" in f.name for f in fields(TrainConfig)):
        runs_csv = (results / "tables" / "runs.csv").read_text()
        assert "gram_step_" in runs_csv, "the trainer offers a Gram dump but no run wrote one"

    # MLflow: one parent per study, exactly one nested run per training job, eval metrics attached
    from mlflow.tracking import MlflowClient

    assert cfg["tracking"]["uri"] == "sqlite:///results/mlflow.db"  # shared by every config, outside results_dir
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("salt.parent") == "true"]
    assert sorted(r.data.tags["salt.study"] for r in parents) == sorted(cfg["studies"])
    parent_ids = {r.info.run_id: r.data.tags["salt.study"] for r in parents}
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parent_ids]
    names = sorted(r.info.run_name for r in nested)
    assert names == sorted(jobs), "lost or duplicated training runs"
    for r in nested:
        study = parent_ids[r.data.tags["mlflow.parentRunId"]]
        assert r.info.run_name.startswith(study + "/")
        if cfg["studies"][study]["benchmarks"]:
            assert "eval/toy_test/pass_at_1" in r.data.metrics, sorted(r.data.metrics)
    for p in parents:
        arts = [a.path for a in client.list_artifacts(p.info.run_id, "figures")]
        assert {f"figures/{n}.png" for n in FIGURES} <= set(arts)
        # each study's parent carries its own table and the report
        assert {"table/table.md", "table/table.csv"} <= {a.path for a in client.list_artifacts(p.info.run_id, "table")}
        assert [a.path for a in client.list_artifacts(p.info.run_id, "report")] == ["report/report.html"]
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # `mlflow ui` opens on the runs table
    claims = json.loads((results / "tables" / "claims.json").read_text())
    assert [c["id"] for c in claims["claims"]] == ["a", "b", "c", "d", "e"]
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in claims["claims"])
    assert "<h2>Claims</h2>" in html and "Verdict rule" in html

    # the state an interrupted run leaves: one training job without DONE (its run dir, checkpoints and
    # run.json kept) and nothing downstream of it. The rerun redoes that job alone (resuming it and
    # reusing its MLflow run) and what depends on it; finished jobs are not redone.
    victim = results / "main" / "runs" / "toy" / "toy" / "grpo_salt" / "G2" / "seed0"
    run_id = json.loads((victim / "run.json").read_text())["mlflow_run_id"]
    (victim / "DONE").unlink()
    shutil.rmtree(results / "main" / "eval" / "toy" / "toy" / "grpo_salt" / "G2" / "seed0")
    for downstream in ("tables", "figures"):
        shutil.rmtree(results / downstream)
    (results / "report.html").unlink()
    res = run_snakemake(tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    log = res.stdout + res.stderr
    ran = re.findall(r"(?m)^(?:local)?rule (\w+):", log)
    assert ran.count("train") == 1 and ran.count("evaluate") == 1
    assert not {"warmup_sft", "prepare_data", "mlflow_parent", "make_run_config", "validate_proxy"} & set(ran)
    assert (victim / "DONE").exists()
    assert json.loads((victim / "run.json").read_text())["mlflow_run_id"] == run_id
    runs_after = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs_after) == len(runs)
