"""Run untrusted (model-generated) Python against tests, in a sandbox.

Threat model
------------
The program is hostile: it may loop forever, sleep, fork-bomb, allocate without bound, print
gigabytes, open network connections, write or read files outside its directory, read secrets from
the environment, signal other processes, or exit early to dodge its tests. Every call gets:

* a separate process tree in its own session (``start_new_session``) and a wall-clock deadline,
  after which the whole process group is SIGKILLed; a final ``/proc`` sweep kills any process
  still carrying this run's marker in its environment (catches ``setsid`` escapes without bwrap);
* resource limits set by the trusted harness before the program runs: ``RLIMIT_CPU``,
  ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
  ``RLIMIT_CORE = 0``;
* a fresh temporary directory (its working directory) removed afterwards;
* an empty environment (only ``LANG``, ``HOME``/``TMPDIR`` = its directory, ``PYTHONHASHSEED``,
  ``PYTHONIOENCODING`` and the run marker ``SALT_SANDBOX_ID``; no ``PATH``, no secrets);
* isolated Python: ``sys.executable -I -S -B`` (no user site, no site-packages, no env vars
  honoured, no .pyc writes): only the standard library is importable. The program runs in a
  module namespace named ``__solution__`` (its ``if __name__ == "__main__":`` block does not run)
  with stdin at end of file;
* stdout/stderr read through pipes with a cap (``max_output_bytes``): beyond it the run is
  killed (status ``output_limit``); only the tails are kept;
* when the parent is root: the harness switches to ``nobody`` (uid/gid 65534, no supplementary
  groups) after setting the limits and before the program runs, so the program cannot touch files
  of other users or signal other users' processes, and ``RLIMIT_NPROC`` is enforced (it is not
  for root). The NPROC count is per user, so concurrent sandboxes share it (64 processes);
* when bubblewrap works here: ``bwrap`` with new network, PID, IPC, UTS and cgroup namespaces
  (no network at all: only a loopback nobody listens on), ``--die-with-parent``,
  ``--new-session``, every capability dropped (as root, CAP_SETUID/CAP_SETGID are kept for the
  harness's one switch to nobody; as non-root a user namespace is added), a root made only of
  read-only binds of ``/usr`` (+ ``/lib*``/``/bin`` links) and the Python prefix, a private
  ``/tmp``, fresh ``/proc`` and ``/dev``; the only writable host path is its directory, and
  nothing else of the host file system (home directories, the repository, credentials) is visible.
  Killing bwrap tears down the PID namespace and so every process the program started.

Whether bwrap and the user drop work is probed once per process (a trivial command; the answer is
cached). What is missing is logged once with ``logging.warning`` and reported in
``SandboxResult.isolation`` (the list of protections that were in force).

Early exit. The harness writes ``<nonce> loaded`` after the program is defined and
``<nonce> passed`` after the last test, on a pipe (an inherited fd) that the parent reads; the
nonce is 128 random bits the parent sends on the child's stdin, which the harness reads (and then
replaces stdin with ``/dev/null``) before the program runs. ``sys.exit(0)``/``os._exit(0)`` at top
level or inside a test, printing "passed", or closing fds therefore never count as a pass
(status ``exited_early``). Honest limit: the program runs in the same interpreter as the harness,
so code written *specifically against this harness* could find the nonce in the interpreter's
memory (frames, ``gc``) and forge the pass line. This guards the reward against accidental and
generic exits, not against a targeted attack on the harness; nothing in the sandbox stops code
from reading its own process memory.

Also by design, the tests run in the program's namespace, so a program can tamper with what the
tests use (e.g. return an object whose ``__eq__`` is always true): the sandbox protects the
machine, not the benchmark's semantics.

Without bwrap (not installed, or refused by the container), the program can open network
connections and read every file its user may read; without the switch to ``nobody`` (the parent
is not root, or the Python install is not readable by ``nobody``) it can also write that user's
files and signal that user's processes, the parent included. Both are logged once as missing.

Statuses: ``passed``, ``failed`` (a test raised), ``error`` (the program failed to load:
syntax error, exception at import), ``exited_early``, ``timeout`` (wall clock), ``killed``
(a signal: CPU limit, out of memory), ``output_limit``, ``sandbox_error`` (the sandbox itself
failed to start).
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

NOBODY_UID = 65534
NOBODY_GID = 65534
MAX_OUTPUT_BYTES = 1 << 20
"""Total stdout + stderr a program may write before it is killed (status ``output_limit``)."""
TAIL_BYTES = 4096
"""How much of the end of stdout / stderr is kept in the result."""
FSIZE_MB = 16
NOFILE = 64
NPROC = 64

_HARNESS = r'''
import os, sys

def _salt_harness():
    import resource, traceback
    nonce = sys.stdin.buffer.readline().strip().decode()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    fd = int(sys.argv[1])
    limits = [int(x) for x in sys.argv[2].split(",")]
    cpu_s, mem_b, nproc, fsize_b, nofile = limits
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "payload.txt"), "r", encoding="utf-8") as fh:
        import json
        payload = json.load(fh)
    setup, program, tests, entry_point = (payload["setup"], payload["program"], payload["tests"],
                                          payload["entry_point"])
    del payload
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", cpu_s), ("RLIMIT_AS", mem_b),
                        ("RLIMIT_NPROC", nproc), ("RLIMIT_FSIZE", fsize_b), ("RLIMIT_NOFILE", nofile)):
        res = getattr(resource, name)
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(res, (value, hard))
    if sys.argv[3] != "-":  # root: become nobody (uid == gid here) before any untrusted code runs
        uid = int(sys.argv[3])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            os._exit(5)
    os.unlink(os.path.join(here, "payload.txt"))
    tell = lambda word: os.write(fd, (nonce + " " + word + "\n").encode())
    tell("ready")
    g = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(setup + "\n" + program, "solution.py", "exec"), g)
        if entry_point and not callable(g.get(entry_point)):
            raise NameError("the program does not define a function named " + repr(entry_point))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    tell("loaded")
    try:
        for i, test in enumerate(tests):
            exec(compile(test, "test_%d.py" % i, "exec"), g)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(4)
    sys.stdout.flush()
    sys.stderr.flush()
    tell("passed")
    os._exit(0)

_salt_harness()
'''


@dataclass
class SandboxResult:
    passed: bool
    status: str
    stdout: str
    stderr: str
    duration_s: float
    isolation: list[str] = field(default_factory=list)
    returncode: int | None = None
    run_id: str = ""
    """Random id of this run: in its temp dir name (``salt-sbx-<run_id>-*``, so in the harness's
    command line) and in its environment (``SALT_SANDBOX_ID``); used to audit leftovers."""


# ---------------------------------------------------------------------------------------------
# capability probing (once per process)

_CAPS: dict[str, Any] | None = None
_CAPS_LOCK = threading.Lock()


def _python() -> str:
    return os.path.realpath(sys.executable)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _bwrap_args(workdir: str, drop_user: bool) -> list[str]:
    """bwrap command prefix. As root (``drop_user``): no user namespace, every capability dropped
    except CAP_SETUID/CAP_SETGID, which the harness uses once to become ``nobody`` before the
    program runs (so RLIMIT_NPROC holds). Otherwise: all namespaces, the user one included."""
    bwrap = shutil.which("bwrap") or "bwrap"
    if drop_user:
        args = [bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
                "--cap-add", "CAP_SETGID"]
    else:
        args = [bwrap, "--unshare-all", "--cap-drop", "ALL"]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        # bwrap would create the missing parents (e.g. /root) with mode 0700, which hides the
        # standard library from the nobody user: create them world-traversable first
        parents = []
        head = os.path.dirname(prefix)
        while head not in ("/", ""):
            parents.append(head)
            head = os.path.dirname(head)
        for parent in reversed(parents):
            args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", prefix, prefix]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--bind", workdir, workdir, "--chdir", workdir]
    return args


def _probe(use_bwrap: bool, drop_user: bool) -> bool:
    workdir = tempfile.mkdtemp(prefix="salt-sbx-probe-")
    try:
        code = "import os\n"
        if drop_user:
            os.chown(workdir, NOBODY_UID, NOBODY_GID)
            os.chmod(workdir, 0o755)
            code += f"os.setgroups([]); os.setgid({NOBODY_GID}); os.setuid({NOBODY_UID})\n"
        # the standard library must stay importable after the switch (it is not when Python
        # lives under a directory only root may enter, e.g. /root/.pyenv without bwrap)
        code += "import json, socket, decimal\nopen('probe.txt', 'w').write('x'); print('ok', os.getuid())"
        cmd = [_python(), "-I", "-S", "-B", "-c", code]
        if use_bwrap:
            cmd = _bwrap_args(workdir, drop_user) + cmd
        out = subprocess.run(cmd, capture_output=True, timeout=20, env={"LANG": "C.UTF-8"},
                             cwd=workdir, start_new_session=True)
        expected_uid = NOBODY_UID if drop_user else os.getuid()
        return out.returncode == 0 and out.stdout.split() == [b"ok", str(expected_uid).encode()]
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def capabilities(refresh: bool = False) -> dict[str, Any]:
    """Which isolation layers work here: ``{"bwrap": bool, "drop_user": bool, "missing": [...]}``.

    Probed once (cached); ``SALT_SANDBOX_NO_BWRAP=1`` disables bwrap (for tests of the fallback).
    """
    global _CAPS
    with _CAPS_LOCK:
        if _CAPS is not None and not refresh:
            return _CAPS
        is_root = _is_root()
        bwrap_allowed = os.environ.get("SALT_SANDBOX_NO_BWRAP", "") not in ("1", "true")
        have_bwrap = bwrap_allowed and shutil.which("bwrap") is not None
        use_bwrap = drop_user = False
        if have_bwrap:
            if is_root and _probe(True, True):
                use_bwrap = drop_user = True
            elif _probe(True, False):
                use_bwrap = True
        if not use_bwrap:
            drop_user = is_root and _probe(False, True)
        missing = []
        if not use_bwrap:
            missing += ["no-network (bwrap --unshare-net)", "pid-namespace", "private-/tmp",
                        "read-only-root"]
        if is_root and not drop_user:
            missing += ["unprivileged-user (RLIMIT_NPROC is not enforced for root)"]
        if missing:
            if not bwrap_allowed:
                why = "bwrap disabled by SALT_SANDBOX_NO_BWRAP"
            elif not have_bwrap:
                why = "bwrap not installed: apt-get install bubblewrap"
            elif not use_bwrap:
                why = "bwrap failed its probe (user namespaces or mounts not permitted here)"
            else:
                why = "could not switch to the nobody user"
            log.warning("code sandbox: isolation missing: %s (%s). Resource limits, session kill, "
                        "empty environment and temporary directory still apply.", "; ".join(missing), why)
        _CAPS = {"bwrap": use_bwrap, "drop_user": drop_user, "missing": missing}
        return _CAPS


def _isolation_list(caps: Mapping[str, Any]) -> list[str]:
    iso = ["session", "wallclock-kill", "rlimits", "tempdir", "empty-env", "isolated-python",
           "output-cap"]
    if caps["drop_user"]:
        iso.append("user-nobody")
    if caps["bwrap"]:
        iso += ["bwrap", "no-network", "pid-namespace", "private-tmp", "read-only-root"]
    return iso


# ---------------------------------------------------------------------------------------------
# process sweeping


def processes_with_marker(marker: str) -> list[int]:
    """PIDs whose initial environment carries ``SALT_SANDBOX_ID=<marker>`` (a /proc scan)."""
    needle = f"SALT_SANDBOX_ID={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def _sweep(marker: str) -> int:
    """SIGKILL every process of this run still alive; returns how many were signalled."""
    killed = 0
    for _ in range(5):  # a fork loop can create new ones while we kill: repeat a few times
        pids = processes_with_marker(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.02)
    return killed


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# running one program


def _tail(buf: bytearray) -> str:
    return bytes(buf[-TAIL_BYTES:]).decode("utf-8", errors="replace")


def run_tests(
    program: str,
    tests: list[str],
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    *,
    setup: str = "",
    entry_point: str | None = None,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> SandboxResult:
    """Run ``setup + program`` then each test (Python source, e.g. ``assert f(1) == 2``) in the
    sandbox; passed only when every test ran without raising (details in the module docstring).

    Args:
        program: the candidate's source code.
        tests: test snippets executed in the program's namespace, in order.
        timeout_s: wall-clock limit for the whole run (CPU limit: ceil(timeout_s) + 1 s).
        memory_mb: address-space limit (RLIMIT_AS) of the program's process.
        setup: source run before the program in the same namespace (e.g. imports).
        entry_point: if given, the program must define a callable of this name.
        max_output_bytes: stdout + stderr beyond this kill the run.
    """
    if not isinstance(program, str):
        raise TypeError(f"run_tests: program must be a str, got {type(program).__name__}")
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("run_tests: tests must be a non-empty list of source strings")
    if timeout_s <= 0 or memory_mb < 64:
        raise ValueError(f"run_tests: need timeout_s > 0 and memory_mb >= 64, got {timeout_s}, {memory_mb}")
    caps = capabilities()
    isolation = _isolation_list(caps)
    start = time.monotonic()
    marker = secrets.token_hex(8)
    workdir = tempfile.mkdtemp(prefix=f"salt-sbx-{marker}-")
    nonce = secrets.token_hex(16)
    proc = None
    read_fd = write_fd = -1
    try:
        import json

        with open(os.path.join(workdir, "harness.py"), "w", encoding="utf-8") as fh:
            fh.write(_HARNESS)
        with open(os.path.join(workdir, "payload.txt"), "w", encoding="utf-8") as fh:
            json.dump({"setup": setup or "", "program": program, "tests": list(tests),
                       "entry_point": entry_point}, fh)
        if caps["drop_user"]:
            for name in ("", "harness.py", "payload.txt"):
                os.chown(os.path.join(workdir, name), NOBODY_UID, NOBODY_GID)
        # as nobody the workdir is nobody's; 0755 lets the capability-less bwrap (root) enter it
        os.chmod(workdir, 0o755 if caps["drop_user"] else 0o700)
        read_fd, write_fd = os.pipe()
        cpu_s = int(timeout_s) + 1
        limits = f"{cpu_s},{memory_mb * 1024 * 1024},{NPROC},{FSIZE_MB * 1024 * 1024},{NOFILE}"
        drop = str(NOBODY_UID) if caps["drop_user"] else "-"
        cmd = [_python(), "-I", "-S", "-B", os.path.join(workdir, "harness.py"), str(write_fd), limits, drop]
        if caps["bwrap"]:
            cmd = _bwrap_args(workdir, caps["drop_user"]) + cmd
        env = {"LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
               "PYTHONIOENCODING": "utf-8", "SALT_SANDBOX_ID": marker}
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=workdir, pass_fds=(write_fd,),
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return SandboxResult(False, "sandbox_error", "", f"could not start the sandbox: {exc}",
                                 time.monotonic() - start, isolation, None, marker)
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write((nonce + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass  # the child died already; its status tells why
        out, err, channel = bytearray(), bytearray(), bytearray()
        deadline = start + timeout_s
        status = None
        total = 0
        sel = selectors.DefaultSelector()
        streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, read_fd: channel}
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        open_fds = set(streams)
        exited_at = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                status = "timeout"
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                # drain what is buffered, then stop: survivors holding the pipes are killed below
                if not open_fds or now - exited_at > 0.2:
                    break
            wait = min(deadline - now, 0.05 if exited_at else 0.5)
            for key, _ in sel.select(timeout=wait):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
                    continue
                buf = streams[key.fd]
                if key.fd == read_fd:
                    if len(buf) < 4096:
                        buf += chunk
                    continue
                total += len(chunk)
                buf += chunk
                if len(buf) > 2 * TAIL_BYTES:
                    del buf[: len(buf) - TAIL_BYTES]
            if total > max_output_bytes:
                status = "output_limit"
                break
            if not open_fds and proc.poll() is None:
                # every pipe closed but the process lives on (it closed its fds): wait for it
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    status = "timeout"
                    break
        _killpg(proc.pid)
        sel.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait(timeout=10)
        _sweep(marker)
        duration = time.monotonic() - start
        lines = bytes(channel).decode("ascii", errors="replace").split("\n")
        ready = f"{nonce} ready" in lines
        loaded = f"{nonce} loaded" in lines
        passed_line = f"{nonce} passed" in lines
        rc = proc.returncode
        if status is None:
            if passed_line and rc == 0:
                status = "passed"
            elif rc is not None and (rc < 0 or rc >= 128):
                status = "killed"  # a signal (bwrap reports 128 + signal number)
            elif not ready:
                status = "sandbox_error"  # the harness failed before the program ran
            elif not loaded:
                status = "exited_early" if rc == 0 else "error"
            elif rc == 0:
                status = "exited_early"
            else:
                status = "failed"
        return SandboxResult(status == "passed", status, _tail(out), _tail(err), duration, isolation, rc, marker)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            if proc.poll() is None:
                _killpg(proc.pid)
                proc.wait(timeout=10)
            _sweep(marker)
        shutil.rmtree(workdir, ignore_errors=True)


def run_tests_many(jobs: Iterable[Mapping[str, Any]], max_workers: int = 2) -> list[SandboxResult]:
    """Run many ``run_tests(**job)`` with at most ``max_workers`` sandboxes at a time; results in
    the order of ``jobs`` (each job: ``program``, ``tests`` and optional ``run_tests`` keywords)."""
    jobs = [dict(j) for j in jobs]
    if max_workers < 1:
        raise ValueError(f"run_tests_many: max_workers must be >= 1, got {max_workers}")
    if not jobs:
        return []
    capabilities()  # probe once before the threads start
    if max_workers == 1 or len(jobs) == 1:
        return [run_tests(**job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs)), thread_name_prefix="sandbox") as ex:
        return list(ex.map(lambda job: run_tests(**job), jobs))


__all__ = ["SandboxResult", "capabilities", "processes_with_marker", "run_tests", "run_tests_many"]
