"""``salt gpu-check [--dry-run]``: set up the GPU venv, run every check under its own timeout, report.

Runs with the standard library only (``make gpu-check`` starts it with the system ``python3``
before anything is installed). Every set-up command and every check is a child process started
in its own session; when it outlives its timeout the whole process group is killed (SIGTERM,
then SIGKILL), so a hung NCCL collective or CUDA kernel cannot eat the other checks' time. The
timeout of a step is its own budget, cut to what is left of the total budget
(:class:`Budget`); a step with less than ``MIN_STEP_S`` left is skipped.

Outputs in ``--out`` (default ``results/gpu_check``): ``report.json``, ``report.md``,
``logs/<step>.log`` (each child's stdout + stderr), ``work/`` (the toy model, training runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from salt.gpucheck import plan
from salt.utils import git_commit

REPO = Path(__file__).resolve().parents[2]


class Budget:
    """Seconds left of a total budget, from a monotonic clock."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if total_s <= 0:
            raise ValueError(f"total budget must be > 0 seconds, got {total_s}")
        self.total_s = float(total_s)
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def timeout_for(self, own_s: float, reserve_s: float = plan.REPORT_RESERVE_S) -> float:
        """The step's own budget, cut to what is left after the report's reserve (may be <= 0)."""
        return min(float(own_s), self.remaining() - reserve_s)


@dataclass
class Outcome:
    returncode: int | None  # None when killed at the timeout
    seconds: float
    timed_out: bool


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the child's process group (its own session), SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(argv: Sequence[str], timeout_s: float, log_path: str | Path, env: dict[str, str] | None = None,
             cwd: str | Path | None = None) -> Outcome:
    """Run ``argv`` with stdout and stderr to ``log_path``; kill its whole process group at ``timeout_s``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(list(map(str, argv)), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=cwd, start_new_session=True)
        except OSError as exc:
            log.write(f"could not start: {exc}\n".encode())
            return Outcome(127, time.monotonic() - t0, False)
        try:
            rc = proc.wait(timeout=max(timeout_s, 0.0))
            return Outcome(rc, time.monotonic() - t0, False)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.write(f"\n[salt gpu-check] killed after the {timeout_s:.0f} s timeout\n".encode())
            return Outcome(None, time.monotonic() - t0, True)


def log_tail(path: str | Path, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def venv_ready(venv: Path) -> bool:
    """The venv's ``.installed`` marker exists and is newer than pyproject.toml."""
    marker = venv / ".installed"
    return marker.is_file() and marker.stat().st_mtime >= (REPO / "pyproject.toml").stat().st_mtime


def run_setup(steps: Sequence[plan.SetupStep], budget: Budget, logs: Path, venv: Path | None,
              setup_budget_s: float = plan.SETUP_BUDGET_S) -> dict[str, Any]:
    """Run the set-up steps in order; stop at the first required failure. Writes the venv marker."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"status": "pass", "budget_s": setup_budget_s, "steps": [], "optional_failed": []}
    if venv is not None and venv_ready(venv):
        marker = json.loads((venv / ".installed").read_text() or "{}")
        out.update(status="reused", seconds=0.0, optional_failed=marker.get("optional_failed", []))
        return out
    for step in steps:
        left_in_setup = setup_budget_s - (time.monotonic() - t0)
        timeout = min(step.timeout_s, left_in_setup, budget.timeout_for(step.timeout_s))
        if timeout < min(plan.MIN_STEP_S, step.timeout_s):
            res = {"name": step.name, "status": "skip", "seconds": 0.0, "reason": "set-up budget exhausted"}
        else:
            o = run_step(step.argv, timeout, logs / f"setup-{step.name}.log", cwd=REPO)
            status = "timeout" if o.timed_out else ("pass" if o.returncode == 0 else "error")
            res = {"name": step.name, "status": status, "seconds": o.seconds,
                   "reason": "" if status == "pass" else log_tail(logs / f"setup-{step.name}.log")}
        out["steps"].append(res)
        if res["status"] != "pass":
            if step.optional:
                out["optional_failed"].append(step.name)
                continue
            out["status"] = "error"
            out["reason"] = f"set-up step {step.name} {res['status']}: {res['reason']}"
            break
    out["seconds"] = time.monotonic() - t0
    if out["status"] == "pass" and venv is not None:
        (venv / ".installed").write_text(json.dumps({"steps": out["steps"],
                                                     "optional_failed": out["optional_failed"]}) + "\n")
    return out


def _imports(python: str, package: str, budget: Budget, log: Path, env: dict[str, str]) -> bool:
    timeout = budget.timeout_for(60.0)
    argv = [python, "-m", "salt.gpucheck.imports", package]
    return timeout >= plan.MIN_STEP_S and run_step(argv, timeout, log, env=env, cwd=REPO).returncode == 0


def run_check(spec: plan.CheckSpec, argv: Sequence[str], budget: Budget, logs: Path, result_path: Path,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """One check's worker under its timeout; the worker's own result file, or timeout / error."""
    base = {"title": spec.title, "budget_s": spec.budget_s, "log": str(logs / f"{spec.name}.log")}
    timeout = budget.timeout_for(spec.budget_s)
    if timeout < min(plan.MIN_STEP_S, spec.budget_s):
        return {**plan.skipped(spec.name, f"total budget exhausted ({budget.remaining():.0f} s left)"),
                **base, "seconds": 0.0}
    if result_path.exists():
        result_path.unlink()
    o = run_step(argv, timeout, logs / f"{spec.name}.log", env=env, cwd=REPO)
    if o.timed_out:
        res = plan.make_result(spec.name, status="timeout",
                               reason=f"killed after {timeout:.0f} s; last output: {log_tail(base['log'])}")
    elif result_path.is_file():
        res = json.loads(result_path.read_text())
        if o.returncode != 0 and res.get("status") == "pass":
            res = {**res, "status": "error", "reason": f"worker exited with code {o.returncode} after a pass"}
    else:
        tail = log_tail(base["log"])
        res = plan.make_result(spec.name, status="error",
                               reason=f"exit code {o.returncode}, no result written; last output: {tail}")
    return {**res, **base, "seconds": o.seconds, "timeout_s": timeout}


def run_all(checks: Sequence[plan.CheckSpec], python: str, out: Path, steps: Sequence[plan.SetupStep],
            venv: Path | None, budget: Budget | None = None,
            argv_of: Callable[[plan.CheckSpec, Path], list[str]] | None = None) -> dict[str, Any]:
    """Set-up, then the checks in plan order; returns the report (also written to ``out``)."""
    budget = budget or Budget(plan.TOTAL_BUDGET_S)
    logs, work = out / "logs", out / "work"
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    setup = run_setup(steps, budget, logs, venv)
    if argv_of is None:
        def argv_of(spec: plan.CheckSpec, result: Path) -> list[str]:
            return plan.check_argv(spec, python, REPO, work, result)
    # nothing may come from a model hub; no usage reports
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    results: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for spec in checks:
        base = {"title": spec.title, "budget_s": spec.budget_s, "seconds": 0.0}
        if setup["status"] == "error":
            res = {**plan.skipped(spec.name, setup["reason"]), **base}
        elif spec.needs_model and by_name.get("toy_model", {}).get("status") not in (None, "pass"):
            res = {**plan.skipped(spec.name, f"the toy model was not built ({by_name['toy_model']['status']})"), **base}
        elif spec.optional_package and spec.optional_package in setup.get("optional_failed", []):
            res = {**plan.skipped(spec.name, f"{spec.optional_package} did not install; see "
                                             f"{logs / ('setup-' + spec.optional_package + '.log')}"), **base}
        elif spec.accelerate_config and spec.optional_package and not _imports(
                python, spec.optional_package, budget, logs / f"{spec.name}-import.log", env):
            # `accelerate launch` itself needs it: the worker could not report the skip
            res = {**plan.skipped(spec.name, f"{spec.optional_package} does not import: "
                                             f"{log_tail(logs / (spec.name + '-import.log'), 3)}"), **base}
        else:
            result_path = work / f"{spec.name}.result.json"
            res = run_check(spec, argv_of(spec, result_path), budget, logs, result_path, env)
        results.append(res)
        by_name[spec.name] = res
        print(f"salt gpu-check: {spec.name}: {res['status']} ({res.get('seconds', 0.0):.0f} s)"
              + (f" - {res['reason'][:200]}" if res.get("reason") else ""), file=sys.stderr, flush=True)
    report = {"status": plan.overall_status(results), "budget_s": budget.total_s, "wall_s": budget.elapsed(),
              "git_commit": git_commit(REPO),
              "environment": by_name.get("toy_model", {}).get("environment", {}),
              "setup": setup, "checks": results}
    plan.write_report(report, out)
    return report


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="salt gpu-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the set-up commands; run nothing")
    ap.add_argument("--out", default="results/gpu_check", help="report.json, report.md, logs/, work/")
    ap.add_argument("--venv", default=".venv-gpu", help="the GPU environment (created unless it is ready)")
    ap.add_argument("--python", default=None,
                    help="run the checks with this interpreter and skip the set-up (an environment you prepared)")
    ap.add_argument("--base-python", default=sys.executable, help="interpreter that creates the venv")
    ap.add_argument("--checks", default=None, help=f"comma list from {','.join(plan.CHECK_NAMES)} (default: all)")
    ap.add_argument("--no-deepspeed", action="store_true", help="do not try to install DeepSpeed (zero2 is skipped)")
    args = ap.parse_args(argv)
    try:
        checks = plan.select_checks(args.checks.split(",") if args.checks else None)
    except ValueError as exc:
        ap.error(str(exc))
    venv = (REPO / args.venv) if not Path(args.venv).is_absolute() else Path(args.venv)
    python = args.python or str(venv / "bin" / "python")
    steps = [] if args.python else plan.setup_steps(venv, REPO, args.base_python, deepspeed=not args.no_deepspeed)
    out = Path(args.out).resolve()  # the workers run in the repository
    if args.dry_run:
        work = out / "work"
        print(plan.render_plan(checks, steps, lambda c: plan.check_argv(c, python, REPO, work,
                                                                          work / f"{c.name}.result.json")), end="")
        print(f"\nReports: {out / 'report.json'}, {out / 'report.md'}; logs in {out / 'logs'}.")
        return 0
    if not (REPO / "pyproject.toml").is_file():
        print(f"salt gpu-check: {REPO} is not a salt checkout (no pyproject.toml); run it from the repository "
              "(make gpu-check) so that the GPU venv can install it", file=sys.stderr)
        return 2
    report = run_all(checks, python, out, steps, None if args.python else venv)
    print(f"salt gpu-check: {report['status'].upper()} in {report['wall_s']:.0f} s; "
          f"report: {out / 'report.md'}", file=sys.stderr)
    return 0 if report["status"] == "pass" else 1
