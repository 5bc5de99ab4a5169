"""Start / stop the MLflow tracking server that SLURM jobs log to (run it on the submit host).

    python workflow/scripts/tracking_server.py start [--store results/mlflow-server] [--port 5000]
    python workflow/scripts/tracking_server.py uri    # the URI of the running server
    python workflow/scripts/tracking_server.py stop

On a cluster many nodes writing one SQLite file over a network file system lose or corrupt runs;
instead every job talks HTTP to one `mlflow server`, the only process that writes its backend
store (``<store>/mlflow.db``; one writer, so a network file system is safe, a local disk faster) and its artifacts
(``<store>/artifacts``, uploaded through the server: ``--serve-artifacts``). ``start`` launches
the server in its own session (it outlives this command and the Snakemake run, so reruns log
into the same store and ``mlflow ui`` can browse it), waits until ``/health`` answers, records
``<store>/server.json`` (pid, uri) and prints the URI, ``http://<this host's name>:<port>``,
to hand to the workflow: ``--config 'tracking={uri: "http://HOST:5000"}'`` or
``tracking.uri`` in the site file (see README "Running on a cluster"). ``start`` on a running
server prints its URI again. ``stop`` ends the server's whole process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_STORE = "results/mlflow-server"
STATE_FILE = "server.json"


def _healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes of process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def read_state(store: Path) -> dict | None:
    """The recorded server of ``store`` when it is still running, else None."""
    path = store / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if pid_alive(int(state["pid"])) else None


def start(store: Path, host: str = "0.0.0.0", port: int = 5000, advertise: str | None = None,
          timeout: float = 120.0) -> str:
    """Start the server (or find the running one) and return its URI."""
    store = store.resolve()
    state = read_state(store)
    if state is not None:
        if _healthy(state["port"]):
            return state["uri"]
        stop(store)
    store.mkdir(parents=True, exist_ok=True)
    advertise = advertise or socket.gethostname()
    uri = f"http://{advertise}:{port}"
    allowed = ",".join(sorted({f"{h}:{port}" for h in (advertise, socket.gethostname(), "localhost", "127.0.0.1")}))
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "artifacts"),
           "--host", host, "--port", str(port), "--workers", "1", "--allowed-hosts", allowed]
    log = open(store / "server.log", "ab")
    # no background job runner (huey consumers for GenAI features this pipeline never uses)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=store, env=env)
    log.close()
    state = {"pid": proc.pid, "port": port, "uri": uri, "store": str(store), "command": cmd}
    (store / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(port):
            return uri
        time.sleep(0.5)
    stop(store)
    tail = (store / "server.log").read_text(errors="replace").splitlines()[-20:]
    raise RuntimeError(f"mlflow server did not come up on port {port} within {timeout:.0f} s "
                       f"(port taken? pick another with --port); {store / 'server.log'}:\n" + "\n".join(tail))


def stop(store: Path, timeout: float = 20.0) -> int | None:
    """Stop the recorded server of ``store`` (its process group); return its pid, None if none ran."""
    store = store.resolve()
    path = store / STATE_FILE
    state = read_state(store)
    path.unlink(missing_ok=True)
    if state is None:
        return None
    pid = int(state["pid"])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # the server leads its own session: this reaches its workers too
        except ProcessLookupError:
            return pid
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not pid_alive(pid):
            break
    deadline = time.monotonic() + timeout
    while group_members(pid) and time.monotonic() < deadline:  # workers left behind by the leader
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    try:  # started by this very process (not through the CLI): reap it
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "uri"])
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"backend store + artifacts folder ({DEFAULT_STORE})")
    parser.add_argument("--host", default="0.0.0.0", help="interface to bind (0.0.0.0: reachable from the nodes)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--advertise", default=None, help="host name the jobs use (default: this host's name, socket.gethostname())")
    args = parser.parse_args(argv)
    store = Path(args.store)
    if args.action == "start":
        try:
            print(start(store, args.host, args.port, args.advertise))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.action == "stop":
        pid = stop(store)
        print(f"stopped mlflow server {pid}" if pid else f"no mlflow server running for {store}")
    else:
        state = read_state(store.resolve())
        if state is None:
            print(f"error: no mlflow server running for {store}; start it: "
                  f"python workflow/scripts/tracking_server.py start --store {store}", file=sys.stderr)
            return 1
        print(state["uri"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
