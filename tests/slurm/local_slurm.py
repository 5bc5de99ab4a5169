"""Bring up and tear down a throw-away single-node SLURM (munge, slurmctld, slurmd) for tests.

    python tests/slurm/local_slurm.py up   --dir /tmp/salt-slurm   # prints `export SLURM_CONF=...`
    python tests/slurm/local_slurm.py down --dir /tmp/salt-slurm

Needs root and Debian's ``slurmctld slurmd slurm-client munge`` (22.05; ``.ci/run`` installs them).
Everything lives in ``--dir``: slurm.conf, the munge socket, state, spool, PID and log files. One
copy of slurm.conf goes to /etc/slurm/slurm.conf, because the job steps (``srun`` run by the
slurm-jobstep plugin inside each job, which drops ``SLURM_CONF``) only look there; it is written
only when absent or written by this script, and removed by ``down`` (a system SLURM's file is never
touched: ``up`` refuses). Client commands on the submit side also get ``SLURM_CONF``.

The settings (issue #14): one node with the machine's CPUs and 80% of its memory; partitions
``debug`` (default) and ``gpu`` on that node; ``select/cons_tres`` + ``CR_Core_Memory``,
``proctrack/linuxproc``, ``task/none``; no accounting, job accounting gathering or job completion
(so ``sacct`` does not work: the status command must be ``squeue``, and ``MinJobAge`` keeps
finished jobs visible to it); free ports picked at start. ``down`` stops the daemons through their
PID files (TERM, then KILL) and is safe to call on a half-started or already-stopped cluster.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODE = "salt-node"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # where srun inside a job looks (the jobstep plugin drops SLURM_CONF)
MARKER = "# written by tests/slurm/local_slurm.py for "
MIN_JOB_AGE = 7200  # s; >= 3 x the plugin's initial status delay, so squeue still lists finished jobs; and
# longer than any test DAG (DAG_TIMEOUT 2700 s), whose end checks that squeue lists every job COMPLETED (600 s
# was too short on a loaded CI machine: the smoke DAG took 720 s and the first jobs had left squeue)


def tracking_server_module():
    """workflow/scripts/tracking_server.py as a module (a standalone script, not a package)."""
    path = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "tracking_server.py"
    spec = importlib.util.spec_from_file_location("tracking_server", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_alive = tracking_server_module().pid_alive


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run on this machine (missing binaries, not root, daemons do not come up)."""


def missing_requirements() -> str | None:
    """Why a local SLURM cannot start here, or None."""
    tools = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return (f"SLURM/munge not installed ({', '.join(missing)} missing); "
                "apt-get install slurmctld slurmd slurm-client munge (as root)")
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs the jobs as their submitting user)"
    if not Path("/etc/munge/munge.key").exists():
        return "no munge key at /etc/munge/munge.key (reinstall the munge package or run mungekey)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no `munge` user (reinstall the munge package)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> tuple[int, int]:
    """(CPUs, RealMemory MB) as slurmd sees them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = re.search(r"\bCPUs=(\d+)", out)
    mem = re.search(r"\bRealMemory=(\d+)", out)
    return (int(cpus.group(1)) if cpus else os.cpu_count() or 1, int(mem.group(1)) if mem else 4000)


def write_conf(state: Path) -> Path:
    cpus, mem = _node_hardware()
    host = socket.gethostname()
    for sub in ("state", "spool"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    conf = state / "slurm.conf"
    conf.write_text(f"""{MARKER}{state}
ClusterName=salt
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={state}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={int(mem * 0.8)} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={NODE} Default=NO MaxTime=INFINITE State=UP
""")
    return conf


def env_for(state: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}


def _run(cmd: list[str], state: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env_for(state), timeout=60, **kw)


def _log_tail(state: Path) -> str:
    parts = []
    for name in ("munge/munged.log", "slurmctld.log", "slurmd.log"):
        path = state / name
        if path.exists():
            parts.append(f"--- {path} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def up(state: Path, timeout: float = 60.0) -> dict[str, str]:
    """Start munged, slurmctld and slurmd under ``state``; return the environment for clients.

    Raises SlurmUnavailable (daemons stopped again) when the node does not become idle in time.
    """
    reason = missing_requirements()
    if reason:
        raise SlurmUnavailable(reason)
    state = state.resolve()
    down(state)  # leftovers of an earlier run in the same dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    if subprocess.run(["runuser", "-u", "munge", "--", "test", "-x", str(state)], capture_output=True).returncode:
        raise SlurmUnavailable(f"the munge user cannot reach {state}: pick a state dir whose parents are "
                               "world-searchable (e.g. under /tmp)")
    if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
        raise SlurmUnavailable(f"{SYSTEM_CONF} exists (a system SLURM?); not overwriting it. The job steps "
                               "(srun inside each job) read that file, so this script needs it for itself")
    conf = write_conf(state)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(conf, SYSTEM_CONF)
    munge_dir = state / "munge"
    munge_dir.mkdir(exist_ok=True)
    munge = pwd.getpwnam("munge")
    os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
    munge_dir.chmod(0o755)
    env = env_for(state)
    try:
        steps = [
            ["runuser", "-u", "munge", "--", "munged", f"--socket={munge_dir}/munge.socket",
             f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
             f"--seed-file={munge_dir}/munged.seed"],
            ["slurmctld", "-i", "-f", str(conf)],
            ["slurmd", "-N", NODE, "-f", str(conf)],
        ]
        for cmd in steps:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            if res.returncode != 0:
                raise SlurmUnavailable(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}\n"
                                       + _log_tail(state))
        deadline = time.monotonic() + timeout
        node_state = ""
        while time.monotonic() < deadline:
            res = _run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%t"], state)
            node_state = res.stdout.strip()
            if res.returncode == 0 and node_state.startswith("idle"):
                return env
            time.sleep(1)
        raise SlurmUnavailable(f"node {NODE} did not become idle within {timeout:.0f} s "
                               f"(state {node_state!r})\n" + _log_tail(state))
    except BaseException:
        down(state)
        raise


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cancel_all(state: Path, timeout: float = 30.0) -> None:
    """Cancel every job of this cluster and wait until none is pending or running."""
    try:
        listed = _run(["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,CONFIGURING", "-o", "%i"], state)
        ids = listed.stdout.split()
        if not ids:
            return
        _run(["scancel", *ids], state)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _run(["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,CONFIGURING", "-o", "%i"], state).stdout.split():
                return
            time.sleep(0.5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def down(state: Path, timeout: float = 20.0) -> list[int]:
    """Stop the daemons whose PID files are under ``state``; return the PIDs that were running."""
    state = state.resolve()
    files = {"slurmd": state / "slurmd.pid", "slurmctld": state / "slurmctld.pid",
             "munged": state / "munge" / "munged.pid"}
    ctld = _pid(files["slurmctld"])
    if ctld is not None and _alive(ctld) and (state / "slurm.conf").exists():
        cancel_all(state)  # slurmstepd outlives slurmd: end the jobs first
    stopped = []
    for name in DAEMONS:
        pid = _pid(files[name])
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(pid)
        files[name].unlink(missing_ok=True)
    try:
        if SYSTEM_CONF.read_text(errors="replace").startswith(f"{MARKER}{state}\n"):
            SYSTEM_CONF.unlink()
    except OSError:
        pass
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default="/tmp/salt-slurm", help="state folder (config, logs, PID files)")
    args = parser.parse_args(argv)
    state = Path(args.dir)
    if args.action == "down":
        print(f"stopped PIDs: {down(state) or 'none'}")
        return 0
    try:
        up(state)
    except SlurmUnavailable as exc:
        print(f"local SLURM unavailable: {exc}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={state.resolve() / 'slurm.conf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
