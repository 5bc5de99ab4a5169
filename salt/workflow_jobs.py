"""The command-line arguments, launcher and resources of the workflow's jobs, from a checked workflow
config (:func:`salt.workflow_config.load_workflow_config`).

``workflow/rules/common.smk`` maps each rule's wildcards to these functions' arguments; nothing
here knows Snakemake, so the tests call them directly. Every argument list comes back as one
shell-quoted string.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Mapping


def _quoted(args: list[Any]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def prepare_args(config: Mapping[str, Any], dataset: str) -> str:
    """``salt prepare-data`` arguments of ``datasets.<dataset>`` (the ``--out`` is the rule's)."""
    d = config["datasets"][dataset]
    args = [d["name"]]
    if d["source"]:
        args += ["--source", d["source"]]
    if d["limit"]:
        args += ["--limit", str(d["limit"])]
    args += ["--seed", str(d["seed"])]
    for key, value in d["set"].items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return _quoted(args)


def sft_args(config: Mapping[str, Any], model: str, warmup: int | str) -> str:
    """``salt sft`` arguments of the warm-up ``warmup`` of ``models.<model>``: tracking, its
    ``sft_config`` and ``sft_set``, then the warm-up's seed (last: the wildcard is the SFT seed)."""
    m = config["models"][model]
    t = config["tracking"]
    args = ["--set", f"tracking.enabled={json.dumps(t['enabled'])}", "--set", f"tracking.uri={t['uri']}",
            "--set", f"tracking.experiment={t['experiment']}",
            "--set", f"tracking.run_name=warmup_sft/{model}/warmup{warmup}"]
    if m["sft_config"]:
        args += ["--config", m["sft_config"]]
    for key, value in m["sft_set"].items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    args += ["--set", f"seed={int(warmup)}"]
    return _quoted(args)


def eval_args(config: Mapping[str, Any], benchmark: str, seed: int | str) -> str:
    """``salt evaluate`` sampling arguments of ``benchmarks.<benchmark>`` for the job of RL seed ``seed``."""
    b = config["benchmarks"][benchmark]
    args = ["--n", str(b["n"]), "--temperature", str(b["temperature"]), "--top-p", str(b["top_p"]),
            "--max-new-tokens", str(b["max_new_tokens"]), "--ks", ",".join(str(k) for k in b["ks"]),
            "--backend", config["compute"]["eval_backend"], "--seed", str(seed)]
    if config["compute"]["eval_backend"] == "vllm":
        engine = config["compute"]["eval_vllm"]
        args += ["--vllm-dtype", engine["dtype"]] + (["--vllm-enforce-eager"] if engine["enforce_eager"] else [])
    plain = " ".join(args)  # none of these needs quoting (numbers, names checked by the config)
    if config["tracking"]["enabled"]:
        plain += " --tracking-uri " + shlex.quote(config["tracking"]["uri"])
    if config["sandbox"]["allow_unisolated"]:
        plain += " --allow-unisolated"
    return plain


def proxy_args(config: Mapping[str, Any]) -> str:
    """``salt validate-proxy`` arguments (``proxy.*``, tracking)."""
    p, t = config["proxy"], config["tracking"]
    args = ["--n-prompts", str(p["n_prompts"]), "--group-size", str(p["group_size"]),
            "--max-new-tokens", str(p["max_new_tokens"]), "--seed", "0"]
    if t["enabled"]:
        args += ["--tracking-uri", t["uri"], "--experiment", t["experiment"]]
    else:
        args += ["--no-tracking"]
    return _quoted(args)


def train_launcher(config: Mapping[str, Any], resources: Any, threads: int) -> str:
    """How `salt train` starts. compute.train.nodes = N > 1: srun runs one salt.train.multinode per node
    (the job has N nodes and N tasks, :func:`resources_of`), each execs `accelerate launch` with its machine
    rank, the machine count and the rendezvous host taken from SLURM's environment. The step's geometry is
    given to srun explicitly: the SLURM plugin's job step drops the allocation's SLURM_* variables, and
    the job's own ``resources`` (`--set-resources train:nodes=...` included) are what it was granted."""
    c = config["compute"]
    if c["launcher"] != "accelerate":
        return "python -m salt.cli train"
    launch = f"--config_file {shlex.quote(str(c['accelerate_config']))} -m salt.cli train"
    if c["train"]["nodes"] > 1:
        gpu = c["train"]["gpu"]
        step = f"--nodes={resources.nodes} --ntasks={resources.tasks} --cpus-per-task={threads}"
        if gpu:
            step += f" --gres={resources.gres}"
        return (f"srun {step} --kill-on-bad-exit=1 python -m salt.train.multinode --processes-per-node {gpu or 1} "
                f"-- {launch}")
    return f"accelerate launch {launch}"


def resources_of(config: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The Snakemake resources of a job of ``compute.<kind>`` (SLURM site settings from ``slurm``;
    local runs ignore the slurm_* resources)."""
    r = config["compute"][kind]
    out = {"gpu": r["gpu"], "mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["threads"]}
    if r["gpu_model"]:
        out["gpu_model"] = r["gpu_model"]
    site = config.get("slurm") or {}
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



def executor_problem(config: Mapping[str, Any], remote: bool, executor: str) -> str | None:
    """Why this config cannot run with this executor (``remote``: jobs run on other hosts, e.g. SLURM),
    or None. A multi-node training job needs SLURM; jobs on cluster nodes must not share one SQLite
    file (over a network file system runs get lost or corrupted)."""
    from salt.tracking import shared_sqlite_uri

    nodes = config["compute"]["train"]["nodes"]
    if nodes > 1 and not remote:
        return (f"compute.train.nodes={nodes}: a training job across several nodes runs under SLURM only "
                "(--profile profiles/slurm); set compute.train.nodes: 1 to run here")
    shared = shared_sqlite_uri(config["tracking"])
    if remote and shared:
        return (f"tracking.uri={shared} is a SQLite file, but jobs run on {executor}: start the tracking server "
                "on this host (make tracking-server; it prints http://HOST:PORT) and pass its URI with "
                "--config 'tracking={uri: http://HOST:PORT}' (or tracking.uri in your site file), "
                "or turn tracking off (tracking.enabled: false). See README, Running on a cluster.")
    return None
