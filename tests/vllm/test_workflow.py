"""The smoke DAG end to end with vLLM rollouts (``run.rollout.backend: vllm``) and vLLM evaluation
(``compute.eval_backend: vllm``) on the real CPU engine: config/smoke.yaml plus an overlay."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.vllm.conftest import ENGINE
from tests.workflow.test_smoke_dag import CONFIG, REPO, expected_jobs

OVERLAY = {
    # evaluation in the rollouts' float32, without torch.compile of the model: each of the 10 evaluation jobs
    # starts its own engine, and on CPU the compile (C++ codegen) took about 14 s of each job's start
    "compute": {"eval_backend": "vllm", "eval_vllm": {"dtype": "float32", "enforce_eager": True}},
    "run": {"rollout": {"backend": "vllm", "vllm": dict(ENGINE)}},
    # vLLM's CPU attention has no kernel for the tiny model's head size 24: the small toy model (32)
    "models": {"toy": {"sft_set": {"model.size": "small"}}},
}


@pytest.mark.slow
def test_smoke_dag_with_vllm_rollouts_and_evaluation(tmp_path):
    overlay = tmp_path / "vllm.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(CONFIG), str(overlay), "--cores", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    cfg = yaml.safe_load(CONFIG.read_text())
    results = tmp_path / cfg["results_dir"]
    for job in expected_jobs(cfg):
        study, rest = job.split("/", 1)
        run_dir = results / study / "runs" / rest
        assert (run_dir / "DONE").exists() and (run_dir / "final").is_dir(), run_dir
        run_cfg = yaml.safe_load((results / study / "configs" / f"{rest}.yaml").read_text())
        assert run_cfg["rollout"]["backend"] == "vllm", job
    assert (results / "report.html").stat().st_size > 10000
    evals = list((results / "main" / "eval").rglob("problems.jsonl"))
    assert evals, "no evaluation ran"
