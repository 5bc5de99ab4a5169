"""The workflow's plan and job arguments as package functions (salt/workflow_plan.py, salt/workflow_jobs.py):
the run-config merge order, the grid, the manifest, without a Snakemake process."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from salt import workflow_jobs
from salt.workflow_config import load_workflow_config
from salt.workflow_plan import JOB_KEYS, LAYOUT, Plan, manifest_record

REPO = Path(__file__).resolve().parents[2]


def smoke(edit=None) -> dict:
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    if edit is not None:
        edit(raw)
    return load_workflow_config(raw)


LEVELS = ("base", "model", "task", "study", "method")


def _set_lr(raw: dict, levels) -> None:
    """train.lr = 1e-(i+1) at each level i of ``levels`` (base run, model, task, study, method)."""
    where = {"base": lambda: raw.setdefault("run", {}),
             "model": lambda: raw["models"]["toy"].setdefault("run", {}),
             "task": lambda: raw["tasks"]["toy"].setdefault("run", {}),
             "study": lambda: raw["studies"]["main"].setdefault("run", {}),
             "method": lambda: raw["methods"]["grpo"].setdefault("run", {})}
    for level in levels:
        where[level]().setdefault("train", {})["lr"] = 10.0 ** -(LEVELS.index(level) + 1)


@pytest.mark.parametrize("n", range(1, len(LEVELS) + 1))
def test_run_config_merge_order(n):
    """Of the levels that set a key, the later one wins: base <- model <- task <- study <- method."""
    cfg = smoke(lambda raw: _set_lr(raw, LEVELS[:n]))
    run = Plan(cfg).run_config("main", "toy", "toy", "grpo", "4", "1")
    assert run["train"]["lr"] == 10.0 ** -n
    assert run["train"]["steps"] == 3  # a key no override names keeps the base value
    # each level alone wins over the base run only
    cfg = smoke(lambda raw: _set_lr(raw, ["base", LEVELS[n - 1]]))
    assert Plan(cfg).run_config("main", "toy", "toy", "grpo", "4", "1")["train"]["lr"] == 10.0 ** -n


def test_the_wildcards_win_over_every_override():
    def edit(raw):
        raw["methods"]["pods"].setdefault("run", {}).update(
            seed=99, rollout={"group_size": 7, "prompts_per_step": 9}, model={"path": "elsewhere"},
            tracking={"run_name": "mine", "experiment": "other"})
    plan = Plan(smoke(edit))
    run = plan.run_config("ablation", "toy", "toy", "pods", "2", "0")
    assert run["seed"] == 0 and run["rollout"]["group_size"] == 2 and run["rollout"]["prompts_per_step"] == 2
    assert run["model"]["path"] == "results/smoke/models/toy/warmup0/final"
    assert run["tracking"]["run_name"] == "ablation/toy/toy/pods/G2/seed0"
    assert run["tracking"]["experiment"] == "salt-smoke"
    assert run["algorithm"]["selection"] == {"rule": "max_variance", "n": 4}  # generate_factor 2 x G
    assert run["rollout"]["backend"] == "hf"  # the base run's key, kept
    budget = plan.run_config("budget", "toy", "toy", "grpo_salt", "4", "0")
    assert budget["rollout"]["prompts_per_step"] == 2  # rollout_budget 8 / G 4
    seedvar = plan.run_config("seedvar", "toy", "toy", "grpo", "4", "6")  # warmup_seed 0: one warm-up
    assert seedvar["seed"] == 6 and seedvar["model"]["path"].endswith("warmup0/final")
    assert seedvar["tracking"]["tags"]["warmup"] == "0"
    assert "sandbox" not in budget
    opt_in = Plan(smoke(lambda raw: raw.setdefault("sandbox", {}).update(allow_unisolated=True)))
    assert opt_in.run_config("budget", "toy", "toy", "grpo_salt", "4", "0")["sandbox"] == {"allow_unisolated": True}


def test_the_base_config_is_never_mutated():
    cfg = smoke()
    before = copy.deepcopy(cfg)
    plan = Plan(cfg)
    for job in plan.jobs:
        plan.run_config(**job)["train"]["lr"] = -1.0
    plan.manifest()
    assert cfg == before


def test_grid_and_manifest():
    cfg = smoke()
    plan = Plan(cfg)
    expected = [(s, m, t, x, g, seed) for s, st in cfg["studies"].items() for m in st["models"] for t in st["tasks"]
                for x in st["methods"] for g in st["group_sizes"] for seed in st["seeds"]]
    assert [tuple(j[k] for k in JOB_KEYS) for j in plan.jobs] == [tuple(map(str, e)) for e in expected]
    man = plan.manifest()
    assert len(man["runs"]) == len(plan.jobs) == 8 + 2 + 2 + 5 + 1  # main 2 x 2 x 2, seedvar, budget, ablation, focal
    run = man["runs"][0]
    assert run == manifest_record(plan.jobs[0], warmup=0, kind="main", label="GRPO", prompts_per_step=2,
                                  run_dir="results/smoke/main/runs/toy/toy/grpo/G2/seed0",
                                  benchmark="results/smoke/benchmarks/train/main/toy/toy/grpo/G2/seed0.tsv",
                                  evals={"toy_test": "results/smoke/main/eval/toy/toy/grpo/G2/seed0/toy_test/metrics.json"})
    assert isinstance(run["G"], int) and isinstance(run["seed"], int)
    assert man["proxy"] == {"toy": "results/smoke/proxy/toy/proxy.json"}
    assert man["warmups"] == {"toy": {str(w): f"results/smoke/models/toy/warmup{w}/metrics.json" for w in (0, 1)}}
    assert man["parents"]["budget"] == "results/smoke/budget/mlflow_parent.json"
    assert man["study_tables"]["focal"] == {"md": "results/smoke/focal/table.md", "csv": "results/smoke/focal/table.csv"}
    assert {k: man[k] for k in ("figures", "tracking", "report", "sandbox")} == {
        k: cfg[k] for k in ("figures", "tracking", "report", "sandbox")}
    # every path of the layout sits under results_dir, wildcards left for the rules
    assert plan.path("run_dir") == "results/smoke/" + LAYOUT["run_dir"]


def test_a_bad_override_names_the_job():
    plan = Plan(smoke(lambda raw: raw["methods"]["grpo"]["run"].update(train={"lr": "fast"})))
    with pytest.raises(ValueError, match=r"the run config of results/smoke/main/runs/toy/toy/grpo/G2/seed0 .*train.lr"):
        plan.check_run_configs()


def test_job_arguments():
    cfg = smoke(lambda raw: raw["tracking"].update(uri="sqlite:///my results/db.db"))
    assert shlex.split(workflow_jobs.prepare_args(cfg, "toy_rl")) == [
        "toy_rl", "--seed", "0", "--set", "n=40", "--set", "levels=[1]"]
    args = shlex.split(workflow_jobs.eval_args(cfg, "toy_test", "3"))
    assert args[args.index("--seed") + 1] == "3" and args[args.index("--tracking-uri") + 1] == "sqlite:///my results/db.db"
    assert "--vllm-dtype" not in args  # the hf backend: no engine options
    # the vLLM evaluation engine's options (compute.eval_vllm) reach `salt evaluate`, and its parser takes them
    vcfg = smoke(lambda raw: raw["compute"].update(eval_backend="vllm", eval_vllm={"dtype": "float32", "enforce_eager": True}))
    vargs = shlex.split(workflow_jobs.eval_args(vcfg, "toy_test", "3"))
    assert vargs[vargs.index("--vllm-dtype") + 1] == "float32" and "--vllm-enforce-eager" in vargs
    from salt import config_spec as spec
    from salt.eval.evaluate import EvaluateConfig, _parser

    parsed = spec.parse_args(_parser(), EvaluateConfig, ["--model", "m", "--benchmark", "b", "--data", "d", "--out", "o", *vargs])
    assert (parsed.backend, parsed.vllm_dtype, parsed.vllm_enforce_eager) == ("vllm", "float32", True)
    default = shlex.split(workflow_jobs.eval_args(smoke(lambda raw: raw["compute"].update(eval_backend="vllm")), "toy_test", "3"))
    assert default[default.index("--vllm-dtype") + 1] == "auto" and "--vllm-enforce-eager" not in default
    sft = shlex.split(workflow_jobs.sft_args(cfg, "toy", "2"))
    assert sft[-2:] == ["--set", "seed=2"] and "tracking.run_name=warmup_sft/toy/warmup2" in sft
    assert "--no-tracking" in workflow_jobs.proxy_args(smoke(lambda raw: raw["tracking"].update(enabled=False)))
    assert workflow_jobs.train_launcher(cfg, SimpleNamespace(), 1) == "python -m salt.cli train"
    res = workflow_jobs.resources_of(cfg, "train")
    assert res["cpus_per_task"] == cfg["compute"]["train"]["threads"] and "nodes" not in res


def test_executor_problems(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = smoke()
    assert workflow_jobs.executor_problem(cfg, remote=False, executor="local") is None
    msg = workflow_jobs.executor_problem(cfg, remote=True, executor="slurm")
    assert msg.startswith("tracking.uri=sqlite:///results/mlflow.db is a SQLite file, but jobs run on slurm")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")  # every job logs to the server instead
    assert workflow_jobs.executor_problem(cfg, remote=True, executor="slurm") is None
    multi = smoke(lambda raw: raw["compute"].update(train={"nodes": 2}, launcher="accelerate",
                                                    accelerate_config="config/accelerate/ddp.yaml"))
    assert "runs under SLURM only" in workflow_jobs.executor_problem(multi, remote=False, executor="local")
    assert workflow_jobs.executor_problem(multi, remote=True, executor="slurm") is None


def test_the_layout_takes_each_file_name_from_its_writer(tmp_path):
    """The files a rule declares are the ones the command writes: the plan's layout is built from the
    writers' own functions (salt evaluate, salt prepare-data, salt sft, salt train), and the rules spell
    none of the file names that the package owns (aggregate's tables, replication, evaluation,
    prepare-data, a warm-up's and a run's files)."""
    from salt.eval.evaluate import output_files as eval_files
    from salt.figures.registry import REPLICATION_FILES, TABLE_FILES, replication_paths, table_paths
    from salt.tasks.datasets import output_files as data_files
    from salt.train.outputs import run_files, warmup_files

    plan = Plan(smoke())
    job = dict(study="s", model="m", task="t", method="x", G=4, seed=1, benchmark="b")
    eval_dir = Path(plan.path("eval_metrics", **job)).parent
    assert eval_files(eval_dir) == {"metrics": Path(plan.path("eval_metrics", **job)),
                                    "problems": Path(plan.path("eval_problems", **job))}
    assert data_files(Path(plan.data_file("d")).parent) == {"data": Path(plan.data_file("d")),
                                                            "manifest": Path(plan.path("data_manifest", dataset="d"))}
    tables = Path(plan.path("tables_dir"))
    assert table_paths(tables) == {k: tables / v for k, v in TABLE_FILES.items()}
    assert set(replication_paths(tables)) == set(REPLICATION_FILES)
    run = {k: job[k] for k in JOB_KEYS}
    run_dir = Path(plan.path("run_dir", **run))
    assert run_files(run_dir)["done"] == Path(plan.path("run_done", **run))
    assert run_files(run_dir)["final"] == Path(plan.path("run_model", **run))
    warmup_dir = Path(plan.warmup_dir("m", 1))
    assert warmup_files(warmup_dir) == {"final": Path(plan.path("warmup_model", model="m", warmup=1)),
                                        "metrics": Path(plan.path("warmup_metrics", model="m", warmup=1))}
    names = set(TABLE_FILES.values()) | set(REPLICATION_FILES.values()) | {
        p.name for p in [*eval_files(".").values(), *data_files(".").values(), *run_files(".").values(),
                         *warmup_files(".").values()]}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = "\n".join(line for line in smk.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = text.replace('"""', "\x00").split("\x00")[0::2]  # outside docstrings
        spelt = {n for n in names if any(f"/{n}" in part or f'"{n}"' in part for part in code)}
        assert not spelt, f"{smk.name} spells {sorted(spelt)}: take the path from the package (salt.workflow_plan.LAYOUT, salt.figures.registry)"


def test_a_study_cannot_take_a_folder_of_the_layout():
    from salt.workflow_config import RESERVED_DIRS
    from salt.workflow_plan import SHARED_DIRS

    assert {"data", "models", "proxy", "tables", "figures", "benchmarks"} == SHARED_DIRS
    assert SHARED_DIRS <= RESERVED_DIRS
