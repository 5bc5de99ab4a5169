"""`salt gpu-check`: the plan, set-up commands, comparisons, timeouts, budget, reports, the dry run,
and the parts of the checks that run on CPU (bf16 step, Gram, log-prob recomputation, judging of
the vLLM probes). No GPU result is produced here: GPU-only checks must report `skip`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from salt.gpucheck import plan, runner

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ the plan


def test_plan_covers_the_issue_and_fits_ten_minutes():
    names = plan.CHECK_NAMES
    for name in ("vllm_vs_hf", "vllm_rl_sync", "bf16_step", "fsdp", "zero2", "gram_gpu"):
        assert name in names
    assert len(set(names)) == len(names)
    assert plan.planned_seconds() <= plan.TOTAL_BUDGET_S == 600.0
    for c in plan.CHECKS:
        assert c.budget_s >= plan.MIN_STEP_S and c.tolerances and c.what
        if c.accelerate_config:
            assert (REPO / c.accelerate_config).is_file()


def test_select_checks_adds_the_toy_model_when_needed():
    assert [c.name for c in plan.select_checks(["fsdp"])] == ["toy_model", "fsdp"]
    assert [c.name for c in plan.select_checks(["gram_gpu"])] == ["gram_gpu"]
    assert len(plan.select_checks(None)) == len(plan.CHECKS)
    with pytest.raises(ValueError, match="unknown gpu-check 'nope'.*known checks"):
        plan.select_checks(["nope"])


def test_setup_uses_its_own_venv_with_the_vllm_extra():
    steps = plan.setup_steps("/r/.venv-gpu", "/r", "python3")
    shells = [s.shell() for s in steps]
    assert shells[0] == "python3 -m venv /r/.venv-gpu"
    assert any("-e '/r[vllm,test]'" in s and "--python /r/.venv-gpu/bin/python" in s for s in shells)
    assert all("/.venv/" not in s and not s.split()[0].startswith(".venv/") for s in shells)  # CPU venv untouched
    assert not any("torch==" in s for s in shells)  # vLLM pins its own CUDA torch
    ds = [s for s in steps if s.name == "deepspeed"]
    assert ds and ds[0].optional and "--no-build-isolation" in ds[0].argv
    assert all(not s.optional for s in steps if s.name != "deepspeed")
    assert "deepspeed" not in [s.name for s in plan.setup_steps("/r/v", "/r", deepspeed=False)]


def test_check_argv_launches_sharded_checks_through_the_accelerate_configs():
    fsdp = plan.check_argv(plan.check_spec("fsdp"), "/v/bin/python", "/r", "/w", "/w/fsdp.json")
    assert fsdp[:4] == ["/v/bin/accelerate", "launch", "--config_file", "/r/config/accelerate/fsdp.yaml"]
    assert fsdp[fsdp.index("--num_processes") + 1] == "1"
    assert fsdp[-7:] == ["-m", "salt.gpucheck.checks", "fsdp", "--work", "/w", "--result", "/w/fsdp.json"]
    z2 = plan.check_argv(plan.check_spec("zero2"), "/v/bin/python", "/r", "/w", "/w/z.json")
    assert "/r/config/accelerate/deepspeed_zero2.yaml" in z2
    assert plan.check_argv(plan.check_spec("gram_gpu"), "/v/bin/python", "/r", "/w", "/w/g.json")[:3] == \
        ["/v/bin/python", "-m", "salt.gpucheck.checks"]


# ----------------------------------------------------------------------------- comparisons


def test_comparisons_and_results():
    assert plan.at_most("a", 0.5, 0.5).ok and not plan.at_most("a", 0.51, 0.5).ok
    assert plan.at_least("b", 0.99, 0.99).ok and not plan.at_least("b", 0.98, 0.99).ok
    assert plan.equals("c", 2, 2).ok and not plan.equals("c", 1, 2).ok
    for bad in (math.nan, math.inf):
        assert not plan.at_most("n", bad, 1.0).ok and not plan.at_least("n", bad, 0.0).ok
    with pytest.raises(ValueError, match="op must be"):
        plan.Comparison("x", 1.0, "<", 2.0)
    ok = plan.make_result("k", [plan.at_most("a", 0.1, 1.0)], {"n": 1})
    assert ok["status"] == "pass" and ok["numbers"] == {"n": 1} and ok["comparisons"][0]["ok"]
    bad = plan.make_result("k", [plan.at_most("a", 0.1, 1.0), plan.at_least("b", 0.0, 1.0)])
    assert bad["status"] == "fail" and bad["reason"] == "outside tolerance: b"
    with pytest.raises(ValueError, match="needs an explicit status"):
        plan.make_result("k", [])
    with pytest.raises(ValueError, match="needs a reason"):
        plan.make_result("k", status="skip")
    assert plan.rel_diff(1.0, 1.1) == pytest.approx(0.1 / 1.1)
    assert plan.rel_diff(0.0, 0.0) == 0.0
    c = plan.judge("fsdp", "resume_started_at", 2)
    assert c.ok and c.op == "==" and not plan.judge("fsdp", "resume_started_at", 0).ok
    with pytest.raises(ValueError, match="check fsdp has no tolerance 'x'"):
        plan.judge("fsdp", "x", 1.0)


def test_logprob_gap():
    g = plan.logprob_gap([[-1.0, -2.0], [-0.5]], [[-1.1, -2.0], [-0.2]])
    assert g == pytest.approx({"mean_abs": (0.1 + 0.0 + 0.3) / 3, "max_abs": 0.3, "tokens": 3.0})
    with pytest.raises(ValueError, match="rollout 0 has 2 log-probs against 1"):
        plan.logprob_gap([[-1.0, -2.0]], [[-1.0]])
    with pytest.raises(ValueError, match="1 rollouts against 2"):
        plan.logprob_gap([[-1.0]], [[-1.0], [-1.0]])


def test_overall_status():
    r = lambda s: {"status": s}  # noqa: E731
    assert plan.overall_status([r("pass"), r("pass")]) == "pass"
    assert plan.overall_status([r("pass"), r("skip")]) == "incomplete"
    for bad in ("fail", "timeout", "error"):
        assert plan.overall_status([r("pass"), r("skip"), r(bad)]) == "fail"


def test_stale_weight_judgement():
    from salt.gpucheck.checks import stale_weight_comparisons

    floor = {"gap_now": 0.004}
    synced = [floor] + [{"gap_now": 0.005, "gap_old": 0.05, "drift": 0.05}] * 3
    comps, nums = stale_weight_comparisons(synced)
    assert all(c.ok for c in comps) and nums["syncs"] == 3
    # a stale engine still samples from the previous weights: close to them, far from the current ones
    stale = [floor] + [{"gap_now": 0.05, "gap_old": 0.005, "drift": 0.05}] * 3
    failed = [c.name for c in stale_weight_comparisons(stale)[0] if not c.ok]
    assert failed == ["sync_gap_max", "stale_ratio_max"]
    # updates too small to move the policy cannot tell a stale engine from a synced one
    still = [floor] + [{"gap_now": 0.004, "gap_old": 0.004, "drift": 0.001}] * 3
    assert [c.name for c in stale_weight_comparisons(still)[0] if not c.ok] == ["steps_tested_for_staleness"]


# ---------------------------------------------------------------------- timeouts and budget


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its (re)parent is dead too
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_run_step_kills_the_whole_process_group_at_the_timeout(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    out = runner.run_step([sys.executable, "-c", code], 1.5, tmp_path / "log.txt")
    assert out.timed_out and out.returncode is None
    assert time.monotonic() - t0 < 20
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _dead(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(grandchild)
    assert "killed after the 2 s timeout" in (tmp_path / "log.txt").read_text()


def test_run_step_records_exit_code_and_output(tmp_path):
    out = runner.run_step([sys.executable, "-c", "print('hello'); raise SystemExit(3)"], 30, tmp_path / "l.txt")
    assert not out.timed_out and out.returncode == 3
    assert "hello" in (tmp_path / "l.txt").read_text()
    assert runner.run_step(["/nonexistent/binary"], 30, tmp_path / "m.txt").returncode == 127


def test_budget_cuts_each_step_to_what_is_left():
    now = [100.0]
    b = runner.Budget(600.0, clock=lambda: now[0])
    assert b.timeout_for(75.0) == 75.0
    now[0] += 560.0
    assert b.remaining() == pytest.approx(40.0)
    assert b.timeout_for(75.0) == pytest.approx(40.0 - plan.REPORT_RESERVE_S)
    with pytest.raises(ValueError, match="> 0 seconds"):
        runner.Budget(0)


def _fake_worker(body: str):
    """argv_of for run_all: a python -c worker that writes RESULT (a path) as its result."""
    def argv_of(spec, result):
        return [sys.executable, "-c", f"RESULT = {str(result)!r}; NAME = {spec.name!r}\n" + body]
    return argv_of


WORKER = """
import json, sys, time
from salt.gpucheck import plan
if NAME == 'toy_model':
    res = plan.make_result(NAME, [plan.at_most('final_loss', 0.5, 1.0)])
    res['environment'] = {'gpu': 'FakeGPU'}
elif NAME == 'fsdp':
    time.sleep(60)
elif NAME == 'zero2':
    sys.exit(7)
else:
    res = plan.make_result(NAME, [plan.at_most('err', 0.5, 0.1)], {'x': 1.5})
json.dump(res, open(RESULT, 'w'))
"""


def _specs(budget_s: float = 20.0):
    return [plan.CheckSpec(n, f"title {n}", budget_s if n != "fsdp" else 2.0, "what", {"t": "<= 1"},
                           needs_model=n != "toy_model") for n in ("toy_model", "fsdp", "zero2", "gram_gpu")]


def test_run_all_reports_pass_fail_timeout_and_error(tmp_path):
    report = runner.run_all(_specs(), sys.executable, tmp_path, [], None, argv_of=_fake_worker(WORKER))
    by = {r["name"]: r for r in report["checks"]}
    assert by["toy_model"]["status"] == "pass"
    assert by["fsdp"]["status"] == "timeout" and by["fsdp"]["seconds"] < 15
    assert by["zero2"]["status"] == "error" and "exit code 7" in by["zero2"]["reason"]
    assert by["gram_gpu"]["status"] == "fail" and by["gram_gpu"]["reason"] == "outside tolerance: err"
    assert report["status"] == "fail" and report["environment"] == {"gpu": "FakeGPU"}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["status"] for r in saved["checks"]] == ["pass", "timeout", "error", "fail"]
    assert "git_commit" in saved and saved["budget_s"] == plan.TOTAL_BUDGET_S
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# GPU check: FAIL")
    assert "| gram_gpu | fail |" in md and "FAIL err 0.5 <= 0.1" in md and "| x | 1.5 |" in md
    assert "Paths NOT verified (failed, timed out, crashed or skipped): fsdp, zero2, gram_gpu." in md
    assert (tmp_path / "logs" / "fsdp.log").is_file()


def test_run_all_skips_dependents_and_respects_the_total_budget(tmp_path):
    failing_model = WORKER.replace("plan.at_most('final_loss', 0.5, 1.0)", "plan.at_most('final_loss', 2.0, 1.0)")
    report = runner.run_all(_specs(), sys.executable, tmp_path / "a", [], None, argv_of=_fake_worker(failing_model))
    by = {r["name"]: r for r in report["checks"]}
    assert by["toy_model"]["status"] == "fail"
    for name in ("fsdp", "zero2", "gram_gpu"):
        assert by[name]["status"] == "skip" and "toy model was not built" in by[name]["reason"]
    now = [0.0]
    spent = runner.Budget(600.0, clock=lambda: now[0])
    now[0] = 598.0
    report = runner.run_all(_specs(), sys.executable, tmp_path / "b", [], None, budget=spent,
                            argv_of=_fake_worker(WORKER))
    assert {r["status"] for r in report["checks"]} == {"skip"}
    assert "total budget exhausted" in report["checks"][0]["reason"]
    assert report["status"] == "incomplete"


def test_setup_failure_skips_every_check_and_optional_failure_only_its_check(tmp_path):
    fail = plan.SetupStep("salt[vllm]", (sys.executable, "-c", "raise SystemExit('no wheel for this CUDA')"), 30)
    report = runner.run_all(_specs(), sys.executable, tmp_path / "a", [fail], None, argv_of=_fake_worker(WORKER))
    assert report["setup"]["status"] == "error" and "no wheel for this CUDA" in report["setup"]["reason"]
    assert {r["status"] for r in report["checks"]} == {"skip"}
    ok = plan.SetupStep("venv", (sys.executable, "-c", "pass"), 30)
    ds = plan.SetupStep("deepspeed", (sys.executable, "-c", "raise SystemExit(1)"), 30, optional=True)
    specs = [plan.CheckSpec("zero2", "t", 20.0, "w", needs_model=False, optional_package="deepspeed")]
    venv = tmp_path / "venv"
    venv.mkdir()
    report = runner.run_all(specs, sys.executable, tmp_path / "b", [ok, ds], venv, argv_of=_fake_worker(WORKER))
    assert report["setup"]["status"] == "pass" and report["setup"]["optional_failed"] == ["deepspeed"]
    assert report["checks"][0]["status"] == "skip" and "deepspeed did not install" in report["checks"][0]["reason"]
    assert runner.venv_ready(venv)  # marker written: the next run reuses the venv
    again = runner.run_setup([fail], runner.Budget(600), tmp_path / "logs", venv)
    assert again["status"] == "reused" and again["optional_failed"] == ["deepspeed"]


def test_accelerate_check_is_skipped_when_its_package_does_not_import(tmp_path):
    spec = plan.CheckSpec("zero2", "t", 20.0, "w", needs_model=False, optional_package="no_such_package_xyz",
                          accelerate_config="config/accelerate/deepspeed_zero2.yaml")
    report = runner.run_all([spec], sys.executable, tmp_path, [], None, argv_of=_fake_worker(WORKER))
    res = report["checks"][0]
    assert res["status"] == "skip" and "no_such_package_xyz does not import" in res["reason"]
    assert "ModuleNotFoundError" in res["reason"]


# --------------------------------------------------------------------------------- dry run


def test_dry_run_prints_plan_and_setup_and_runs_nothing(tmp_path, capsys):
    from salt.cli import main

    out = tmp_path / "gc"
    assert main(["gpu-check", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total budget 600 s" in text
    assert "-m venv" in text and "[vllm,test]" in text and "deepspeed" in text
    for c in plan.CHECKS:
        assert f"{c.name} [{c.budget_s:.0f} s]" in text
        for key in c.tolerances:
            assert key in text
    assert "accelerate launch --config_file" in text and "config/accelerate/fsdp.yaml" in text
    assert not out.exists()


def test_dry_run_needs_neither_torch_nor_a_gpu(tmp_path):
    """`make gpu-check` starts the runner with the system python before anything is installed."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from salt.gpucheck.runner import cli_main; sys.exit(cli_main(['--dry-run', '--checks', 'fsdp']))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert "1. toy_model" in res.stdout and "2. fsdp" in res.stdout and "zero2 [" not in res.stdout


def test_cli_rejects_unknown_checks():
    with pytest.raises(SystemExit):
        runner.cli_main(["--dry-run", "--checks", "fsdp,nope"])


# ------------------------------------------------------------------- check code that runs on CPU


@pytest.fixture(scope="module")
def toy_work(tmp_path_factory):
    from salt.gpucheck.checks import check_toy_model

    work = tmp_path_factory.mktemp("gpucheck")
    res = check_toy_model(work, "cpu", steps=8, batch_size=16)
    return work, res


def test_toy_model_is_built_locally_and_reused(toy_work):
    from salt.gpucheck.checks import check_toy_model

    work, res = toy_work
    assert (work / "toy_model" / "config.json").is_file() and (work / "toy_model" / "tokenizer.json").is_file()
    assert res["numbers"]["size"] == plan.TOY_SIZE and res["numbers"]["steps"] == 8
    assert res["comparisons"][0]["name"] == "final_loss"
    assert res["status"] == ("pass" if res["numbers"]["final_loss"] <= 1.0 else "fail")
    assert "torch" in res["environment"]
    again = check_toy_model(work, "cpu", steps=8)
    assert again["numbers"]["reused"] is True
    assert again["numbers"]["final_loss"] == res["numbers"]["final_loss"]


def test_trainer_recomputation_matches_hf_sampling_logprobs_on_cpu(toy_work):
    """The HF half of check vllm_vs_hf, on CPU: HF's sampling log-probs = the trainer's recomputation."""
    import torch

    from salt.gpucheck.checks import load_model, pad_id_of, recompute_logprobs, toy_prompts
    from salt.rollout.hf import HFBackend

    work, _ = toy_work
    model, tok = load_model(work / "toy_model", torch.float32, "cpu")
    _, prompts = toy_prompts(tok, 4)
    out = HFBackend(model, tok).generate(prompts, 3, 6, 0.7, 1.0, seed=0)
    gap = plan.logprob_gap(out.logprobs, recompute_logprobs(model, out, pad_id_of(tok), 0.7))
    assert gap["tokens"] >= 12 and gap["max_abs"] < 1e-4
    wrong_t = plan.logprob_gap(out.logprobs, recompute_logprobs(model, out, pad_id_of(tok), 1.0))
    assert wrong_t["mean_abs"] > 100 * gap["mean_abs"]  # the comparison sees a temperature mismatch


def test_bf16_step_on_cpu(toy_work):
    from salt.gpucheck.checks import check_bf16_step

    work, _ = toy_work
    res = check_bf16_step(work, "cpu", n_prompts=4, n=4)
    comps = {c["name"]: c for c in res["comparisons"]}
    assert set(comps) == set(plan.check_spec("bf16_step").tolerances)
    for name in ("loss_abs_diff", "grad_norm_rel_diff", "grad_cosine"):  # bf16 forward/backward track fp32
        assert comps[name]["ok"], comps[name]
    assert res["numbers"]["device"] == "cpu" and res["numbers"]["fp32_changed_frac"] > 0.9
    # the trainer keeps fp32 master weights (model.dtype: auto): small steps survive, the check passes
    assert res["numbers"]["param_dtype"] == "torch.float32" and comps["bf16_applied_frac"]["ok"]
    assert res["status"] == "pass"


def test_bf16_weights_lose_small_optimizer_steps(toy_work):
    """What check bf16_step reports: bf16 parameters drop AdamW steps far below their spacing."""
    import torch

    from salt.gpucheck.checks import adamw_applied_fraction, load_model

    work, _ = toy_work
    model, _ = load_model(work / "toy_model", torch.float32, "cpu")
    grads = [torch.randn_like(p) * 1e-2 for p in model.parameters()]
    frac32, applied_small = adamw_applied_fraction(model, grads, torch.bfloat16, 1e-6)
    _, applied_large = adamw_applied_fraction(model, grads, torch.bfloat16, 1e-2)
    assert frac32 > 0.99
    assert applied_small < 0.2 < 0.9 < applied_large


def test_gram_check_on_cpu_small_head():
    from salt.gpucheck.checks import check_gram_gpu

    res = check_gram_gpu(None, "cpu", B=4, T=8, V=3000, H=32, repeats=1)
    assert res["status"] == "pass", res
    assert res["numbers"]["device"] == "cpu" and res["numbers"]["forward_s"] > 0
    assert {c["name"] for c in res["comparisons"]} == set(plan.check_spec("gram_gpu").tolerances)


def test_run_config_is_valid(toy_work):
    from salt.gpucheck.checks import run_config

    work, _ = toy_work
    cfg = run_config(work / "toy_model", train={"checkpoint_every": 2})
    assert cfg.train.checkpoint_every == 2 and cfg.train.optimizer == "sgd" and not cfg.tracking.enabled
    assert cfg.algorithm.salt.enabled and cfg.model.path == str(work / "toy_model")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU behaviour")
@pytest.mark.parametrize("name", ["vllm_vs_hf", "vllm_rl_sync", "fsdp", "zero2", "gram_gpu", "bf16_step"])
def test_gpu_checks_skip_without_a_gpu(tmp_path, name):
    from salt.gpucheck import checks

    result = tmp_path / "r.json"
    assert checks.main([name, "--work", str(tmp_path), "--result", str(result)]) == 0
    res = json.loads(result.read_text())
    assert res["status"] == "skip" and "no CUDA GPU" in res["reason"] and not res["comparisons"]


def test_probed_run_catches_a_stale_engine_on_cpu(toy_work, tmp_path, monkeypatch):
    """Check vllm_rl_sync's machinery with the HF backend on CPU: in sync it passes; an engine that
    keeps the weights it was built with (the stale-weights bug) fails."""
    import copy

    import salt.rollout
    from salt.gpucheck.checks import probed_run, stale_weight_comparisons
    from salt.rollout.hf import HFBackend

    import types

    import salt.tasks.rewards

    work, _ = toy_work
    # the fixture model is barely trained (reward 0 everywhere, zero advantages): a stand-in reward
    # that varies within groups makes the steps move the policy
    monkeypatch.setattr(salt.tasks.rewards, "score_batch",
                        lambda rows, texts, **kw: [types.SimpleNamespace(reward=float(len(t) % 2)) for t in texts])
    probes, rewards, _ = probed_run(work / "toy_model", tmp_path / "synced", "hf", steps=2, lr=1e-3)
    assert len(probes) == 3 and len(rewards) == 2
    comps, nums = stale_weight_comparisons(probes)
    assert all(c.ok for c in comps), [c.to_dict() for c in comps]
    assert probes[1]["drift"] > 0.01 and probes[1]["gap_now"] < 1e-4

    class StaleBackend(HFBackend):
        def sync_weights(self, model):  # forgets to load the new weights
            pass

    def stale_backend(rollout_cfg, model, tokenizer, accelerator=None):
        return StaleBackend(copy.deepcopy(model), tokenizer)

    monkeypatch.setattr(salt.rollout, "make_backend", stale_backend)
    probes, _, _ = probed_run(work / "toy_model", tmp_path / "stale", "hf", steps=2, lr=1e-3)
    failed = {c.name for c in stale_weight_comparisons(probes)[0] if not c.ok}
    assert {"sync_gap_max", "stale_ratio_max"} <= failed


def test_sharded_check_body_on_cpu_without_sharding(toy_work, tmp_path, monkeypatch):
    """Everything of checks fsdp / zero2 but the sharding, on CPU: a plain trainer against a plain
    copy gives the same update, and a run resumed from its step-2 checkpoint ends where the
    uninterrupted one does."""
    import types

    import salt.tasks.rewards
    from salt.gpucheck.checks import sharded_vs_plain

    monkeypatch.setattr(salt.tasks.rewards, "score_batch",
                        lambda rows, texts, **kw: [types.SimpleNamespace(reward=float(len(t) % 2)) for t in texts])
    work, _ = toy_work
    res = sharded_vs_plain("fsdp", work / "toy_model", tmp_path / "fsdp", "none")
    comps = {c["name"]: c for c in res["comparisons"]}
    assert set(comps) == set(plan.check_spec("fsdp").tolerances)
    assert res["status"] == "pass", res
    assert comps["update_rel_diff"]["value"] < 1e-6 and comps["resume_rel_diff"]["value"] < 1e-6
    assert comps["resume_started_at"]["value"] == 2 and res["numbers"]["update_norm_plain"] > 0
    wrong = sharded_vs_plain("zero2", work / "toy_model", tmp_path / "z", "deepspeed")
    assert wrong["status"] == "error" and "runs as 'none', not 'deepspeed'" in wrong["reason"]


def test_make_target_uses_its_own_environment():
    make = (REPO / "Makefile").read_text()
    block = make[make.index("gpu-check:"):]
    recipe = block.splitlines()[1]
    assert "-m salt.gpucheck" in recipe and "$(GPU_VENV)" in recipe and "$(BIN)" not in recipe
    assert "GPU_VENV ?= .venv-gpu" in make
    assert "gpu-check" in __import__("salt.cli", fromlist=["COMMANDS"]).COMMANDS


def test_every_check_runs_its_registered_function():
    """plan.CHECKS is the one registry: each entry names the worker function run_check imports."""
    import importlib
    import inspect

    from salt.gpucheck import checks

    for c in plan.CHECKS:
        module, attr = c.function.split(":")
        fn = getattr(importlib.import_module(module), attr)
        assert module == checks.__name__ and attr == f"check_{c.name}"
        assert list(inspect.signature(fn).parameters)[:2] == ["work", "device"]
    assert not hasattr(checks, "CHECK_FUNCS")
    with pytest.raises(ValueError, match="unknown gpu-check 'nope'"):
        checks.run_check("nope", ".")
