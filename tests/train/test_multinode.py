"""One training job across several machines (``salt.train.multinode``, ``compute.train.nodes``).

Fast: the SLURM environment -> ``accelerate launch`` machine flags, and the errors that name the fix.

Slow, for real on this machine: two launchers started as two SLURM tasks would start them (the
environment ``srun`` gives each task), each one machine of one process, rendezvous on 127.0.0.1 over
gloo, ``config/accelerate/ddp.yaml``. Their 3 optimizer steps on fixed mini-batches equal one process
within 1e-5 (the worker and the comparison of ``tests/train/test_fsdp.py``), and their training loop
equals, number for number, the same loop launched as ONE machine with two processes. The same job
through the CI's single-node SLURM is in ``tests/workflow/test_slurm_dag.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from salt.train.multinode import Machines, launch_argv, machines_from_slurm, main
from tests.train.test_ddp import _free_port
from tests.train.test_fsdp import REPO, _batches, check_against_one_process, launch_cmd, launch_env
from tests.train.test_trainer import _strip_time, policy  # noqa: F401  (fixture)

STEP_ENV = {"SLURM_JOB_ID": "4711", "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_STEP_NUM_NODES": "3",
            "SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_NODELIST": "gpu[07-09]"}


def test_machines_from_a_three_node_step():
    seen = []

    def hostnames(nodelist):
        seen.append(nodelist)
        return ["gpu07", "gpu08", "gpu09"]

    m = machines_from_slurm(STEP_ENV, hostnames=hostnames, address=lambda h: h)
    assert m == Machines(num_machines=3, machine_rank=2, main_process_ip="gpu07", main_process_port=29500 + 4711)
    assert seen == ["gpu[07-09]"]
    # a single host name is used as is; the step's variables win over the job's; an explicit port wins
    env = {"SLURM_JOB_ID": "99", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "big[1-4]", "SLURM_STEP_NODELIST": "salt-node"}
    assert machines_from_slurm(env, port=31000, hostnames=lambda n: pytest.fail("no expansion needed"),
                               address=lambda h: h) == Machines(2, 0, "salt-node", 31000)
    env["SLURM_STEP_NODELIST"] = "localhost"
    assert machines_from_slurm({**env, "SLURM_JOB_ID": "20001"}).main_process_port == 29501


def test_a_node_name_that_does_not_resolve_goes_to_its_slurm_address():
    from salt.train.multinode import resolvable_host

    assert resolvable_host("localhost", node_addr=lambda h: pytest.fail("localhost resolves")) == "localhost"
    assert resolvable_host("no-such-host.invalid", node_addr=lambda h: f"addr-of-{h}") == "addr-of-no-such-host.invalid"


@pytest.mark.parametrize("change, message", [
    ({"SLURM_PROCID": None}, "SLURM_PROCID not set"),
    ({"SLURM_STEP_NUM_TASKS": "6"}, "6 tasks on 3 nodes: one launcher per node"),
    ({"SLURM_PROCID": "3"}, "outside the step's 3 tasks"),
    ({"SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None}, "SLURM_STEP_NODELIST / SLURM_JOB_NODELIST not set"),
    ({"SLURM_JOB_ID": "x"}, "SLURM_JOB_ID='x' is not an integer"),
])
def test_machines_from_slurm_errors_name_the_fix(change, message):
    env = {k: v for k, v in {**STEP_ENV, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        machines_from_slurm(env, hostnames=lambda n: ["gpu07"], address=lambda h: h)


def test_launch_argv_and_dry_run(monkeypatch, capsys):
    m = Machines(2, 1, "node1", 30000)
    argv = launch_argv(m, ["--config_file", "c.yaml", "-m", "salt.cli", "train", "--out", "o"], processes_per_node=4)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    flags = dict(zip(argv[3:13:2], argv[4:13:2]))
    assert flags == {"--num_machines": "2", "--machine_rank": "1", "--main_process_ip": "node1",
                     "--main_process_port": "30000", "--num_processes": "8"}  # Accelerate counts all machines
    assert argv[13:] == ["--config_file", "c.yaml", "-m", "salt.cli", "train", "--out", "o"]
    with pytest.raises(ValueError, match="--machine_rank=0: set by `salt.train.multinode`"):
        launch_argv(m, ["--machine_rank=0", "x.py"], 1)
    for key, value in {**STEP_ENV, "SLURM_PROCID": "1", "SLURM_STEP_NODELIST": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["--processes-per-node", "1", "--dry-run", "--", "--config_file", "c.yaml", "t.py"]) == 0
    out = capsys.readouterr()
    assert "--machine_rank 1 --main_process_ip 127.0.0.1" in out.out and "machine 2 of 3" in out.err
    monkeypatch.delenv("SLURM_PROCID")
    assert main(["--processes-per-node", "1", "--", "t.py"]) == 2
    assert "srun --nodes=N --ntasks=N" in capsys.readouterr().err


def _two_machines(module_args: list[str], job_id: int, timeout: float = 1200) -> list[subprocess.CompletedProcess]:
    """Two launchers on this machine as two SLURM tasks of a one-node step would start them."""
    procs = []
    for rank in range(2):
        env = {**launch_env(), "SLURM_JOB_ID": str(job_id), "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_NODES": "1", "SLURM_NNODES": "1",
               "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_JOB_NODELIST": "127.0.0.1"}
        cmd = [sys.executable, "-m", "salt.train.multinode", "--processes-per-node", "1", "--main-process-port",
               str(_free_port()) if rank == 0 else "{port}", "--", "--config_file",
               str(REPO / "config" / "accelerate" / "ddp.yaml"), "--mixed_precision", "no", "-m", *module_args]
        procs.append([cmd, env])
    procs[1][0][procs[1][0].index("{port}")] = procs[0][0][procs[0][0].index("--main-process-port") + 1]
    running = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for cmd, env in procs]
    out = []
    for p in running:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_two_machines_equal_one_process_and_one_machine(policy, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from salt.utils import read_jsonl

    batches = _batches(policy)
    torch.save(batches, tmp_path / "batches.pt")
    (tmp_path / "machines").mkdir()
    (tmp_path / "one_machine").mkdir()
    t0 = time.perf_counter()
    res = _two_machines(["tests.train.test_fsdp", str(policy), str(tmp_path / "batches.pt"),
                         str(tmp_path / "machines"), "ddp"], job_id=1)
    two_s = time.perf_counter() - t0
    for r in res:
        assert r.returncode == 0, r.stderr[-4000:]
    assert "machine 1 of 2, rendezvous 127.0.0.1" in res[0].stderr and "machine 2 of 2" in res[1].stderr
    ranks = [torch.load(tmp_path / "machines" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    report = {"two_machines_seconds": round(two_s, 1), **check_against_one_process(policy, batches, ranks)}

    t0 = time.perf_counter()
    one = subprocess.run(launch_cmd("ddp.yaml", "tests.train.test_fsdp", [str(policy), str(tmp_path / "batches.pt"),
                                                                          str(tmp_path / "one_machine"), "ddp"]),
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=1200)
    report["one_machine_seconds"] = round(time.perf_counter() - t0, 1)
    assert one.returncode == 0, one.stderr[-4000:]
    a = read_jsonl(tmp_path / "machines" / "loop" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "one_machine" / "loop" / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3] and _strip_time(a) == _strip_time(b)
    wa = load_file(tmp_path / "machines" / "loop" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "one_machine" / "loop" / "final" / "model.safetensors")
    report["loop_max_abs_diff"] = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert wa.keys() == wb.keys() and report["loop_max_abs_diff"] == 0.0
    print(json.dumps(report))
