"""The workflow's config (``config/*.yaml``), declared with :mod:`salt.config_spec`.

``workflow/rules/common.smk`` loads the Snakemake config through :func:`load_workflow_config`
(types, defaults, allowed values, unknown keys, then the keys that name other keys; errors name
the key path and the fix) before any job is planned. Keys under ``run``, ``models.*.run``, ``tasks.*.run``, ``studies.*.run`` and
``methods.*.run`` are run-config override dicts (:class:`salt.train.config.RunConfig`), checked by
building the run config of every job of the grid.

``workflow/schemas/config.schema.yaml`` is generated from these declarations, never edited::

    python -m salt.workflow_config > workflow/schemas/config.schema.yaml

(tests/workflow/test_config_schema.py fails when the committed file differs from the output).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Mapping

from salt import config_spec as spec
from salt.config_spec import ConfigError, names_of, option, option_like, section
from salt.eval.evaluate import EvaluateConfig
from salt.figures.claims import ClaimsOptions
from salt.train.config import SandboxConfig, TrackingConfig
from salt.workflow_plan import SHARED_DIRS

_CLAIMS = ClaimsOptions()  # the claims' defaults live with the claims

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # keys of datasets, models, tasks, ... (they become folder names)
# Folders of results_dir that are not studies (a study named like one of them would mix outputs): the
# plan's own (salt.workflow_plan.SHARED_DIRS) and those only the rules' logs and the tracking server name.
RESERVED_DIRS = set(SHARED_DIRS) | {"logs", "mlartifacts", "mlflow-server"}


@dataclass(kw_only=True)
class EvalEngine:
    """The vLLM engine of every evaluation job (``compute.eval_backend: vllm``)."""

    dtype: str = option_like(EvaluateConfig, "vllm_dtype")  # `salt evaluate --vllm-dtype`
    enforce_eager: bool = option_like(EvaluateConfig, "vllm_enforce_eager")  # `salt evaluate --vllm-enforce-eager`


@dataclass(kw_only=True)
class Resources:
    """Resources requested by one kind of job (Snakemake `resources:`; SLURM reads them)."""

    gpu: int = option(0, "GPUs per job (SLURM `--gpus`). 0 = CPU job.", ge=0)
    gpu_model: str | None = option(None, "GPU model asked of SLURM (`--gpus=MODEL:N`), e.g. a100; null = any.")
    mem_mb: int = option(2000, "Memory per job in MB.", ge=100)
    runtime: int = option(30, "Wall-clock limit per job in minutes.", ge=1)
    threads: int = option(1, "CPU threads per job (also OMP_NUM_THREADS / torch threads).", ge=1)
    slurm_partition: str | None = option(None, "SLURM partition for this kind of job; null = the profile's default.")
    nodes: int = option(
        1, "Machines of one job (compute.train only): N > 1 = one SLURM job of N nodes, one `accelerate launch` "
        "per node through srun (python -m salt.train.multinode), needs compute.launcher: accelerate and a SLURM "
        "profile; gpu, mem_mb and threads are per node.", ge=1)


@dataclass(kw_only=True)
class Dataset:
    """One dataset prepared by `salt prepare-data NAME`."""

    name: str = option(help="Loader name known to `salt prepare-data`.",
                       choices=names_of("salt.tasks.datasets:REGISTRY"))
    source: str | None = option(
        None, "Hub id or local JSONL/Parquet path (air-gapped clusters); null = the loader's default source.")
    limit: int | None = option(None, "Keep at most this many rows (null = all).", ge=1)
    seed: int = option(0, "Seed for generation / shuffling.", ge=0)
    set: dict = option({}, "Extra `--set key=value` options of the loader.")


@dataclass(kw_only=True)
class Model:
    """One policy model of the grid."""

    path: str | None = option(
        None, "HF hub id or local model dir. null = built by the `warmup_sft` rule (toy models only).")
    sft_config: str | None = option(None, "YAML passed to `salt sft --config` (only when path is null).")
    sft_set: dict = option({}, "`salt sft --set key=value` overrides (only when path is null).")
    run: dict = option({}, "Run-config overrides for every job of this model (deep-merged after `run`).")


@dataclass(kw_only=True)
class Task:
    """One training task (a training dataset and an optional in-training eval set)."""

    train: str = option(help="Key of `datasets` used as `data.train`.")
    eval: str | None = option(None, "Key of `datasets` used as `data.eval` (scored every `train.eval_every` steps).")
    run: dict = option({}, "Run-config overrides for every job of this task.")


@dataclass(kw_only=True)
class Benchmark:
    """One evaluation benchmark (`salt evaluate`)."""

    dataset: str = option(help="Key of `datasets` holding the benchmark rows.")
    n: int = option_like(EvaluateConfig, "n")
    temperature: float = option_like(EvaluateConfig, "temperature")
    top_p: float = option_like(EvaluateConfig, "top_p", help="nucleus sampling threshold (the paper validates with 0.7)")
    max_new_tokens: int = option_like(EvaluateConfig, "max_new_tokens", 32)
    ks: list[int] = option([1], "k values of pass@k (each <= n).", min_items=1, items={"ge": 1})


@dataclass(kw_only=True)
class Method:
    """One method = run-config overrides deep-merged into the base run config."""

    label: str | None = option(None, "Name shown in figures and tables (default the key).")
    run: dict = option({}, "Run-config overrides: algorithm.loss / salt / focal / selection / vip / dynamic_sampling ...")
    generate_factor: int | None = option(
        None, "For selection methods (PODS): generate generate_factor x G rollouts per prompt and keep G (sets "
        "algorithm.selection.n). null = no over-generation.", ge=2)


@dataclass(kw_only=True)
class Study:
    """One study = a grid of training jobs under one MLflow parent run."""

    kind: str = option(
        "main", "What the figures do with the study: main (method comparison, dynamics, table), scaling_prompts "
        "(G sweep at fixed prompt count), scaling_budget (G sweep at fixed P x G), ablation (SALT variants), "
        "focal_sweep (F-GRPO gamma), seed_variance (RL seeds on one warm-up: the RL-seed variance component of "
        "the claims, docs/design.md).",
        choices=("main", "scaling_prompts", "scaling_budget", "ablation", "focal_sweep", "seed_variance"))
    models: list[str] = option(help="Keys of `models`.", min_items=1)
    tasks: list[str] = option(help="Keys of `tasks`.", min_items=1)
    methods: list[str] = option(help="Keys of `methods`.", min_items=1)
    group_sizes: list[int] = option(help="Rollouts per prompt G.", min_items=1, items={"ge": 2})
    seeds: list[int] = option([0], "Training seeds (CIs are over seeds).", min_items=1, items={"ge": 0})
    warmup_seed: int | None = option(
        None, "Warm-up SFT seed of every job of the study (models built by the workflow); null = each seed r "
        "trains from its own warm-up r (the warm-up is a random factor, docs/design.md).", ge=0)
    prompts_per_step: int | None = option(
        None, "Prompts per rollout batch P (fixed prompt count). Exactly one of this and rollout_budget.", ge=1)
    rollout_budget: int | None = option(
        None, "Rollouts per batch P x G held constant; P = rollout_budget / G (must divide).", ge=2)
    benchmarks: list[str] = option([], "Keys of `benchmarks` every final model of the study is evaluated on.")
    run: dict = option({}, "Run-config overrides for every job of the study (applied before the method's).")


@dataclass(kw_only=True)
class Tracking:
    """MLflow tracking."""

    enabled: bool = option_like(TrackingConfig, "enabled",
                                help="Log to MLflow (parent run per study, nested run per training job).")
    uri: str = option_like(TrackingConfig, "uri", help="Tracking URI (relative SQLite paths are relative to the "
                           "working directory). Several workflows may share one DB.")
    experiment: str = option_like(TrackingConfig, "experiment",
                                  help="MLflow experiment of this config (one per config).")


@dataclass(kw_only=True)
class Compute:
    """Where and how jobs run."""

    env: str = option("cpu", "Conda environment of every rule (envs/cpu.yaml or envs/gpu.yaml) under --sdm conda.",
                      choices=("cpu", "gpu"))
    launcher: str = option(
        "python", "`python` runs `salt train` directly; `accelerate` runs `accelerate launch --config_file "
        "<accelerate_config> -m salt.cli train`.", choices=("python", "accelerate"))
    accelerate_config: str | None = option(
        None, "Accelerate config file (config/accelerate/*.yaml) for launcher=accelerate.")
    eval_backend: str = option("hf", "Generation backend of `salt evaluate`.", choices=names_of("salt.rollout:BACKENDS"))
    eval_vllm: EvalEngine = section(EvalEngine, "The vLLM engine of `salt evaluate` (eval_backend: vllm).")
    light: Resources = section(Resources, "Resources of light jobs (configs, MLflow parent runs, aggregate, figures, "
                                          "report).")
    data: Resources = section(Resources, "Resources of prepare_data.")
    sft: Resources = section(Resources, "Resources of warmup_sft.")
    train: Resources = section(Resources, "Resources of one training job.")
    evaluate: Resources = section(Resources, "Resources of one evaluation job.")
    proxy: Resources = section(Resources, "Resources of validate_proxy.")


@dataclass(kw_only=True)
class Slurm:
    """Site settings read under --profile profiles/slurm (ignored by local runs); command line:
    --config 'slurm={account: A, cpu_partition: P, gpu_partition: Q}'."""

    account: str | None = option(None, "SLURM account of every job (sbatch -A); null = none given (the cluster's "
                                 "default; clusters without accounting need none).")
    cpu_partition: str | None = option(
        None, "Partition of jobs without GPUs (compute.<kind>.gpu = 0); null = the cluster's default partition.")
    gpu_partition: str | None = option(
        None, "Partition of jobs with GPUs (compute.<kind>.gpu > 0); null = the cluster's default partition.")


@dataclass(kw_only=True)
class Proxy:
    """LM-head proxy validation (Figure 5)."""

    enabled: bool = option(True, "Run `salt validate-proxy` on each listed model.")
    models: list[str] = option([], "Keys of `models` to validate (small models only; empty = none).")
    dataset: str | None = option(None, "Key of `datasets` whose prompts are rolled out for the check.")
    n_prompts: int = option(8, "Prompts rolled out for the check.", ge=1)
    group_size: int = option(4, "Rollouts per prompt (the Gram has n_prompts x group_size rows).", ge=2)
    max_new_tokens: int = option(16, "Completion length of the rollouts.", ge=1)


@dataclass(kw_only=True)
class Figures:
    """Figure options."""

    baseline: str = option("grpo", "Baseline method: Figure 1 (Gram heatmap), the paired differences of the results "
                           "table and the claims of the report.")
    salt_method: str = option("grpo_salt", "SALT method drawn against the baseline in Figure 1.")
    smooth: int = option(1, "Moving-average window over steps for the training curves.", ge=1)


@dataclass(kw_only=True)
class Claims:
    """How the report's claims section measures the published claims on the first study of kind main
    (salt/figures/claims.py; the defaults are its ClaimsOptions'; the baseline is figures.baseline,
    curves are smoothed with figures.smooth)."""

    salt_pairs: dict[str, str] = option(dict(_CLAIMS.salt_pairs), "SALT method -> the method it adds SALT to (claim b).")
    pods: str = option(_CLAIMS.pods, "The PODS method (claim c).")
    fgrpo: str = option(_CLAIMS.fgrpo, "The F-GRPO method (claim d).")
    vip: str = option(_CLAIMS.vip, "The VIP method, compared with the baseline's uniform allocation (claim e).")
    accuracy: str = option(_CLAIMS.accuracy, "Held-out metric of claims b and e and of Figure 2's accuracy panel.",
                           pattern=r"^(pass@[0-9]+|avg@n)$", hint="write pass@<k> or avg@n")
    margin: float = option(_CLAIMS.margin, "Non-inferiority margin of \"SALT does not lose accuracy\" (claim b), in accuracy "
                           "units.", ge=0)
    curve_metric: str = option(
        _CLAIMS.curve_metric, "Logged per-step metric of the accuracy curves (claim c, Figure 2): the default "
        "is the accuracy of every sampled rollout on the RL prompts (PODS: before its down-selection).")


@dataclass(kw_only=True)
class Report:
    """HTML report."""

    title: str = option("salt results", "Title of <results_dir>/report.html.")
    claims: Claims = section(Claims, "How the report's claims section measures the published claims.")


@dataclass(kw_only=True)
class Sandbox:
    """Code sandbox policy (salt/tasks/sandbox.py), for code tasks and benchmarks (MBPP, HumanEval)."""

    allow_unisolated: bool = option_like(
        SandboxConfig, "allow_unisolated", help="Allow the code sandbox's weaker fallback when bubblewrap is missing or refused (own session and "
        "supervisor, limits, an unprivileged uid as root, an audit-hook guard; not a security boundary). false = "
        "code training and evaluation jobs stop at start-up with what is missing. true is written into every run "
        "config (sandbox.allow_unisolated), passed as `salt evaluate --allow-unisolated`, and stated in the report.")


@dataclass(kw_only=True)
class WorkflowConfig:
    """Configuration of the salt workflow. Every key is checked at parse time (before any job starts);
    missing keys take the defaults below. Keys under `run`, `models.*.run`, `tasks.*.run`,
    `studies.*.run` and `methods.*.run` are run-config override dicts (salt/train/config.py) and are
    checked by building the RunConfig of every job of the grid. Generated by `python -m
    salt.workflow_config` from salt/workflow_config.py: edit that file, not this one."""

    results_dir: str = option(
        "results", "Folder (relative to the working directory, or absolute) that holds every output of this config: "
        "data, models, runs, eval, tables, figures, report.html, logs, benchmarks. Give each config its own "
        "(config.yaml: results, smoke.yaml: results/smoke, paper.yaml: results/paper) so that several configs can run "
        "in one checkout without touching each other's files; they may still share one MLflow database "
        "(tracking.uri). A study may not be named like a folder the workflow writes here "
        f"({', '.join(sorted(RESERVED_DIRS))}).", pattern=r"\S",
        hint="a folder path such as results or results/smoke")
    tracking: Tracking = section(Tracking, "MLflow tracking.")
    compute: Compute = section(Compute, "Where and how jobs run.")
    slurm: Slurm = section(Slurm, "SLURM site settings (profiles/slurm).")
    datasets: dict[str, Dataset] = option(help="Datasets by key (<results_dir>/data/{dataset}/data.jsonl).",
                                          min_items=1, key_pattern=NAME)
    models: dict[str, Model] = option(help="Policy models by key.", min_items=1, key_pattern=NAME)
    tasks: dict[str, Task] = option(help="Training tasks by key.", min_items=1, key_pattern=NAME)
    benchmarks: dict[str, Benchmark] = option({}, "Evaluation benchmarks by key.", key_pattern=NAME)
    run: dict = option({}, "Base run config of every training job (the `salt train` format, salt/train/config.py; "
                       "`salt train --help-config` lists every key).")
    methods: dict[str, Method] = option(help="Methods by key; a method is a run-config override dict.",
                                        min_items=1, key_pattern=NAME)
    studies: dict[str, Study] = option(help="Studies by key (<results_dir>/{study}/...), each a grid of training jobs.",
                                       min_items=1, key_pattern=NAME)
    proxy: Proxy = section(Proxy, "LM-head proxy validation (Figure 5).")
    figures: Figures = section(Figures, "Figure options.")
    report: Report = section(Report, "HTML report.")
    sandbox: Sandbox = section(Sandbox, "Code sandbox policy, for code tasks and benchmarks.")


DEFINITIONS = {"resources": Resources, "dataset": Dataset, "model": Model, "task": Task, "benchmark": Benchmark,
               "method": Method, "study": Study}


def load_workflow_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Snakemake config checked (each key, then the keys that name other keys) and completed
    with every default, as plain dicts."""
    cfg = spec.to_dict(spec.load(WorkflowConfig, config))
    cfg["results_dir"] = _results_dir(cfg["results_dir"])
    _check_references(cfg)
    return cfg


def _results_dir(raw: str) -> str:
    """``results_dir`` without a trailing slash; it must name a folder and hold no wildcards."""
    raw = raw.strip()
    path = raw.rstrip("/") or raw
    if not path or any(c in path for c in "{}*?[]") or any(c.isspace() for c in path):
        raise ConfigError(f"results_dir={raw!r} must be a folder path without spaces, wildcards or braces "
                          "(e.g. results or results/smoke)")
    return path


def _check_references(cfg: dict[str, Any]) -> None:
    """Keys that name other keys (datasets, models, tasks, methods, benchmarks) and the grid's arithmetic."""
    errors = []

    def need(kind: str, name: str, where: str) -> None:
        if name not in cfg[kind]:
            errors.append(f"  {where}: '{name}' is not a key of `{kind}` (known: {', '.join(cfg[kind]) or 'none'})")

    for name, task in cfg["tasks"].items():
        need("datasets", task["train"], f"tasks.{name}.train")
        if task["eval"]:
            need("datasets", task["eval"], f"tasks.{name}.eval")
    for name, bench in cfg["benchmarks"].items():
        need("datasets", bench["dataset"], f"benchmarks.{name}.dataset")
        if max(bench["ks"]) > bench["n"]:
            errors.append(f"  benchmarks.{name}.ks: k={max(bench['ks'])} needs n >= k (n={bench['n']}); raise n or drop k")
    for name, study in cfg["studies"].items():
        for kind in ("models", "tasks", "methods", "benchmarks"):
            for item in study[kind]:
                need(kind, item, f"studies.{name}.{kind}")
        fixed_p, budget = study["prompts_per_step"], study["rollout_budget"]
        if (fixed_p is None) == (budget is None):
            errors.append(f"  studies.{name}: set exactly one of prompts_per_step (fixed P) and rollout_budget (fixed P x G)")
        if budget is not None:
            for g in study["group_sizes"]:
                if budget % g:
                    errors.append(f"  studies.{name}.rollout_budget={budget} is not divisible by G={g} (group_sizes)")
    proxy = cfg["proxy"]
    if proxy["enabled"] and proxy["models"]:
        for model in proxy["models"]:
            need("models", model, "proxy.models")
        if not proxy["dataset"]:
            errors.append("  proxy.dataset: needed when proxy.models is not empty (a key of `datasets`)")
        else:
            need("datasets", proxy["dataset"], "proxy.dataset")
    reserved = sorted(set(cfg["studies"]) & RESERVED_DIRS)
    if reserved:
        errors.append(f"  studies: {', '.join(reserved)} would share a folder with other outputs under results_dir "
                      f"({', '.join(sorted(RESERVED_DIRS))} are taken); rename the study")
    if cfg["compute"]["launcher"] == "accelerate" and not cfg["compute"]["accelerate_config"]:
        errors.append("  compute.accelerate_config: needed when compute.launcher is accelerate "
                      "(e.g. config/accelerate/multi_gpu.yaml)")
    for kind in ("light", "data", "sft", "evaluate", "proxy"):
        if cfg["compute"][kind]["nodes"] != 1:
            errors.append(f"  compute.{kind}.nodes={cfg['compute'][kind]['nodes']}: only training jobs run on "
                          "several nodes (compute.train.nodes); set it to 1")
    if cfg["compute"]["train"]["nodes"] > 1 and cfg["compute"]["launcher"] != "accelerate":
        errors.append(f"  compute.train.nodes={cfg['compute']['train']['nodes']} needs compute.launcher: accelerate "
                      "(and compute.accelerate_config, e.g. config/accelerate/ddp.yaml)")
    if errors:
        raise ConfigError("keys that name other keys:\n" + "\n".join(errors))


def schema_text() -> str:
    """``workflow/schemas/config.schema.yaml``: the JSON schema of :class:`WorkflowConfig`."""
    import yaml

    schema = spec.json_schema(WorkflowConfig, definitions=DEFINITIONS)
    head = ("# GENERATED by `python -m salt.workflow_config > workflow/schemas/config.schema.yaml` from\n"
            "# salt/workflow_config.py: edit the declarations there, then regenerate (a test compares them).\n")
    return head + yaml.safe_dump(schema, sort_keys=False, width=110, allow_unicode=True)


def main() -> int:
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
