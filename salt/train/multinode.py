"""One ``accelerate launch`` per machine of a multi-node training job, its machine settings read from
SLURM's environment.

The ``train`` rule of a job with ``compute.train.nodes = N > 1`` asks SLURM for N nodes and N tasks
(one per node) and runs, inside that allocation::

    srun --nodes=N --ntasks=N --cpus-per-task=T --kill-on-bad-exit=1 python -m salt.train.multinode \\
        --processes-per-node K -- --config_file config/accelerate/ddp.yaml -m salt.cli train --config ... --out ...

Each task (one per node) then execs ``accelerate launch`` with ``--num_machines`` (the step's task
count, ``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS``), ``--machine_rank`` (``SLURM_PROCID``: with one
task per node, the node's index), ``--main_process_ip`` (the first host of ``SLURM_STEP_NODELIST``
/ ``SLURM_JOB_NODELIST``, expanded by ``scontrol show hostnames``: task 0 runs there; its SLURM
``NodeAddr`` when the node's name does not resolve),
``--main_process_port`` (29500 + ``SLURM_JOB_ID`` mod 20000 unless given: the same on every node,
different for jobs sharing a node) and ``--num_processes`` = K x N (Accelerate counts processes
over all machines). Several tasks on ONE node (``SLURM_NNODES = 1``) stand in for several
machines (the CI's single-node SLURM); on several nodes the task count must equal the node count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MACHINE_FLAGS = ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port", "--num_processes")


@dataclass(frozen=True)
class Machines:
    """Where this launcher sits in the job: what ``accelerate launch`` needs for several machines."""

    num_machines: int
    machine_rank: int
    main_process_ip: str
    main_process_port: int


def scontrol_hostnames(nodelist: str) -> list[str]:
    """SLURM's expansion of a node list (``node[01-03],gpu7`` -> one host per line)."""
    if shutil.which("scontrol") is None:
        raise RuntimeError(f"cannot expand the SLURM node list {nodelist!r}: `scontrol` is not on PATH")
    res = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    if res.returncode != 0 or not res.stdout.split():
        raise RuntimeError(f"`scontrol show hostnames {nodelist}` failed: {res.stderr.strip() or 'no hosts'}")
    return res.stdout.split()


def scontrol_node_addr(node: str) -> str:
    """The address SLURM reaches ``node`` at (its ``NodeAddr``; a node's name need not resolve)."""
    res = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=60)
    for field in res.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    raise RuntimeError(f"SLURM node {node!r} does not resolve and `scontrol show node {node}` gives no NodeAddr: "
                       f"{res.stderr.strip() or res.stdout.strip()[:200]}")


def resolvable_host(host: str, node_addr: Callable[[str], str] = scontrol_node_addr) -> str:
    """``host`` when its name resolves, else SLURM's ``NodeAddr`` for it (a node named apart from its host)."""
    try:
        socket.getaddrinfo(host, None)
        return host
    except OSError:
        return node_addr(host)


def _int_env(env: Mapping[str, str], *names: str) -> int:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not an integer") from None
    raise ValueError(f"{' / '.join(names)} not set: `python -m salt.train.multinode` must run inside a SLURM job "
                     "step, one task per node (srun --nodes=N --ntasks=N ...)")


def machines_from_slurm(env: Mapping[str, str], port: int | None = None,
                        hostnames: Callable[[str], list[str]] = scontrol_hostnames,
                        address: Callable[[str], str] = resolvable_host) -> Machines:
    """This task's :class:`Machines` from a SLURM job step's environment (module doc).

    A node list without ``[`` or ``,`` is a single host name and is used as is; any other is
    expanded by ``hostnames`` (``scontrol show hostnames``). The first host goes through ``address``
    (its name if it resolves, else SLURM's ``NodeAddr``)."""
    tasks = _int_env(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    rank = _int_env(env, "SLURM_PROCID")
    nodes = _int_env(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES")
    if nodes > 1 and tasks != nodes:
        raise ValueError(f"{tasks} tasks on {nodes} nodes: one launcher per node is needed "
                         "(sbatch and srun --nodes=N --ntasks=N)")
    if not 0 <= rank < tasks:
        raise ValueError(f"SLURM_PROCID={rank} is outside the step's {tasks} tasks")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("SLURM_STEP_NODELIST / SLURM_JOB_NODELIST not set: run inside a SLURM job step")
    first = address(nodelist if not any(c in nodelist for c in "[,") else hostnames(nodelist)[0])
    if port is None:
        port = 29500 + _int_env(env, "SLURM_JOB_ID") % 20000
    if not 0 < port < 65536:
        raise ValueError(f"main process port {port} is not a TCP port")
    return Machines(num_machines=tasks, machine_rank=rank, main_process_ip=first, main_process_port=port)


def launch_argv(m: Machines, accelerate_args: list[str], processes_per_node: int) -> list[str]:
    """``accelerate launch`` with this machine's flags before the caller's own arguments."""
    clash = [a for a in accelerate_args if a.split("=", 1)[0] in MACHINE_FLAGS]
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by `salt.train.multinode` from SLURM's environment; "
                         "remove them from the launch arguments")
    if processes_per_node < 1:
        raise ValueError(f"--processes-per-node {processes_per_node}: must be >= 1")
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--num_machines", str(m.num_machines), "--machine_rank", str(m.machine_rank),
            "--main_process_ip", m.main_process_ip, "--main_process_port", str(m.main_process_port),
            "--num_processes", str(processes_per_node * m.num_machines), *accelerate_args]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m salt.train.multinode",
                                 description="accelerate launch on this machine of a multi-node SLURM job")
    ap.add_argument("--processes-per-node", type=int, required=True,
                    help="training processes on each machine (its GPU count; 1 on CPU)")
    ap.add_argument("--main-process-port", type=int, default=None,
                    help="rendezvous port on the first node (default 29500 + SLURM_JOB_ID mod 20000)")
    ap.add_argument("--dry-run", action="store_true", help="print the accelerate launch command instead of running it")
    ap.add_argument("accelerate_args", nargs=argparse.REMAINDER,
                    help="-- then the arguments of accelerate launch (--config_file ... -m salt.cli train ...)")
    args = ap.parse_args(argv)
    rest = args.accelerate_args[1:] if args.accelerate_args[:1] == ["--"] else args.accelerate_args
    if not rest:
        ap.error("nothing to launch: give `-- --config_file CFG -m salt.cli train --config RUN.yaml --out DIR`")
    try:
        m = machines_from_slurm(os.environ, args.main_process_port)
        cmd = launch_argv(m, rest, args.processes_per_node)
    except (ValueError, RuntimeError) as exc:
        print(f"salt.train.multinode: {exc}", file=sys.stderr)
        return 2
    print(f"salt.train.multinode: machine {m.machine_rank + 1} of {m.num_machines}, "
          f"rendezvous {m.main_process_ip}:{m.main_process_port}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
