"""The smoke DAG end to end in a temporary working directory (what CI runs).

The DAG runs once per module (fixture ``smoke``); each test leaves the results complete again.
Checks the outputs (figures, tables, report), the MLflow bookkeeping (one parent per study, one
nested run per training job, evaluation metrics on the training runs, figures on the parents), that
every output the README promises comes back when deleted (and nothing else reruns), and that a
rerun after losing a job's DONE marker resumes that job alone without a new MLflow run.
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
# What the README promises (section "Quick start"): the tables, every figure (PNG and PDF), the report.
PROMISED_TABLES = ("results.md", "results.csv", "claims.md", "claims.json", "runs.csv", "steps.csv", "evals.csv",
                   "warmups.md", "warmups.csv", "replication.md", "replication.json")


def run_snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(workdir),
           "--configfile", str(CONFIG), "--cores", "2", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def expected_jobs(cfg: dict) -> list[str]:
    """``study/model/task/method/G<g>/seed<s>`` of every training job (the workflow's own plan)."""
    from salt.workflow_config import load_workflow_config
    from salt.workflow_plan import Plan

    return ["{study}/{model}/{task}/{method}/G{G}/seed{seed}".format(**job)
            for job in Plan(load_workflow_config(cfg)).jobs]


def figure_names() -> tuple[str, ...]:
    from salt.figures.registry import FIGURES  # the one table (the workflow reads it too)

    return FIGURES


def promised_outputs(results: Path) -> list[Path]:
    return ([results / "tables" / name for name in PROMISED_TABLES]
            + [results / "figures" / f"{n}.{ext}" for n in figure_names() for ext in ("png", "pdf")]
            + [results / "report.html"])


def planned_jobs(workdir: Path) -> dict[str, str]:
    """``{rule: reason}`` of the jobs a dry run plans (``{}`` when there is nothing to be done)."""
    res = run_snakemake(workdir, "-n")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    if "Nothing to be done" in res.stdout + res.stderr:
        return {}
    jobs = {}
    for block in re.split(r"(?m)^(?=(?:local)?rule \w+:)", res.stdout + "\n" + res.stderr):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            reason = re.search(r"(?m)^\s+reason: (.*)$", block)
            jobs[m.group(1)] = reason.group(1) if reason else ""
    assert jobs, res.stdout[-4000:]
    return jobs


def missing_files(reason: str) -> list[str]:
    """The files a job's reason names as missing outputs, sorted (``[]`` when it names none)."""
    m = re.fullmatch(r"Missing output files: (.*?)(?:; .*)?", reason)
    return sorted(m.group(1).split(", ")) if m else []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of the smoke DAG: (working dir, results dir, config). SALT_SMOKE_DIR=DIR runs it in DIR
    instead of a fresh folder, so a finished (or interrupted) earlier run there is reused (completed)."""
    workdir = Path(os.environ["SALT_SMOKE_DIR"]) if os.environ.get("SALT_SMOKE_DIR") else tmp_path_factory.mktemp("smoke")
    res = run_snakemake(workdir)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    cfg = yaml.safe_load(CONFIG.read_text())
    return workdir, workdir / cfg["results_dir"], cfg  # every output of the config lives in results_dir


@pytest.mark.slow
def test_smoke_dag_end_to_end(smoke):
    tmp_path, results, cfg = smoke
    jobs = expected_jobs(cfg)
    FIGURES = figure_names()

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
    # Figure 1 reads one batch's Gram dump (salt/gram_dump.py; smoke.yaml dumps steps 1 and 3)
    from salt import gram_dump

    assert gram_dump.PREFIX in (results / "tables" / "runs.csv").read_text(), "no run wrote a Gram dump"

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


# The producer of each promised file and what a rerun must redo after losing it (the downstream
# jobs rerun because their inputs are rewritten; nothing upstream of the producer runs).
PRODUCER = {"tables": ["aggregate", "replication", "figures", "report"], "replication": ["replication", "report"],
            "figures": ["figures", "report"], "report.html": ["report"]}


def producer_of(rel_to_results: Path) -> list[str]:
    first = rel_to_results.parts[0]
    return PRODUCER["replication" if rel_to_results.name.startswith("replication.") else first]


@pytest.mark.slow
def test_every_promised_output_is_rebuilt(smoke, tmp_path):
    workdir, results, _ = smoke
    assert planned_jobs(workdir) == {}
    # the promised files, one producer at a time: with all of one producer's promised files missing, a
    # plain (dry) rerun plans that producer, its reason naming exactly those files (so each of them is
    # tracked as that producer's output), and what must be redone downstream; nothing upstream of it.
    # (One dry run per producer, not per file: the same check, without 30 Snakemake starts.)
    by_producer: dict[tuple[str, ...], list[Path]] = {}
    for path in promised_outputs(results):
        by_producer.setdefault(tuple(producer_of(path.relative_to(results))), []).append(path)
    assert len(by_producer) == len(PRODUCER)
    for rules, paths in by_producer.items():
        aside = {path: tmp_path / "aside" / path.relative_to(results) for path in paths}
        for path, to in aside.items():
            to.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, to)
        try:
            plan = planned_jobs(workdir)
        finally:
            for path, to in aside.items():
                os.replace(to, path)  # keeps its mtime: the results are complete again
        assert sorted(plan) == sorted([*rules, "all"]), (rules, plan)
        assert missing_files(plan[rules[0]]) == sorted(str(p.relative_to(workdir)) for p in paths), (rules, plan)
    # the exact case, rebuilt for real: both files come back, no training or evaluation reruns
    lost = [results / "tables" / "results.csv", results / "tables" / "claims.md"]
    before = {p: p.read_bytes() for p in lost}
    for p in lost:
        p.unlink()
    res = run_snakemake(workdir)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert sorted(set(re.findall(r"(?m)^(?:local)?rule (\w+):", res.stdout + res.stderr))) == [
        "aggregate", "all", "figures", "replication", "report"]
    assert {p: p.read_bytes() for p in lost} == before  # the same bytes: deterministic tables and claims
    # a lost figure PDF alone: the figures job redraws it
    pdf = results / "figures" / f"{figure_names()[2]}.pdf"
    pdf.unlink()
    res = run_snakemake(workdir)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert pdf.stat().st_size > 5000
    assert planned_jobs(workdir) == {}


@pytest.mark.slow
def test_interrupted_job_resumes_alone(smoke):
    tmp_path, results, cfg = smoke
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg["tracking"]["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)

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
