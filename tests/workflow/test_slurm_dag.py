"""The SLURM path for real: a single-node SLURM, the smoke DAG through profiles/local-slurm, MLflow
through a tracking server (issue #14).

The slow test starts munge + slurmctld + slurmd (tests/slurm/local_slurm.py) and an
`mlflow server` (workflow/scripts/tracking_server.py), runs config/smoke.yaml with
`--profile profiles/local-slurm` and the server's URI, then checks that

- the jobs went through sbatch: the SLURM job ids in Snakemake's log are exactly the jobs the
  controller accepted (slurmctld.log) and `squeue` lists them as COMPLETED; every non-local rule
  instance has one, local rules (data, configs, parents, aggregate, figures, report) none;
- every output the workflow plans (`snakemake --summary` before the run) exists;
- the MLflow runs are all on the server, each exactly once (one parent per study, one nested run
  per training job with its evaluation metrics, figures on the parents), none in a SQLite file.

The daemons and the server are stopped whatever happens. Expected outputs and runs come from the
workflow itself, not from the numbers in smoke.yaml. A machine where SLURM cannot start (not
root, packages missing, daemons fail) skips it, with the reason in the pytest summary (-ra).

The fast tests check, without a cluster, that the site settings reach the jobs' resources and that
a SLURM run with a SQLite tracking URI stops before the first job.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.slurm import local_slurm
from tests.train.test_ddp import _free_port

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
CONFIG = REPO / "config" / "smoke.yaml"
PROFILE = REPO / "profiles" / "local-slurm"
SITE = "slurm={cpu_partition: debug, gpu_partition: gpu}"
DAG_TIMEOUT = 2700  # s; the smoke DAG took 7-8 min through SLURM on 2 idle cores


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
              configfiles: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """Snakemake from ``workdir`` as a user would start it from the repository (same two profiles).

    Runs in its own process group, killed as a whole on timeout (no stray local jobs)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", str(CONFIG),
           *map(str, configfiles), "--workflow-profile", str(REPO / "profiles" / "default"), *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"snakemake did not finish within {timeout} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def planned_outputs(workdir: Path, *args: str) -> dict[str, str]:
    """output file -> rule, for every output the workflow plans (`snakemake --summary`)."""
    res = snakemake(workdir, "--summary", *args)
    assert res.returncode == 0, res.stdout[-4000:]
    rows = [line.split("\t") for line in res.stdout.splitlines() if line.count("\t") >= 5]
    assert rows and rows[0][:3] == ["output_file", "date", "rule"], res.stdout[-2000:]
    return {row[0]: row[2] for row in rows[1:]}


def _job_logs(work: Path) -> str:
    """The tails of the SLURM job logs and rule logs (for a failure message)."""
    parts = []
    for path in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log")) + sorted(work.rglob("logs/**/*.log")):
        text = path.read_text(errors="replace").strip()
        if text:
            parts.append(f"--- {path.relative_to(work)}\n" + "\n".join(text.splitlines()[-12:]))
    return "\n".join(parts)[-8000:]


@pytest.fixture
def local_cluster():
    reason = local_slurm.missing_requirements()
    if reason:
        pytest.skip(f"local SLURM cannot start here: {reason}")
    # not under pytest's tmp dir: munged runs as the munge user, who cannot enter a 0700 folder
    state = Path(tempfile.mkdtemp(prefix="salt-slurm-"))
    try:
        try:
            env = local_slurm.up(state)
        except local_slurm.SlurmUnavailable as exc:
            pytest.skip(f"local SLURM did not start: {exc}")
        try:
            yield state, env
        finally:
            local_slurm.down(state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def tracking_server(tmp_path_factory):
    server = local_slurm.tracking_server_module()
    store = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = socket.gethostname()  # what a cluster user gets; a CI box whose name does not resolve uses 127.0.0.1
    try:
        socket.gethostbyname(host)
    except OSError:
        host = "127.0.0.1"
    try:
        yield server.start(store, port=port, advertise=host), store
    finally:
        server.stop(store)


@pytest.mark.slow
def test_smoke_dag_through_local_slurm(tmp_path, local_cluster, tracking_server):
    state, slurm_env = local_cluster
    uri, store = tracking_server
    cfg = yaml.safe_load(CONFIG.read_text())
    results = cfg["results_dir"]
    work = tmp_path / "work"
    work.mkdir()
    env = _env({"SLURM_CONF": slurm_env["SLURM_CONF"]})
    site = ["--config", SITE, f"tracking={{uri: {uri}}}"]
    planned = planned_outputs(work, *site)

    start = time.monotonic()
    res = snakemake(work, "--profile", str(PROFILE), *site, env=env, timeout=DAG_TIMEOUT)
    wall = time.monotonic() - start
    log = res.stdout
    assert res.returncode == 0, log[-8000:] + _job_logs(work)
    print(f"smoke DAG through local SLURM: {wall:.0f} s")

    # --- every planned output exists
    missing = sorted(path for path in planned if not (work / path).exists())
    assert not missing, f"{len(missing)} planned outputs missing, e.g. {missing[:5]}"

    # --- the jobs went through sbatch
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    remote = re.findall(r"(?m)^\s*rule (\w+):", log)
    local = re.findall(r"(?m)^\s*localrule (\w+):", log)
    jobs_per_rule = collections.Counter(planned.values())  # outputs per rule, >= 1 per planned rule
    assert "train" in remote and "warmup_sft" in remote, "training did not run as SLURM jobs"
    assert {"mlflow_parent", "make_run_config", "aggregate", "figures", "report", "prepare_data"} <= set(local)
    assert not set(remote) & set(local)
    assert (set(remote) | set(local)) - {"all"} == set(jobs_per_rule), (sorted(set(remote)), sorted(set(local)))
    assert len(submitted) == len(remote), (len(submitted), len(remote))
    assert collections.Counter(remote)["train"] == jobs_per_rule["train"]  # one DONE output per training job
    slurm_ids = set(submitted.values())
    assert len(slurm_ids) == len(submitted)
    ctld_log = (state / "slurmctld.log").read_text(errors="replace")
    accepted = set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", ctld_log))
    assert accepted == slurm_ids, (sorted(accepted ^ slurm_ids), "jobs not seen by slurmctld / not by snakemake")
    squeue = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%P"], capture_output=True, text=True,
                            env=slurm_env, timeout=60)
    states = {row.split("|")[0]: row.split("|")[1:] for row in squeue.stdout.split()}
    assert {i: states.get(i, ["gone"])[0] for i in slurm_ids} == {i: "COMPLETED" for i in slurm_ids}
    assert {states[i][1] for i in slurm_ids} == {"debug"}  # the site's CPU partition (no GPU jobs in smoke)

    # --- MLflow: everything on the server, each run exactly once
    from mlflow.tracking import MlflowClient

    assert not list(work.rglob("*.db")), "a job wrote a SQLite tracking file instead of using the server"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg["tracking"]["experiment"])
    assert exp is not None, f"experiment {cfg['tracking']['experiment']} missing on {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    names = collections.Counter(r.info.run_name for r in runs)
    assert max(names.values()) == 1, f"duplicated runs: {[n for n, c in names.items() if c > 1]}"
    prefix = results + "/"
    studies = sorted(p[len(prefix):-len("/mlflow_parent.json")] for p, rule in planned.items() if rule == "mlflow_parent")
    train_jobs = sorted(p[len(prefix):-len("/DONE")].replace("/runs/", "/", 1) for p, rule in planned.items()
                        if rule == "train")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("salt.parent") == "true"}
    assert sorted(r.info.run_name for r in parents.values()) == studies, "lost or duplicated parent runs"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert sorted(r.info.run_name for r in nested) == train_jobs, "lost or duplicated training runs"
    other = len(runs) - len(parents) - len(nested)
    assert other == jobs_per_rule["warmup_sft"] + jobs_per_rule["validate_proxy"], sorted(names)
    by_name = {r.info.run_name: r for r in nested}
    evals = [p for p, rule in planned.items() if rule == "evaluate" and p.endswith("/metrics.json")]
    for path in evals:  # <results>/<study>/eval/<model>/<task>/<method>/G<g>/seed<s>/<benchmark>/metrics.json
        study, rest = path[len(prefix):].split("/eval/", 1)
        job, benchmark, _ = rest.rsplit("/", 2)
        metrics = by_name[f"{study}/{job}"].data.metrics
        assert any(k.startswith(f"eval/{benchmark}/") for k in metrics), (study, job, sorted(metrics))
    figures = {Path(p).name for p, rule in planned.items() if rule == "figures" and p.endswith(".png")}
    for run in parents.values():
        arts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
        assert figures <= arts, (run.info.run_name, sorted(figures - arts))
    assert (store / "mlflow.db").exists() and any((store / "artifacts").rglob("*.png"))


MULTINODE_TARGET = "main/runs/toy/toy/grpo_salt/G4/seed0"


def _nodes_config(path: Path, nodes: int = 2) -> Path:
    """compute.train.nodes through the project's DDP config (tracking off: no server needed)."""
    path.write_text(yaml.safe_dump({
        "compute": {"launcher": "accelerate", "accelerate_config": str(REPO / "config" / "accelerate" / "ddp.yaml"),
                    "train": {"nodes": nodes}},
        "tracking": {"enabled": False}}))
    return path


@pytest.mark.slow
def test_two_node_training_job_through_local_slurm(tmp_path, local_cluster):
    """compute.train.nodes: 2 through profiles/local-slurm. The cluster has one node, so the job is
    submitted with `--set-resources train:nodes=1`: one SLURM job of 2 tasks on that node, srun
    starts one salt.train.multinode per task, and the two tasks stand in for two machines (their
    rendezvous host is the node's NodeAddr: its name `salt-node` does not resolve). The run equals,
    number for number, the same run config launched as one machine with two processes."""
    from safetensors.torch import load_file

    from salt.utils import read_jsonl

    state, slurm_env = local_cluster
    work = tmp_path / "work"
    work.mkdir()
    env = _env({"SLURM_CONF": slurm_env["SLURM_CONF"]})
    results = yaml.safe_load(CONFIG.read_text())["results_dir"]
    target = f"{results}/{MULTINODE_TARGET}/DONE"
    start = time.monotonic()
    res = snakemake(work, target, "--profile", str(PROFILE), "--config", SITE, "--set-resources", "train:nodes=1",
                    env=env, configfiles=(_nodes_config(work / "nodes.yaml"),), timeout=DAG_TIMEOUT)
    assert res.returncode == 0, res.stdout[-8000:] + _job_logs(work)
    print(f"two-node training job through local SLURM: {time.monotonic() - start:.0f} s")
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", res.stdout)
    geometry = {}
    for job in submitted:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=slurm_env,
                             timeout=60).stdout
        geometry[job] = dict(re.findall(r"\b(NumNodes|NumTasks)=(\S+)", out))
    train_jobs = [j for j, g in geometry.items() if g.get("NumTasks") == "2"]
    assert len(train_jobs) == 1 and geometry[train_jobs[0]]["NumNodes"] == "1", geometry
    log = (work / results / "logs" / "train" / f"{MULTINODE_TARGET.replace('/runs/', '/', 1)}.log").read_text()
    assert "machine 1 of 2, rendezvous 127.0.0.1" in log and "machine 2 of 2, rendezvous 127.0.0.1" in log, log[-3000:]
    out = work / results / MULTINODE_TARGET
    ref = tmp_path / "one_machine"
    cfg = work / results / MULTINODE_TARGET.replace("/runs/", "/configs/", 1)
    one = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(REPO / "config" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
                          "--main_process_port", str(_free_port()), "-m", "salt.cli", "train",
                          "--config", f"{cfg}.yaml", "--out", str(ref)],
                         cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-4000:]
    a, b = read_jsonl(out / "metrics.jsonl"), read_jsonl(ref / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert len(a) == 3 and strip(a) == strip(b)
    wa, wb = load_file(out / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_scontrol_expands_node_lists(local_cluster, monkeypatch):
    """The node-list expansion salt.train.multinode relies on, by the real `scontrol`."""
    from salt.train.multinode import scontrol_hostnames

    monkeypatch.setenv("SLURM_CONF", local_cluster[1]["SLURM_CONF"])
    assert scontrol_hostnames("salt-node,gpu[07-08]") == ["salt-node", "gpu07", "gpu08"]


def test_multinode_training_rule(tmp_path):
    """compute.train.nodes: 2 (dry run): one job of 2 nodes and 2 tasks whose shell srun-s the
    per-node launcher; refused on a local run (no SLURM), and for kinds other than train."""
    cfg = _nodes_config(tmp_path / "nodes.yaml")
    res = snakemake(tmp_path, "-n", "-p", configfiles=(cfg,))
    assert res.returncode == 0, res.stdout[-4000:]
    blocks = re.findall(r"(?ms)^rule train:\n.*?^\s*resources: ([^\n]*)\nShell command: ([^\n]*)", res.stdout)
    assert blocks
    for resources, shell in blocks:
        assert "nodes=2" in resources and "tasks=2" in resources and "mpi=srun" in resources, resources
        expected = ("srun --nodes=2 --ntasks=2 --cpus-per-task=1 --kill-on-bad-exit=1 python -m salt.train.multinode "
                    f"--processes-per-node 1 -- --config_file {REPO / 'config' / 'accelerate' / 'ddp.yaml'} "
                    "-m salt.cli train --config")
        assert expected in shell, shell
    res = snakemake(tmp_path, "--cores", "1", configfiles=(cfg,), timeout=300)
    assert res.returncode != 0 and "runs under SLURM only (--profile profiles/slurm)" in res.stdout, res.stdout[-3000:]
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("DONE"))
    (tmp_path / "sft.yaml").write_text("compute:\n  sft: {nodes: 2}\n")
    res = snakemake(tmp_path, "-n", configfiles=(tmp_path / "sft.yaml",))
    assert res.returncode != 0 and "compute.sft.nodes=2: only training jobs run on several nodes" in res.stdout


def test_site_settings_reach_the_jobs(tmp_path):
    """account / cpu / gpu partition from --config land in the jobs' resources (dry run, no cluster)."""
    extra = tmp_path / "gpu_train.yaml"
    extra.write_text("compute:\n  train: {gpu: 1}\n")
    res = snakemake(tmp_path, "-n", "--config", "slurm={account: acme, cpu_partition: cpuq, gpu_partition: gpuq}",
                    configfiles=(extra,))
    assert res.returncode == 0, res.stdout[-4000:]
    blocks = re.findall(r"(?ms)^rule (\w+):\n(.*?)^\s*resources: ([^\n]*)", res.stdout)
    resources = collections.defaultdict(set)
    for rule, _, line in blocks:
        resources[rule].add(line)
    assert resources["train"] and all("slurm_partition=gpuq" in r and "slurm_account=acme" in r for r in resources["train"])
    for rule in ("warmup_sft", "evaluate", "validate_proxy"):
        assert resources[rule] and all("slurm_partition=cpuq" in r and "slurm_account=acme" in r
                                       for r in resources[rule]), (rule, resources[rule])
    # unset: nothing is passed, the plugin uses the cluster's default partition and no account
    res = snakemake(tmp_path, "-n")
    assert res.returncode == 0 and "slurm_partition" not in res.stdout and "slurm_account" not in res.stdout


def test_slurm_run_with_sqlite_tracking_stops_before_any_job(tmp_path):
    """On a cluster every job must log to the tracking server: SQLite fails fast, naming the fix."""
    res = snakemake(tmp_path, "--profile", str(PROFILE), "--config", SITE, timeout=300)
    assert res.returncode != 0
    assert "is a SQLite file, but jobs run on slurm" in res.stdout, res.stdout[-3000:]
    assert "make tracking-server" in res.stdout
    assert "has been submitted with SLURM jobid" not in res.stdout
    assert not list(tmp_path.rglob("*.db")), "a job ran and wrote a SQLite tracking file"


def test_tracking_server_logs_runs_and_stops(tmp_path):
    """The server path without a cluster: start (twice: same server), log a run with params, metrics
    and an artifact through salt.tracking, stop; its whole process group is gone afterwards."""
    from salt import tracking as tr

    server = local_slurm.tracking_server_module()
    store = tmp_path / "store"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        uri = server.start(store, port=port, advertise="127.0.0.1")
        assert uri == f"http://127.0.0.1:{port}" and server.start(store, port=port, advertise="127.0.0.1") == uri
        pid = server.read_state(store.resolve())["pid"]
        run = tr.start_run({"enabled": True, "uri": uri, "experiment": "srv"}, run_name="r", out_dir=tmp_path / "run",
                           params={"a": {"b": 1}})
        tr.log_metrics(run, {"m": 0.5}, step=1)
        (tmp_path / "fig.txt").write_text("x")
        tr.log_artifacts(run, tmp_path / "fig.txt", "figures")
        tr.end_run(run)
        again = tr.attach_to_run(tmp_path / "run")  # run.json records the server URI
        got = again.client.get_run(run.run_id)
        assert got.data.params == {"a.b": "1"} and got.data.metrics == {"m": 0.5}
        assert [a.path for a in again.client.list_artifacts(run.run_id, "figures")] == ["figures/fig.txt"]
        assert list((store / "artifacts").rglob("fig.txt")), "artifacts are not stored by the server"
    finally:
        stopped = server.stop(store)
    assert stopped == pid and not server.pid_alive(pid)
    assert server.group_members(pid) == [], "processes of the server's group survived stop()"
    assert server.read_state(store.resolve()) is None
