"""What ``salt gpu-check`` runs, how results are judged, and the report (standard library only).

The plan is data: :data:`SETUP_STEPS` (installing the GPU venv), :data:`CHECKS` (each with its own
time budget, launcher and tolerances) and :data:`TOTAL_BUDGET_S`. A check's worker writes a result
dict (:func:`make_result`) whose status follows from its :class:`Comparison` list: ``pass`` when
every comparison holds, ``fail`` otherwise; ``skip`` (with a reason) when it cannot run here,
``timeout`` / ``error`` when the runner had to stop it or it crashed.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from salt.train.engine_probe import logprob_gap  # noqa: F401  (one owner: the probes of the CPU tests)

TOTAL_BUDGET_S = 600.0  # set-up included: the ten minutes
REPORT_RESERVE_S = 5.0  # kept back from the last step for writing the report
MIN_STEP_S = 5.0  # a step with less time left than this is skipped ("total budget exhausted")
STATUSES = ("pass", "fail", "skip", "timeout", "error")
TOY_SIZE = "small"  # head_dim 32 (128 / 4): inside FlashAttention's head sizes; tiny has 24


@dataclass(frozen=True)
class SetupStep:
    """One set-up command with its own timeout; an optional step may fail without stopping the run."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    optional: bool = False
    why: str = ""

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Tol:
    """A tolerance: the measured value must satisfy ``value <op> limit``."""

    op: str
    limit: float
    note: str = ""

    def text(self) -> str:
        return f"{self.op} {self.limit:g}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class CheckSpec:
    """One check: what it verifies, its budget, its tolerances, how it is launched, what it needs."""

    name: str
    title: str
    budget_s: float
    what: str
    tolerances: dict[str, Tol] = field(default_factory=dict)
    accelerate_config: str | None = None  # launched with `accelerate launch --config_file ...`
    needs_model: bool = True  # needs the toy model the `toy_model` step builds
    optional_package: str | None = None  # skipped with a reason when it did not install
    function: str = ""  # "module:function" run by the worker as function(work, device) (imported there)


_SHARDED_TOLS = {
    "update_rel_diff": Tol("<=", 0.05, "|dW_sharded - dW_plain| / |dW_plain|, one SGD step"),
    "update_cosine": Tol(">=", 0.99),
    "loss_abs_diff": Tol("<=", 0.02),
    "resume_started_at": Tol("==", 2, "steps restored from the step-2 checkpoint"),
    "resume_rel_diff": Tol("<=", 0.05, "final weights resumed vs uninterrupted, relative to the run's change"),
}

# Set-up: 240 s, then the checks: 360 s; sum = TOTAL_BUDGET_S.
SETUP_BUDGET_S = 240.0
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "toy_model", "build the toy model on the GPU", 40.0,
        f"Builds the character tokenizer and a random `{TOY_SIZE}` toy Qwen2 locally (nothing from a "
        "model hub) and teaches it the toy answer format (teacher forcing, 600 steps), so that RL has "
        "reward signal. Reused when it already exists.",
        {"final_loss": Tol("<=", 1.0, "mean target loss of the last 50 steps")}, needs_model=False,
        function="salt.gpucheck.checks:check_toy_model",
    ),
    CheckSpec(
        "vllm_vs_hf", "vLLM generation vs HF, log-probs vs the trainer", 75.0,
        "Same prompts through a vLLM engine (bf16, processed log-probs, T = 0.7) and HF `generate`; "
        "vLLM's sampled-token log-probs against the trainer's recomputation (`compute_logprobs`) in "
        "bf16 and fp32, HF's own against fp32, greedy completions vLLM vs HF.",
        {"prompt_ids_equal": Tol("==", 1, "both backends tokenise the prompts alike"),
         "vllm_vs_trainer_bf16_mean_abs": Tol("<=", 0.02), "vllm_vs_trainer_bf16_max_abs": Tol("<=", 0.25),
         "vllm_vs_trainer_fp32_mean_abs": Tol("<=", 0.05, "bf16 engine vs fp32 weights"),
         "hf_vs_trainer_fp32_mean_abs": Tol("<=", 0.002),
         "greedy_agreement": Tol(">=", 0.8, "share of prompts with identical greedy completions")},
        optional_package="vllm",
        function="salt.gpucheck.checks:check_vllm_vs_hf",
    ),
    CheckSpec(
        "vllm_rl_sync", "RL with the colocated vLLM engine (sleep mode, sync every step)", 110.0,
        "`Trainer.run` for 8 steps (16 prompts x 8 rollouts, AdamW lr 3e-4, bf16) with rollout.backend: "
        "vllm, sleep mode on. After every weight sync the engine samples probe prompts and its "
        "log-probs are compared with the trainer's CURRENT weights and with the weights before the "
        "step (a stale engine matches the old ones). The same run with rollout.backend: hf (the path "
        "the CPU suite runs) is the reference for the reward.",
        {"sync_gap_max": Tol("<=", 0.02, "mean |engine - trainer| log-prob, worst probe"),
         "steps_tested_for_staleness": Tol(">=", 1, "steps whose policy drift is >= 2 x the noise floor"),
         "stale_ratio_max": Tol("<=", 0.5, "gap to current / gap to previous weights, worst tested step"),
         "reward_mean_diff_vs_hf": Tol("<=", 0.06, "|mean step reward, vllm run - hf run|")},
        optional_package="vllm",
        function="salt.gpucheck.checks:check_vllm_rl_sync",
    ),
    CheckSpec(
        "bf16_step", "bf16 training step vs fp32", 20.0,
        "One `update_minibatch` (GRPO + SALT, exact Gram) on the same rollouts with the model in "
        "fp32 and in bf16 (what model.dtype: auto loads on a GPU); then one step of the trainer's "
        "optimizer (`make_optimizer`) at the paper's lr 1e-6 on fp32 and on bf16 weights.",
        {"loss_abs_diff": Tol("<=", 0.02), "grad_norm_rel_diff": Tol("<=", 0.05),
         "grad_cosine": Tol(">=", 0.99),
         "bf16_applied_frac": Tol(">=", 0.9, "share of the entries an fp32 step at lr 1e-6 changes that the "
                                             "trainer's step changes on its master weights (model.dtype)")},
        function="salt.gpucheck.checks:check_bf16_step",
    ),
    CheckSpec(
        "fsdp", "FSDP on one GPU (config/accelerate/fsdp.yaml)", 40.0,
        "Trainer set-up through `accelerate launch --config_file config/accelerate/fsdp.yaml "
        "--num_processes 1`: one SGD update on the same mini-batch as plain training; then a 3-step "
        "run with a checkpoint at step 2, resumed from it in a copy, against the uninterrupted run.",
        _SHARDED_TOLS, accelerate_config="config/accelerate/fsdp.yaml",
        function="salt.gpucheck.checks:check_fsdp",
    ),
    CheckSpec(
        "zero2", "DeepSpeed ZeRO-2 on one GPU (config/accelerate/deepspeed_zero2.yaml)", 50.0,
        "As `fsdp`, through config/accelerate/deepspeed_zero2.yaml (DeepSpeed's fp32 master weights are "
        "compared); skipped with the reason when DeepSpeed did not install or import.",
        _SHARDED_TOLS, accelerate_config="config/accelerate/deepspeed_zero2.yaml", optional_package="deepspeed",
        function="salt.gpucheck.checks:check_zero2",
    ),
    CheckSpec(
        "gram_gpu", "LM-head Gram on the GPU at a Qwen2.5-0.5B head", 25.0,
        "B = 16, T = 128, V = 151936, H = 896, bf16 hidden states and head: time of the LM-head "
        "forward vs `lm_head_gram` exact and sketch on the same batch (reported, no limit), error "
        "against the float64 exact Gram.",
        {"exact_rel_err": Tol("<=", 1e-3, "relative Frobenius vs float64"),
         "sketch_rel_err": Tol("<=", 0.1, "count sketch, m = 1024")},
        needs_model=False,
        function="salt.gpucheck.checks:check_gram_gpu",
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)  # the one registry is CHECKS: names and functions together


def check_spec(name: str) -> CheckSpec:
    for c in CHECKS:
        if c.name == name:
            return c
    raise ValueError(f"unknown gpu-check {name!r}; known checks: {', '.join(CHECK_NAMES)}")


def judge(check: str, name: str, value: float) -> "Comparison":
    """``value`` against the tolerance ``name`` of check ``check`` (the one home of every limit)."""
    tols = check_spec(check).tolerances
    if name not in tols:
        raise ValueError(f"check {check} has no tolerance {name!r}; known: {sorted(tols)}")
    t = tols[name]
    return Comparison(name, value, t.op, t.limit, t.note)


def select_checks(names: Sequence[str] | None) -> list[CheckSpec]:
    """The checks named (in plan order), or all; ``toy_model`` is added when a chosen check needs it."""
    if not names:
        return list(CHECKS)
    chosen = {check_spec(n).name for n in names}
    if any(check_spec(n).needs_model for n in chosen):
        chosen.add("toy_model")
    return [c for c in CHECKS if c.name in chosen]


def planned_seconds() -> float:
    return SETUP_BUDGET_S + sum(c.budget_s for c in CHECKS)


# ------------------------------------------------------------------------------------ set-up


def setup_steps(venv: str | Path, repo: str | Path, base_python: str = "python3",
                deepspeed: bool = True) -> list[SetupStep]:
    """Commands that build the GPU venv: a fresh venv, uv, the package with its ``vllm`` extra (which
    pins its own CUDA torch), then DeepSpeed (optional: it builds against that torch)."""
    venv, repo = Path(venv), Path(repo)
    py = str(venv / "bin" / "python")
    uv = (py, "-m", "uv", "pip", "install", "--python", py, "--quiet")
    steps = [
        SetupStep("venv", (base_python, "-m", "venv", str(venv)), 60.0, why="own environment; .venv stays untouched"),
        SetupStep("uv", (py, "-m", "pip", "install", "--quiet", "--upgrade", "pip", "uv", "setuptools", "wheel"), 60.0,
                  why="uv installs the multi-GB CUDA wheels several times faster than pip; setuptools and "
                      "wheel build DeepSpeed without build isolation"),
        SetupStep("salt[vllm]", uv + ("-e", f"{repo}[vllm,test]"), SETUP_BUDGET_S,
                  why="vLLM pins its CUDA torch; transformers, accelerate, ... as in pyproject.toml"),
    ]
    if deepspeed:
        steps.append(SetupStep("deepspeed", uv + ("--no-build-isolation", "deepspeed"), 90.0, optional=True,
                               why="ZeRO-2 check; its build imports the torch installed above"))
    return steps


def check_argv(spec: CheckSpec, python: str | Path, repo: str | Path, work: str | Path,
               result: str | Path) -> list[str]:
    """Command of one check's worker (``accelerate launch`` for the sharded ones)."""
    tail = ["-m", "salt.gpucheck.checks", spec.name, "--work", str(work), "--result", str(result)]
    if spec.accelerate_config is None:
        return [str(python)] + tail
    accelerate = str(Path(python).parent / "accelerate")
    return [accelerate, "launch", "--config_file", str(Path(repo) / spec.accelerate_config),
            "--num_processes", "1", "--num_machines", "1"] + tail


# ------------------------------------------------------------------------------ comparisons


@dataclass
class Comparison:
    """``value <op> limit`` with ``op`` in ``<=``, ``>=``, ``==``; a NaN or inf value never holds."""

    name: str
    value: float
    op: str
    limit: float
    note: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">=", "=="):
            raise ValueError(f"Comparison {self.name}: op must be '<=', '>=' or '==', got {self.op!r}")
        self.value = float(self.value)
        self.limit = float(self.limit)

    @property
    def ok(self) -> bool:
        if not math.isfinite(self.value):
            return False
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == ">=":
            return self.value >= self.limit
        return self.value == self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def at_most(name: str, value: float, limit: float, note: str = "") -> Comparison:
    return Comparison(name, value, "<=", limit, note)


def at_least(name: str, value: float, limit: float, note: str = "") -> Comparison:
    return Comparison(name, value, ">=", limit, note)


def equals(name: str, value: float, limit: float, note: str = "") -> Comparison:
    return Comparison(name, value, "==", limit, note)


def rel_diff(a: float, b: float, floor: float = 1e-12) -> float:
    """|a - b| / max(|a|, |b|, floor)."""
    return abs(a - b) / max(abs(a), abs(b), floor)


def make_result(name: str, comparisons: Iterable[Comparison] = (), numbers: dict[str, Any] | None = None,
                status: str | None = None, reason: str = "") -> dict[str, Any]:
    """A check's result: status ``pass`` iff there are comparisons and all hold (unless given)."""
    comps = list(comparisons)
    if status is None:
        if not comps:
            raise ValueError(f"check {name}: a result without comparisons needs an explicit status and reason")
        failed = [c.name for c in comps if not c.ok]
        status = "fail" if failed else "pass"
        if failed and not reason:
            reason = "outside tolerance: " + ", ".join(failed)
    if status not in STATUSES:
        raise ValueError(f"check {name}: status must be one of {STATUSES}, got {status!r}")
    if status != "pass" and not reason:
        raise ValueError(f"check {name}: status {status} needs a reason")
    return {"name": name, "status": status, "reason": reason,
            "comparisons": [c.to_dict() for c in comps], "numbers": dict(numbers or {})}


def skipped(name: str, reason: str) -> dict[str, Any]:
    return make_result(name, status="skip", reason=reason)


# ------------------------------------------------------------------------------------ report


def overall_status(results: Sequence[dict[str, Any]]) -> str:
    """``pass`` only if every check passed; ``fail`` if any failed, timed out or crashed; else
    ``incomplete`` (some were skipped)."""
    statuses = [r["status"] for r in results]
    if statuses and all(s == "pass" for s in statuses):
        return "pass"
    if any(s in ("fail", "timeout", "error") for s in statuses):
        return "fail"
    return "incomplete"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0 or not math.isfinite(x):
            return str(x)
        return f"{x:.3g}" if (abs(x) < 1e-3 or abs(x) >= 1e4) else f"{x:.4g}"
    return str(x)


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: verdict, machine, one row per step, then the details of every check."""
    lines = [f"# GPU check: {report['status'].upper()}", ""]
    env = report.get("environment") or {}
    if env:
        lines.append("Machine: " + ", ".join(f"{k} {_fmt(v)}" for k, v in env.items()))
        lines.append("")
    if report.get("git_commit"):
        lines += [f"Commit: {report['git_commit']}", ""]
    lines.append(f"Wall time {report['wall_s']:.0f} s of the {report['budget_s']:.0f} s budget "
                 f"(set-up {report['setup']['seconds']:.0f} s, {report['setup']['status']}).")
    lines += ["", "| step | status | seconds / budget | numbers (value vs limit) |", "|---|---|---|---|"]
    setup = report["setup"]
    lines.append(f"| set-up | {setup['status']} | {setup['seconds']:.0f} / {setup['budget_s']:.0f} | "
                 + "; ".join(f"{s['name']}: {s['status']}" for s in setup["steps"]) + " |")
    for r in report["checks"]:
        nums = "; ".join(f"{'ok' if c['ok'] else 'FAIL'} {c['name']} {_fmt(c['value'])} {c['op']} {_fmt(c['limit'])}"
                         for c in r.get("comparisons", []))
        if r["status"] != "pass" and r.get("reason"):
            nums = (nums + "; " if nums else "") + r["reason"].replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {r['name']} | {r['status']} | {r.get('seconds', 0.0):.0f} / {r['budget_s']:.0f} | {nums} |")
    passed = [r["name"] for r in report["checks"] if r["status"] == "pass"]
    not_run = [r["name"] for r in report["checks"] if r["status"] != "pass"]
    lines += ["", "Paths verified on this GPU: " + (", ".join(passed) or "none") + ".",
              "Paths NOT verified (failed, timed out, crashed or skipped): " + (", ".join(not_run) or "none") + "."]
    for r in report["checks"]:
        lines += ["", f"## {r['name']}: {r['status']}", "", r.get("title", "")]
        if r.get("reason"):
            lines += ["", f"Reason: {r['reason']}"]
        if r.get("numbers"):
            lines += ["", "| number | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in r["numbers"].items()]
        if r.get("log"):
            lines += ["", f"Log: `{r['log']}`"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out_dir`` (atomically)."""
    from salt.utils import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def render_plan(checks: Sequence[CheckSpec], steps: Sequence[SetupStep], argv_of: Any) -> str:
    """The dry run's text: set-up commands, then each check with budget, command and tolerances."""
    lines = [f"salt gpu-check plan: total budget {TOTAL_BUDGET_S:.0f} s (set-up {SETUP_BUDGET_S:.0f} s + checks "
             f"{sum(c.budget_s for c in checks):.0f} s); each step is killed at its own budget or when the "
             "total runs out.", "", "Set-up (skipped when the venv's .installed marker is newer than pyproject.toml):"]
    for s in steps:
        lines.append(f"  [{s.timeout_s:.0f} s{', optional' if s.optional else ''}] {s.shell()}")
        if s.why:
            lines.append(f"      # {s.why}")
    lines += ["", "Checks:"]
    for i, c in enumerate(checks, 1):
        lines.append(f"  {i}. {c.name} [{c.budget_s:.0f} s]: {c.title}")
        lines.append(f"     {c.what}")
        for k, t in c.tolerances.items():
            lines.append(f"       {k} {t.text()}")
        lines.append(f"     $ {shlex.join(argv_of(c))}")
    return "\n".join(lines) + "\n"
