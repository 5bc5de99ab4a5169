"""The workflow's plan of a checked workflow config: its output layout, its grid of training jobs,
each job's run config and the study manifest that aggregation, figures and the report read.

One owner for what ``workflow/rules/common.smk`` and the tests both need: the Snakefile maps
wildcards to the paths and values below (``Plan(config)``), and the tests call the same functions
without a Snakemake process (``tests/workflow/test_plan.py``; the synthetic runs of
``tests/workflow/synthetic.py`` build their manifest with :func:`manifest_record`).

Paths: :data:`LAYOUT` holds every path of the grid relative to ``results_dir`` with the rules'
wildcards in braces; :meth:`Plan.path` puts one under the config's ``results_dir``.

Run config of a job (:meth:`Plan.run_config`), later wins: the base ``run`` <- ``models.<m>.run``
<- ``tasks.<t>.run`` <- ``studies.<s>.run`` <- ``methods.<x>.run`` <- the values fixed by the
wildcards (seed, model path of the job's warm-up, data files, group size, prompts per step,
tracking names and tags, the PODS generation count, the workflow-wide sandbox opt-in).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from salt.eval.evaluate import output_files as eval_files
from salt.tasks.datasets import output_files as data_files
from salt.train.outputs import run_files, warmup_files
from salt.utils import deep_merge

EVAL_DIR = "{study}/eval/{model}/{task}/{method}/G{G}/seed{seed}/{benchmark}"  # salt evaluate --out
_EVAL_FILES = eval_files(EVAL_DIR)  # the files the evaluation writes there (its own names)
_DATA_FILES = data_files("data/{dataset}")  # salt prepare-data --out: its own file names
_WARMUP_DIR = "models/{model}/warmup{warmup}"
_WARMUP_FILES = warmup_files(_WARMUP_DIR)  # salt sft --out: its own file names
_RUN_DIR = "{study}/runs/{model}/{task}/{method}/G{G}/seed{seed}"
_RUN_FILES = run_files(_RUN_DIR)  # salt train --out: its own file names

# every path of the grid, relative to results_dir ({wildcards} as the rules name them)
LAYOUT = {
    "run_dir": _RUN_DIR,
    "run_done": _RUN_FILES["done"].as_posix(),  # the train rule's only output (the run resumes from the rest)
    "run_model": _RUN_FILES["final"].as_posix(),  # what the evaluate rule evaluates
    "run_config": "{study}/configs/{model}/{task}/{method}/G{G}/seed{seed}.yaml",
    "train_benchmark": "benchmarks/train/{study}/{model}/{task}/{method}/G{G}/seed{seed}.tsv",
    "eval_metrics": _EVAL_FILES["metrics"].as_posix(),
    "eval_problems": _EVAL_FILES["problems"].as_posix(),
    "parent_json": "{study}/mlflow_parent.json",
    "proxy_json": "proxy/{model}/proxy.json",
    "study_table_md": "{study}/table.md",
    "study_table_csv": "{study}/table.csv",
    "tables_dir": "tables",  # salt aggregate --out (its files: salt.figures.registry.TABLE_FILES)
    "figures_dir": "figures",  # salt figures --out (FIGURE_SPECS x FIGURE_FORMATS)
    "warmup_dir": _WARMUP_DIR,
    "warmup_model": _WARMUP_FILES["final"].as_posix(),
    "warmup_metrics": _WARMUP_FILES["metrics"].as_posix(),
    "data_file": _DATA_FILES["data"].as_posix(),
    "data_manifest": _DATA_FILES["manifest"].as_posix(),
}
# results_dir's own folders (every LAYOUT path that is not under a study's folder)
SHARED_DIRS = frozenset(path.split("/")[0] for path in LAYOUT.values() if not path.startswith("{"))
JOB_KEYS = ("study", "model", "task", "method", "G", "seed")  # the wildcards of one training job


def manifest_record(job: Mapping[str, Any], *, warmup: int, kind: str, label: str, prompts_per_step: int,
                    run_dir: str, benchmark: str, evals: Mapping[str, str]) -> dict[str, Any]:
    """One run of the manifest: the job's wildcards (G and seed as ints) and what aggregation reads."""
    return {**{k: job[k] for k in JOB_KEYS}, "G": int(job["G"]), "seed": int(job["seed"]), "warmup": int(warmup),
            "kind": kind, "label": label, "prompts_per_step": int(prompts_per_step), "run_dir": run_dir,
            "benchmark": benchmark, "evals": dict(evals)}


class Plan:
    """The plan of one checked workflow config (:func:`salt.workflow_config.load_workflow_config`'s result)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.results = config["results_dir"]
        self.jobs = [job for study in config["studies"] for job in self.study_jobs(study)]

    # ------------------------------------------------------------------------ paths
    def path(self, name: str, **wildcards: Any) -> str:
        """``LAYOUT[name]`` under results_dir, filled with ``wildcards`` (all of them), or with its
        ``{wildcards}`` left for the rules when none is given."""
        template = f"{self.results}/{LAYOUT[name]}"
        return template.format(**wildcards) if wildcards else template

    def warmup_dir(self, model: str, warmup: int | str) -> str:
        return self.path("warmup_dir", model=model, warmup=warmup)

    def data_file(self, dataset: str) -> str:
        return self.path("data_file", dataset=dataset)

    def model_path(self, model: str, warmup: int | str = 0) -> str:
        """The model a job trains from: ``models.<m>.path``, else the final weights of its warm-up SFT."""
        path = self.config["models"][model]["path"]
        return path if path else self.path("warmup_model", model=model, warmup=warmup)

    # ------------------------------------------------------------------------- grid
    def study_jobs(self, study: str) -> list[dict[str, str]]:
        """Every training job of ``study`` as a dict of wildcard values (strings)."""
        s = self.config["studies"][study]
        return [
            dict(study=study, model=m, task=t, method=meth, G=str(g), seed=str(seed))
            for m in s["models"] for t in s["tasks"] for meth in s["methods"]
            for g in s["group_sizes"] for seed in s["seeds"]
        ]

    def prompts_per_step(self, study: str, G: int | str) -> int:
        s = self.config["studies"][study]
        return s["prompts_per_step"] if s["prompts_per_step"] is not None else s["rollout_budget"] // int(G)

    def warmup_of(self, study: str, seed: int | str) -> int:
        """The warm-up model of a job: the warm-up is a random factor of the design, so replicate r trains
        from its own warm-up SFT (SFT seed r) with RL seed r (docs/design.md), unless the study fixes
        ``warmup_seed`` (a seed_variance study: several RL seeds on one warm-up)."""
        fixed = self.config["studies"][study]["warmup_seed"]
        return int(seed) if fixed is None else int(fixed)

    def proxy_models(self) -> list[str]:
        return self.config["proxy"]["models"] if self.config["proxy"]["enabled"] else []

    def warmups(self) -> dict[str, dict[int, str]]:
        """{model: {warm-up seed: the warm-up SFT's metrics.json}} of every model the workflow builds:
        one warm-up per replicate seed of any study (its own evaluation on the held-out split)."""
        models = self.config["models"]
        out: dict[str, dict[int, str]] = {}
        for job in self.jobs:
            if not models[job["model"]]["path"]:
                w = self.warmup_of(job["study"], job["seed"])
                out.setdefault(job["model"], {})[w] = self.path("warmup_metrics", model=job["model"], warmup=w)
        for m in self.proxy_models():
            if not models[m]["path"]:
                out.setdefault(m, {}).setdefault(0, self.path("warmup_metrics", model=m, warmup=0))
        return {m: dict(sorted(ws.items())) for m, ws in sorted(out.items())}

    # ------------------------------------------------------------------- run config
    def run_config(self, study: str, model: str, task: str, method: str, G: int | str,
                   seed: int | str) -> dict[str, Any]:
        """The plain run config of one job (merge order: module docstring)."""
        c = self.config
        s, t, m = c["studies"][study], c["tasks"][task], c["methods"][method]
        cfg = copy.deepcopy(c["run"])
        for override in (c["models"][model]["run"], t["run"], s["run"], m["run"]):
            cfg = deep_merge(cfg, override)
        G = int(G)
        warmup = self.warmup_of(study, seed)
        fixed: dict[str, Any] = {
            "seed": int(seed),
            "model": {"path": self.model_path(model, warmup)},
            "data": {"train": self.data_file(t["train"]), "eval": self.data_file(t["eval"]) if t["eval"] else None},
            "rollout": {"group_size": G, "prompts_per_step": self.prompts_per_step(study, G)},
            "tracking": {
                "enabled": c["tracking"]["enabled"],
                "uri": c["tracking"]["uri"],
                "experiment": c["tracking"]["experiment"],
                "run_name": f"{study}/{model}/{task}/{method}/G{G}/seed{seed}",
                "tags": {"study": study, "model": model, "task": task, "method": method,
                         "group_size": str(G), "seed": str(seed), "warmup": str(warmup)},
            },
        }
        if m["generate_factor"]:
            fixed["algorithm"] = {"selection": {"n": m["generate_factor"] * G}}
        if c["sandbox"]["allow_unisolated"]:  # the workflow-wide opt-in reaches every run config
            fixed["sandbox"] = {"allow_unisolated": True}
        return deep_merge(cfg, fixed)

    def check_run_configs(self) -> None:
        """Build the RunConfig of every job so that a bad override fails at parse time, naming the job
        (devices and installed backends are checked when the job runs)."""
        from salt.train.config import from_dict

        for job in self.jobs:
            try:
                from_dict(self.run_config(**job)).validate(check_paths=False, check_devices=False)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(
                    f"config error in the run config of {self.path('run_dir', **job)} (base `run` + the `run` "
                    f"overrides of models/tasks/studies/methods): {exc}"
                ) from exc

    # --------------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """What aggregate, figures and the report need to know about each run (plain data)."""
        c = self.config
        runs = []
        for job in self.jobs:
            study = c["studies"][job["study"]]
            runs.append(manifest_record(
                job, warmup=self.warmup_of(job["study"], job["seed"]), kind=study["kind"],
                label=c["methods"][job["method"]]["label"] or job["method"],
                prompts_per_step=self.prompts_per_step(job["study"], job["G"]),
                run_dir=self.path("run_dir", **job), benchmark=self.path("train_benchmark", **job),
                evals={b: self.path("eval_metrics", benchmark=b, **job) for b in study["benchmarks"]}))
        return {
            "runs": runs,
            "proxy": {m: self.path("proxy_json", model=m) for m in self.proxy_models()},
            "warmups": {m: {str(w): p for w, p in ws.items()} for m, ws in self.warmups().items()},
            "parents": {s: self.path("parent_json", study=s) for s in c["studies"]},
            "study_tables": {s: {"md": self.path("study_table_md", study=s), "csv": self.path("study_table_csv", study=s)}
                             for s in c["studies"]},
            "figures": c["figures"],
            "tracking": c["tracking"],
            "report": c["report"],
            "sandbox": c["sandbox"],
        }
