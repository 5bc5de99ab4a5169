"""The code sandbox fails closed: without bubblewrap (forced with SALT_SANDBOX_NO_BWRAP=1) and
without the opt-in, ``run_tests``, ``salt evaluate`` on a code benchmark and ``salt train`` on a
code task stop before running anything, with one message naming what is missing and the two ways
out; the opt-in (config key, CLI flag, environment variable) is recorded in the resolved config,
the MLflow params, the evaluation metrics and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salt.tasks import sandbox
from salt.tasks.sandbox import SandboxIsolationError, run_tests
from tests.tasks.conftest import check_clean
from tests.eval.test_evaluate import trained_dir  # noqa: F401 (a fixture: tiny model + MLflow run)

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "mbpp_sanitized_sample.jsonl"
WAYS_OUT = ("apt-get install bubblewrap", "sandbox.allow_unisolated: true", "--allow-unisolated",
            "SALT_SANDBOX_ALLOW_UNISOLATED=1")


@pytest.fixture
def no_bwrap(sandbox_modes, monkeypatch):
    """The fallback's capabilities, without any opt-in."""
    monkeypatch.setattr(sandbox, "_CAPS", sandbox_modes["fallback"])
    monkeypatch.setenv(sandbox.NO_BWRAP_ENV, "1")
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_ALLOW_UNISOLATED", False)
    return sandbox_modes["fallback"]


@pytest.fixture
def nothing_starts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0]!r}"[:200])

    monkeypatch.setattr(sandbox.subprocess, "Popen", refuse)


@pytest.fixture(scope="module")
def mbpp_data(tmp_path_factory):
    from salt.tasks.datasets import prepare

    out = tmp_path_factory.mktemp("mbpp")
    prepare("mbpp", out, source=str(FIX))
    return out / "data.jsonl"


def test_run_tests_refuses_without_isolation_or_opt_in(no_bwrap, nothing_starts):
    from salt.tasks.rewards import score_batch

    assert no_bwrap["missing"] and not no_bwrap["bwrap"]
    with pytest.raises(SandboxIsolationError) as err:
        run_tests("def f():\n    return 1\n", ["assert f() == 1"])
    message = str(err.value)
    assert "isolation missing" in message and "SALT_SANDBOX_NO_BWRAP" in message
    for way in WAYS_OUT:
        assert way in message
    with pytest.raises(SandboxIsolationError):
        sandbox.run_tests_many([{"program": "x = 1", "tests": ["assert x == 1"]}] * 3)
    row = {"id": "c", "task": "code", "tests": ["assert f() == 1"], "entry_point": "f"}
    with pytest.raises(SandboxIsolationError):
        score_batch([row], ["```python\ndef f():\n    return 1\n```"])
    with pytest.raises(SandboxIsolationError):
        sandbox.require_isolation()


def test_the_opt_ins(no_bwrap, monkeypatch):
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")  # library use
    res = run_tests("def f():\n    return 1\n", ["assert f() == 1"])
    assert res.passed and "unisolated-opt-in" in res.isolation and "bwrap" not in res.isolation
    check_clean(res)
    monkeypatch.delenv(sandbox.ALLOW_ENV)
    with pytest.raises(SandboxIsolationError):
        run_tests("x = 1", ["assert x == 1"])
    status = sandbox.require_isolation(True)  # what the run config's sandbox.allow_unisolated does
    assert status["mode"] == "unisolated" and status["allow_unisolated"] and status["missing"]
    assert run_tests("x = 1", ["assert x == 1"]).passed
    sandbox.allow_unisolated(False)
    with pytest.raises(SandboxIsolationError):
        sandbox.require_isolation(False)


def test_no_unprivileged_interpreter_means_nothing_runs_even_with_the_opt_in(monkeypatch, nothing_starts):
    monkeypatch.setattr(sandbox, "_CAPS", None)
    monkeypatch.setenv(sandbox.NO_BWRAP_ENV, "1")
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    monkeypatch.setattr(sandbox, "_python_candidates", lambda: ["/nonexistent/bin/python3"])
    monkeypatch.setattr(sandbox, "_probe", lambda *a: False)
    caps = sandbox.capabilities(refresh=True)
    assert caps["fatal"]
    with pytest.raises(SandboxIsolationError, match="does not change this") as err:
        run_tests("x = 1", ["assert x == 1"])
    if os.geteuid() == 0:
        assert "never run as root" in str(err.value)


def test_bwrap_mode_needs_no_opt_in(sandbox_modes, monkeypatch):
    if sandbox_modes["bwrap"] is None:
        pytest.skip("bubblewrap does not work on this machine (CI installs it)")
    monkeypatch.setattr(sandbox, "_CAPS", sandbox_modes["bwrap"])
    monkeypatch.setattr(sandbox, "_ALLOW_UNISOLATED", False)
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    assert sandbox.require_isolation() == {"mode": "bwrap", "python": sandbox_modes["bwrap"]["python"],
                                           "missing": [], "allow_unisolated": False}


def _cli(args: list[str], env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != sandbox.ALLOW_ENV}
    env.update({"PYTHONPATH": str(REPO), sandbox.NO_BWRAP_ENV: "1", **env_extra})
    return subprocess.run([sys.executable, "-m", "salt.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_salt_evaluate_on_a_code_benchmark_stops_before_the_model(mbpp_data, tmp_path):
    argv = ["evaluate", "--model", str(tmp_path / "no-model-here"), "--benchmark", "mbpp",
            "--data", str(mbpp_data), "--out", str(tmp_path / "eval"), "--no-tracking"]
    res = _cli(argv, {}, tmp_path)
    assert res.returncode == 2, res.stderr
    assert "code sandbox: isolation missing" in res.stderr and "config.json" not in res.stderr
    for way in WAYS_OUT:
        assert way in res.stderr
    assert not (tmp_path / "eval" / "problems.jsonl").exists()
    # with the opt-in the check passes and the next step (finding the model) is what fails
    res = _cli(argv + ["--allow-unisolated"], {}, tmp_path)
    assert res.returncode == 2 and "config.json" in res.stderr and "Nothing untrusted runs" not in res.stderr


def _code_run_config(tmp_path: Path, data: Path) -> Path:
    cfg = {"model": {"path": str(tmp_path / "model" / "final")},
           "data": {"train": str(data)}, "tracking": {"enabled": False}, "train": {"steps": 1}}
    path = tmp_path / "code.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_salt_train_on_a_code_task_stops_before_the_model(mbpp_data, tmp_path):
    config = _code_run_config(tmp_path, mbpp_data)
    res = _cli(["train", "--config", str(config), "--out", str(tmp_path / "run")], {}, tmp_path)
    assert res.returncode == 2, res.stderr
    assert "salt train: code sandbox: isolation missing" in res.stderr
    for way in WAYS_OUT:
        assert way in res.stderr
    assert "model.path" not in res.stderr  # the sandbox is checked before the model
    assert not (tmp_path / "run").exists()


def test_train_entry_points_check_first_and_the_opt_in_passes(no_bwrap, mbpp_data, tmp_path, monkeypatch, capsys):
    from salt.train import trainer
    from salt.train.config import ConfigError, flatten, from_dict, load_run_config, save_resolved

    reached = []
    monkeypatch.setattr(trainer.Trainer, "setup", lambda self: reached.append("setup") or 1 / 0)
    config = _code_run_config(tmp_path, mbpp_data)  # its model.path does not exist
    out = str(tmp_path / "run")
    assert trainer.cli_main(["--config", str(config), "--out", out]) == 2
    assert "isolation missing" in capsys.readouterr().err
    cfg = load_run_config(config, check_paths=False)
    with pytest.raises(SandboxIsolationError):
        trainer.train(cfg, out)
    with pytest.raises(SandboxIsolationError):
        trainer.Trainer(cfg, out).run()
    assert reached == []
    # opted in: the check passes and the job goes on to the model (missing here)
    assert trainer.cli_main(["--config", str(config), "--out", out, "--set", "sandbox.allow_unisolated=true"]) == 2
    assert "config error: model.path" in capsys.readouterr().err
    sandbox.allow_unisolated(False)
    cfg = load_run_config(config, ["sandbox.allow_unisolated=true"], check_paths=False)
    with pytest.raises(ConfigError, match="model.path"):
        trainer.train(cfg, out)
    with pytest.raises(ZeroDivisionError):
        trainer.Trainer(cfg, out).run()
    assert reached[-1] == "setup"
    # recorded: the resolved config and the MLflow params carry the opt-in
    assert flatten(cfg.to_dict())["sandbox.allow_unisolated"] is True
    assert yaml.safe_load(save_resolved(cfg, tmp_path).read_text())["sandbox"] == {"allow_unisolated": True}
    assert from_dict({}).sandbox.allow_unisolated is False


def test_toy_and_math_jobs_need_no_sandbox(no_bwrap, nothing_starts):
    from salt.tasks.rewards import check_code_sandbox

    assert check_code_sandbox([{"task": "toy"}, {"task": "math"}], False) is None
    with pytest.raises(SandboxIsolationError):
        check_code_sandbox([{"task": "toy"}, {"task": "code"}], False)


def test_evaluate_records_the_opt_in(no_bwrap, trained_dir, tmp_path, monkeypatch):  # noqa: F811
    from salt import tracking
    from salt.eval.evaluate import cli_main

    root, run_id, uri = trained_dir
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "code.jsonl"
    rows = [{"id": "c1", "task": "code", "prompt": "Write f.", "tests": ["assert f() == 1"], "entry_point": "f"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--model", str(root), "--benchmark", "codetest", "--data", str(data), "--out", str(tmp_path / "o"),
            "--n", "1", "--ks", "1", "--max-new-tokens", "2", "--allow-unisolated"]
    assert cli_main(argv) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["sandbox"] == "unisolated (opted in: allow_unisolated)"
    params = tracking._client(uri).get_run(run_id).data.params
    assert params["eval.codetest.sandbox"] == metrics["sandbox"]


def test_report_states_the_opt_in(tmp_path):
    from salt.figures.report import main

    table = tmp_path / "table.md"
    table.write_text("| a |\n|---|\n| 1 |\n")
    html = {}
    for allowed in (False, True):
        manifest = tmp_path / f"manifest{allowed}.json"
        manifest.write_text(json.dumps({"runs": [], "tracking": {}, "sandbox": {"allow_unisolated": allowed}}))
        out = main([], tmp_path, table, manifest, tmp_path / f"report{allowed}.html")
        html[allowed] = out.read_text()
    assert "sandbox.allow_unisolated: true" in html[True]
    assert "allow_unisolated" not in html[False]
