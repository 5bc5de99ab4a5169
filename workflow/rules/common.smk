"""Config validation and grid expansion (parse time). Every path below depends only on wildcards."""

import copy
import json
import os
import sys
from pathlib import Path


# Jobs run `python -m salt.cli ...` from this checkout (also inside --sdm conda environments, where
# salt is not installed): shell rules get the repository on PYTHONPATH, scripts add it to sys.path.
# Without --sdm conda, jobs use the Python that runs Snakemake (its bin/ first on PATH), so an
# un-activated virtualenv works too.
REPO = str(Path(workflow.basedir).parent)
_PREFIX = f"export PYTHONPATH={REPO}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if "conda" not in {str(m).lower() for m in workflow.deployment_settings.deployment_method}:
    _PREFIX += f"export PATH={Path(sys.executable).parent}:$PATH; "
shell.prefix(_PREFIX)
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # parse-time checks import salt from this checkout

from salt.utils import deep_merge  # noqa: E402

# ---------------------------------------------------------------- validation


def _check_config(cfg):
    """Check ``cfg`` against its declarations (salt/workflow_config.py) and fill every default, in
    place; raise ValueError naming the key path, the bad value and the fix."""
    from salt.workflow_config import load_workflow_config

    try:
        resolved = load_workflow_config(cfg)
    except ValueError as exc:
        raise ValueError(f"config error (every key: salt/workflow_config.py, or workflow/schemas/config.schema.yaml):\n"
                         f"  {exc}") from None
    cfg.clear()
    cfg.update(resolved)
    from salt.workflow_checks import check_paths  # every path the config names, before any job runs

    try:
        check_paths(cfg, REPO)
    except ValueError as exc:
        raise ValueError(f"config error: {exc}") from None


_check_config(config)

# ---------------------------------------------------------------- paths

# Every output of this config lives under results_dir, so two configs with different results_dir
# can run in one checkout (their output sets are disjoint); the MLflow database (tracking.uri) is
# the only thing they share.
RESULTS = config["results_dir"]


def R(path):
    """``path`` (may hold {wildcards}) inside this config's results_dir."""
    return f"{RESULTS}/{path}"


RUN_DIR = R("{study}/runs/{model}/{task}/{method}/G{G}/seed{seed}")
EVAL_METRICS = R("{study}/eval/{model}/{task}/{method}/G{G}/seed{seed}/{benchmark}/metrics.json")
PARENT_JSON = R("{study}/mlflow_parent.json")
PROXY_JSON = R("proxy/{model}/proxy.json")
STUDY_TABLE_MD = R("{study}/table.md")
STUDY_TABLE_CSV = R("{study}/table.csv")
from salt.figures.figures import FIGURES as FIGURE_NAMES  # noqa: E402 - the one list of figures

wildcard_constraints:
    study="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    task="[A-Za-z0-9][A-Za-z0-9_.-]*",
    method="[A-Za-z0-9][A-Za-z0-9_.-]*",
    benchmark="[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset="[A-Za-z0-9][A-Za-z0-9_.-]*",
    G="[0-9]+",
    seed="[0-9]+",
    warmup="[0-9]+",

# ---------------------------------------------------------------- the grid


def prompts_per_step(study, G):
    s = config["studies"][study]
    return s["prompts_per_step"] if s["prompts_per_step"] is not None else s["rollout_budget"] // int(G)


def study_jobs(study):
    """Every training job of ``study`` as a dict of wildcard values."""
    s = config["studies"][study]
    return [
        dict(study=study, model=m, task=t, method=meth, G=str(g), seed=str(seed))
        for m in s["models"] for t in s["tasks"] for meth in s["methods"]
        for g in s["group_sizes"] for seed in s["seeds"]
    ]


JOBS = [job for study in config["studies"] for job in study_jobs(study)]


def warmup_of(study, seed):
    """The warm-up model of a job: the warm-up is a random factor of the design, so replicate r trains
    from its own warm-up SFT (SFT seed r) with RL seed r (docs/design.md), unless the study fixes
    `warmup_seed` (a seed_variance study: several RL seeds on one warm-up)."""
    fixed = config["studies"][study]["warmup_seed"]
    return int(seed) if fixed is None else int(fixed)


def warmup_dir(model, warmup):
    return R(f"models/{model}/warmup{warmup}")


def model_path(model, warmup=0):
    path = config["models"][model]["path"]
    return path if path else f"{warmup_dir(model, warmup)}/final"


def data_file(dataset):
    return R(f"data/{dataset}/data.jsonl")


def run_config_dict(study, model, task, method, G, seed):
    """Base run config <- model <- task <- study <- method overrides <- values fixed by the wildcards."""
    s, t, m = config["studies"][study], config["tasks"][task], config["methods"][method]
    cfg = copy.deepcopy(config["run"])
    for override in (config["models"][model]["run"], t["run"], s["run"], m["run"]):
        cfg = deep_merge(cfg, override)
    G = int(G)
    fixed = {
        "seed": int(seed),
        "model": {"path": model_path(model, warmup_of(study, seed))},
        "data": {"train": data_file(t["train"]), "eval": data_file(t["eval"]) if t["eval"] else None},
        "rollout": {"group_size": G, "prompts_per_step": prompts_per_step(study, G)},
        "tracking": {
            "enabled": config["tracking"]["enabled"],
            "uri": config["tracking"]["uri"],
            "experiment": config["tracking"]["experiment"],
            "run_name": f"{study}/{model}/{task}/{method}/G{G}/seed{seed}",
            "tags": {"study": study, "model": model, "task": task, "method": method,
                     "group_size": str(G), "seed": str(seed), "warmup": str(warmup_of(study, seed))},
        },
    }
    if m["generate_factor"]:
        fixed["algorithm"] = {"selection": {"n": m["generate_factor"] * G}}
    if config["sandbox"]["allow_unisolated"]:  # the workflow-wide opt-in reaches every run config
        fixed["sandbox"] = {"allow_unisolated": True}
    return deep_merge(cfg, fixed)


def _check_run_configs():
    """Build the RunConfig of every job so that a bad override fails at parse time, naming the job."""
    from salt.train.config import from_dict

    for job in JOBS:
        cfg = run_config_dict(**job)  # devices and installed backends are checked when the job runs
        try:
            from_dict(cfg).validate(check_paths=False, check_devices=False)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(
                f"config error in the run config of {RUN_DIR.format(**job)} (base `run` + the `run` "
                f"overrides of models/tasks/studies/methods): {exc}"
            ) from exc


_check_run_configs()

# ---------------------------------------------------------------- input functions


def run_dir(w):
    return RUN_DIR.format(**{k: w[k] for k in ("study", "model", "task", "method", "G", "seed")})


def model_input(w):
    """The warm-up SFT output when the model is built by the workflow (a training job: its replicate's
    warm-up; the proxy validation: warm-up 0); nothing for hub/local models."""
    if config["models"][w.model]["path"]:
        return []
    wc = dict(w.items())
    warmup = warmup_of(wc["study"], wc["seed"]) if "seed" in wc else 0
    return f"{warmup_dir(w.model, warmup)}/metrics.json"


def train_data_inputs(w):
    task = config["tasks"][w.task]
    out = [data_file(task["train"])]
    if task["eval"]:
        out.append(data_file(task["eval"]))
    return out


def prepare_args(w):
    d = config["datasets"][w.dataset]
    args = [d["name"]]
    if d["source"]:
        args += ["--source", d["source"]]
    if d["limit"]:
        args += ["--limit", str(d["limit"])]
    args += ["--seed", str(d["seed"])]
    for key, value in d["set"].items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return " ".join(_quote(a) for a in args)


def sft_args(w):
    m = config["models"][w.model]
    t = config["tracking"]
    args = ["--set", f"tracking.enabled={json.dumps(t['enabled'])}", "--set", f"tracking.uri={t['uri']}",
            "--set", f"tracking.experiment={t['experiment']}",
            "--set", f"tracking.run_name=warmup_sft/{w.model}/warmup{w.warmup}"]
    if m["sft_config"]:
        args += ["--config", m["sft_config"]]
    for key, value in m["sft_set"].items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    args += ["--set", f"seed={int(w.warmup)}"]  # last: the wildcard is the SFT seed
    return " ".join(_quote(a) for a in args)


def _quote(text):
    import shlex

    return shlex.quote(str(text))


def train_launcher(wildcards, resources, threads):
    """How `salt train` starts. compute.train.nodes = N > 1: srun runs one salt.train.multinode per node
    (the job has N nodes and N tasks, resources_of), each execs `accelerate launch` with its machine rank,
    the machine count and the rendezvous host taken from SLURM's environment. The step's geometry is
    given to srun explicitly: the SLURM plugin's job step drops the allocation's SLURM_* variables, and
    the job's own resources (`--set-resources train:nodes=...` included) are what it was granted."""
    c = config["compute"]
    if c["launcher"] != "accelerate":
        return "python -m salt.cli train"
    launch = f"--config_file {_quote(c['accelerate_config'])} -m salt.cli train"
    if c["train"]["nodes"] > 1:
        gpu = c["train"]["gpu"]
        step = f"--nodes={resources.nodes} --ntasks={resources.tasks} --cpus-per-task={threads}"
        if gpu:
            step += f" --gres={resources.gres}"
        return (f"srun {step} --kill-on-bad-exit=1 python -m salt.train.multinode --processes-per-node {gpu or 1} "
                f"-- {launch}")
    return f"accelerate launch {launch}"


def eval_args(w):
    b = config["benchmarks"][w.benchmark]
    return " ".join([
        "--n", str(b["n"]),
        "--temperature", str(b["temperature"]),
        "--top-p", str(b["top_p"]),
        "--max-new-tokens", str(b["max_new_tokens"]),
        "--ks", ",".join(str(k) for k in b["ks"]),
        "--backend", config["compute"]["eval_backend"],
        "--seed", str(w.seed),
    ] + (["--tracking-uri", _quote(config["tracking"]["uri"])] if config["tracking"]["enabled"] else [])
      + (["--allow-unisolated"] if config["sandbox"]["allow_unisolated"] else []))


def proxy_args(w):
    p, t = config["proxy"], config["tracking"]
    args = ["--n-prompts", str(p["n_prompts"]), "--group-size", str(p["group_size"]),
            "--max-new-tokens", str(p["max_new_tokens"]), "--seed", "0"]
    if t["enabled"]:
        args += ["--tracking-uri", t["uri"], "--experiment", t["experiment"]]
    else:
        args += ["--no-tracking"]
    return " ".join(_quote(a) for a in args)


def eval_data(w):
    return data_file(config["benchmarks"][w.benchmark]["dataset"])


def all_datasets():
    return sorted(config["datasets"])


def all_train_done():
    return [f"{RUN_DIR.format(**job)}/DONE" for job in JOBS]


def all_eval_metrics():
    return [
        EVAL_METRICS.format(benchmark=b, **job)
        for job in JOBS for b in config["studies"][job["study"]]["benchmarks"]
    ]


def proxy_models():
    return config["proxy"]["models"] if config["proxy"]["enabled"] else []


def all_proxy():
    return [PROXY_JSON.format(model=m) for m in proxy_models()]


def all_warmups():
    """{model: {warmup seed: the warm-up SFT's metrics.json}} of every model the workflow builds:
    one warm-up per replicate seed of any study (its own evaluation on the held-out split)."""
    out = {}
    for job in JOBS:
        if not config["models"][job["model"]]["path"]:
            w = warmup_of(job["study"], job["seed"])
            out.setdefault(job["model"], {})[w] = f"{warmup_dir(job['model'], w)}/metrics.json"
    for m in proxy_models():
        if not config["models"][m]["path"]:
            out.setdefault(m, {}).setdefault(0, f"{warmup_dir(m, 0)}/metrics.json")
    return {m: dict(sorted(ws.items())) for m, ws in sorted(out.items())}


def all_warmup_metrics():
    return [path for ws in all_warmups().values() for path in ws.values()]


def all_parents():
    return [PARENT_JSON.format(study=s) for s in config["studies"]]


def manifest():
    """What aggregate/figures need to know about each run (plain data, passed as params)."""
    runs = []
    for job in JOBS:
        study = config["studies"][job["study"]]
        method = config["methods"][job["method"]]
        runs.append({
            **job,
            "G": int(job["G"]),
            "seed": int(job["seed"]),
            "warmup": warmup_of(job["study"], job["seed"]),
            "kind": study["kind"],
            "label": method["label"] or job["method"],
            "prompts_per_step": prompts_per_step(job["study"], job["G"]),
            "run_dir": RUN_DIR.format(**job),
            "benchmark": R("benchmarks/train/{study}/{model}/{task}/{method}/G{G}/seed{seed}.tsv").format(**job),
            "evals": {b: EVAL_METRICS.format(benchmark=b, **job) for b in study["benchmarks"]},
        })
    return {
        "runs": runs,
        "proxy": {m: PROXY_JSON.format(model=m) for m in proxy_models()},
        "warmups": {m: {str(w): p for w, p in ws.items()} for m, ws in all_warmups().items()},
        "parents": {s: PARENT_JSON.format(study=s) for s in config["studies"]},
        "study_tables": {s: {"md": STUDY_TABLE_MD.format(study=s), "csv": STUDY_TABLE_CSV.format(study=s)}
                         for s in config["studies"]},
        "figures": config["figures"],
        "tracking": config["tracking"],
        "report": config["report"],
        "sandbox": config["sandbox"],
    }


def resources_of(kind):
    r = config["compute"][kind]
    out = {"gpu": r["gpu"], "mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["threads"]}
    if r["gpu_model"]:
        out["gpu_model"] = r["gpu_model"]
    site = config.get("slurm") or {}  # SLURM site settings; local runs ignore slurm_* resources
    partition = r["slurm_partition"] or site.get("gpu_partition" if r["gpu"] else "cpu_partition")
    if partition:
        out["slurm_partition"] = partition
    if site.get("account"):
        out["slurm_account"] = site["account"]
    if r["nodes"] > 1:
        # one SLURM job of N nodes with N tasks (sbatch --nodes=N --ntasks=N: one per node); `mpi` tells
        # the SLURM plugin that the rule's shell calls srun itself (train_launcher)
        out.update(nodes=r["nodes"], tasks=r["nodes"], mpi="srun")
        if r["gpu"]:  # --gpus counts GPUs over the whole job; --gres=gpu:N is per node
            out["gres"] = f"gpu:{r['gpu_model'] + ':' if r['gpu_model'] else ''}{r['gpu']}"
            out["tasks_per_gpu"] = 0  # the plugin would otherwise pass --ntasks-per-gpu=<tasks>
            for key in ("gpu", "gpu_model"):
                out.pop(key, None)
    return out


def tracking_uri_shared_file():
    """The SQLite file that jobs would share, or None (tracking off, or a server URI).

    MLFLOW_TRACKING_URI wins over tracking.uri in every job (salt.tracking.resolve_uri).
    """
    t = config["tracking"]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or t["uri"]
    return uri if t["enabled"] and uri.startswith("sqlite:") else None


onstart:
    if config["compute"]["train"]["nodes"] > 1 and not workflow.non_local_exec:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(
            f"compute.train.nodes={config['compute']['train']['nodes']}: a training job across several nodes "
            "runs under SLURM only (--profile profiles/slurm); set compute.train.nodes: 1 to run here")
    # Jobs on cluster nodes must not share one SQLite file (over a network file system runs get
    # lost or corrupted): with a remote executor (SLURM) they log to an MLflow tracking server.
    if workflow.non_local_exec and tracking_uri_shared_file():
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(
            f"tracking.uri={tracking_uri_shared_file()} is a SQLite file, but jobs run on "
            f"{workflow.executor_plugin.name}: start the tracking server on this host "
            "(make tracking-server; it prints http://HOST:PORT) and pass its URI with "
            "--config 'tracking={uri: http://HOST:PORT}' (or tracking.uri in your site file), "
            "or turn tracking off (tracking.enabled: false). See README, Running on a cluster."
        )


def threads_of(kind):
    return config["compute"][kind]["threads"]


CONDA_ENV = f"../../envs/{config['compute']['env']}.yaml"
