"""Run untrusted (model-generated) Python against tests, in a sandbox that fails closed.

Threat model
------------
The program is hostile: it may loop forever, sleep, fork-bomb, allocate without bound, print
gigabytes, open network connections, read secrets (files, the environment), write outside its
directory, signal other processes (its parent, its process group, the trainer), or exit early to
dodge its tests. The caller (the trainer, ``salt evaluate``) may run as root (CI, containers) or
as an ordinary user (a cluster node). Code RL runs thousands of these programs per step, so a
warning in a log is not a protection: when isolation is missing, nothing runs (below).

Process layout (every mode)
---------------------------
::

    caller ── supervisor (own session, trusted, the caller's uid) ── [bwrap ──] harness + program

Four files, each a real module (standard library only where it runs outside this process):

* :mod:`salt.tasks.sandbox_supervisor`: the **supervisor**, started by path (``python -I -S -B
  .../sandbox_supervisor.py``, the caller's interpreter and uid) in a new session. It forks the
  harness into its own process group and waits for it with a wall-clock deadline; it is the
  program's parent, never the caller. When the harness ends (or at its deadline, or when the
  caller sends SIGTERM, or when the caller dies) it kills everything the run started: the
  harness's process group, and as root every process of the run's uid (a helper that becomes
  that uid and calls ``kill(-1, SIGKILL)``: one system call reaches all of them at once, so a
  fork bomb cannot outrun it), else every process carrying the run's marker. The same file holds
  the one ``/proc`` sweep (:func:`~salt.tasks.sandbox_supervisor.sweep`) that the caller uses too.
* :mod:`salt.tasks.sandbox_harness`: the **harness**, copied into the run's directory as
  ``harness.py`` and run from there (the one place its interpreter reaches in bwrap and as the
  run's uid; the program could see it there already). It sets the limits, drops privileges,
  installs the fallback's guard, then runs the program in-process in a module namespace named
  ``__solution__`` (its ``if __name__ == "__main__":`` block does not run) and each test in that
  namespace, reporting progress on a private pipe (the nonce protocol below).
* :mod:`salt.tasks.sandbox_io`: the caller's side of a running run: it keeps its own deadline
  and output cap while pumping the pipes, and classifies how the run ended.
* this module: the policy, the capability probe, the run's directory and command line
  (:func:`run_tests`), and afterwards a sweep for any process that still carries this run's
  marker (``SALT_SANDBOX_ID`` in its initial environment) or, as root, the run's uid.

Applied in every mode: resource limits set by the harness before the program runs
(``RLIMIT_CPU`` = ceil(timeout_s) + 1, ``RLIMIT_AS`` = ``memory_mb``, ``RLIMIT_NPROC`` = 64,
``RLIMIT_FSIZE`` = 16 MiB, ``RLIMIT_NOFILE`` = 64, ``RLIMIT_CORE`` = 0); a fresh temporary
directory as working directory (removed afterwards); an empty environment (``LANG``,
``HOME``/``TMPDIR`` = its directory, ``PYTHONHASHSEED``, ``PYTHONIOENCODING``, the marker; no
``PATH``, no secrets); isolated Python (``-I -S -B``: standard library only, no site-packages,
no environment variables honoured, no .pyc writes); stdin at end of file; stdout + stderr capped
at ``max_output_bytes`` (status ``output_limit``; only the tails are kept).

Never root
----------
When the caller is root the program always runs as an unprivileged user, with or without
bubblewrap: a fresh uid (and gid, no supplementary groups) per run, drawn at random from
[2**30, 2**31) (:data:`SANDBOX_UID_BASE`), that owns nothing on the machine. It therefore cannot
read root-only files, write root's files or home, or signal any other process (the caller, the
supervisor, other sandboxes: each run has its own uid), and ``RLIMIT_NPROC`` is enforced for it.
The program needs only the standard library; when the caller's interpreter is not reachable by
that uid (a pyenv under ``/root``, mode 0700), the first reachable Python of the same major
version is used (``/usr/bin/python3.X`` ...), and ``SandboxResult.isolation`` names it
(``python=/usr/bin/python3.11``). If no interpreter works as an unprivileged user, nothing runs,
whatever the opt-in (:class:`SandboxIsolationError`).

Modes
-----
**bwrap** (bubblewrap installed and working; the default). On top of the above: new network,
PID, IPC, UTS and cgroup namespaces (no network: only a loopback nobody listens on),
``--die-with-parent``, ``--new-session``, every capability dropped (as root CAP_SETUID/SETGID
are kept for the harness's one switch to the run's uid; as non-root a user namespace is added),
a root made only of read-only binds of ``/usr`` (+ ``/lib*``/``/bin`` links) and the Python
prefix, a private ``/tmp``, fresh ``/proc`` and ``/dev``; the only writable host path is its
directory, nothing else of the host (home directories, the repository, credentials) is visible,
and no process outside the namespace can be seen or signalled. Guarantees: no network, no host
file access beyond the read-only system directories and its own directory, no signal to any
process outside the sandbox, nothing survives the run.

**unisolated fallback** (bwrap missing, refused by the kernel/container, or disabled with
``SALT_SANDBOX_NO_BWRAP=1``). Runs only with an explicit opt-in (below). As root it keeps the
guarantees of "never root" (own uid: no root-only files, no writes to other users' files, no
signals to other processes, enforced process limit) and the supervisor layout, but the program
shares the host's network and file system namespaces: it can read every world-readable file and
reach the network **as far as the harness guard below does not stop it**. As an ordinary user
without bwrap the program runs as that same user: only the guard stands between it and that
user's files and processes.

Defence in depth, the fallback only: the harness guard (an audit hook and a few replaced
functions; :mod:`salt.tasks.sandbox_harness` lists what it refuses) stops signals to other
processes, process creation, sockets, ``ctypes``, writes outside its directory and reads outside
it, the standard library and a few device files. HumanEval's and MBPP's reference solutions pass
under it (tested). Honest limit: this is **not a security boundary**. The hook runs in the same
interpreter as the program, and code written against this harness (frame walking to the harness,
a C extension, a bug in the interpreter) may get around it; it removes the obvious escape
hatches from generic hostile or buggy code. The boundaries are the namespaces (bwrap) and, as
root, the unprivileged uid.

Failing closed, and the opt-in
------------------------------
:func:`run_tests` raises :class:`SandboxIsolationError` (naming what is missing and the two ways
out) instead of running anything when the namespaces are missing and the fallback was not
allowed, and always when, as root, no unprivileged user can run Python. The opt-in is either
:func:`allow_unisolated` / :func:`require_isolation` ``(allow_unisolated=True)`` (what
``sandbox.allow_unisolated: true`` in a run config, ``salt evaluate --allow-unisolated`` and the
workflow's ``sandbox.allow_unisolated`` do), or the environment variable
``SALT_SANDBOX_ALLOW_UNISOLATED=1`` for library use. Training and evaluation jobs call
:func:`require_isolation` when they start, before any model is loaded, so a missing sandbox fails
the job at once. What works here is probed once per process (cached; a trivial program per
candidate interpreter) and reported in ``SandboxResult.isolation``.

Early exit
----------
The harness writes ``<nonce> loaded`` after the program is defined and ``<nonce> passed`` after
the last test, on a pipe (an inherited fd) that the caller reads; the nonce is 128 random bits the
caller sends on stdin, which the harness reads (and then replaces stdin with ``/dev/null``) before
the program runs. ``sys.exit(0)``/``os._exit(0)`` at top level or inside a test, printing
"passed", or closing fds therefore never count as a pass (status ``exited_early``). Honest limit:
the program runs in the same interpreter as the harness, so code written *specifically against
this harness* could find the nonce in the interpreter's memory (frames) and forge the pass line.
This guards the reward against accidental and generic exits, not against a targeted attack on the
harness. Also by design, the tests run in the program's namespace, so a program can tamper with
what the tests use (e.g. return an object whose ``__eq__`` is always true): the sandbox protects
the machine, not the benchmark's semantics.

Statuses: ``passed``, ``failed`` (a test raised), ``error`` (the program failed to load:
syntax error, exception at import), ``exited_early``, ``timeout`` (wall clock), ``killed``
(a signal: CPU limit, out of memory, its supervisor killed), ``output_limit``, ``sandbox_error``
(the sandbox itself failed to start).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from salt.tasks import sandbox_harness
from salt.tasks import sandbox_supervisor as supervisor
from salt.tasks.sandbox_io import TAIL_BYTES, classify, close, pump, stop, tail  # noqa: F401 (TAIL_BYTES: API)
from salt.tasks.sandbox_supervisor import processes_of_uid, processes_with_marker, sweep

log = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1 << 30
"""As root, each run's program gets a fresh uid (= gid) drawn from [2**30, 2**31)."""
SANDBOX_UID_SPAN = 1 << 30
MAX_OUTPUT_BYTES = 1 << 20
"""Total stdout + stderr a program may write before it is killed (status ``output_limit``)."""
FSIZE_MB = 16
NOFILE = 64
NPROC = 64
SUPERVISOR_GRACE_S = 2.0
"""The supervisor's own deadline is the run's plus this (a backstop if the caller is gone)."""
_FALLBACK_GUARD = True
"""Install the harness guard in the fallback (tests switch it off to check the uid boundary alone)."""
ALLOW_ENV = "SALT_SANDBOX_ALLOW_UNISOLATED"
"""Environment opt-in to the unisolated fallback for library use ("1", "true" or "yes")."""
NO_BWRAP_ENV = "SALT_SANDBOX_NO_BWRAP"
"""``1``: do not use bubblewrap even if it works (tests of the fallback)."""
SUPERVISOR = os.path.abspath(supervisor.__file__)
"""The supervisor, run by path with the caller's interpreter (``python -I -S -B SUPERVISOR ...``)."""
HARNESS = os.path.abspath(sandbox_harness.__file__)
"""The harness, copied into each run's directory as ``harness.py`` and run there."""


class SandboxIsolationError(RuntimeError):
    """The code sandbox cannot isolate programs here (and the fallback was not allowed, or no
    unprivileged user can run Python as root): nothing was run. The message says what is missing
    and how to fix it."""





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
    uid: int | None = None
    """The uid the program ran as when the caller is root (fresh per run), else None."""


# ---------------------------------------------------------------------------------------------
# capability probing (once per process)

_CAPS: dict[str, Any] | None = None
_CAPS_LOCK = threading.Lock()
_ALLOW_UNISOLATED = False


def _python() -> str:
    """The caller's interpreter (runs the supervisor; the first candidate for the harness)."""
    return os.path.realpath(sys.executable)


def _python_candidates() -> list[str]:
    """Interpreters that may run the harness: the caller's, then system ones of the same major
    version (same minor first)."""
    major, minor = sys.version_info[:2]
    out = [_python()]
    for name in (f"python{major}.{minor}", f"python{major}"):
        for folder in ("/usr/bin", "/usr/local/bin", "/bin"):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                real = os.path.realpath(path)
                if real not in out:
                    out.append(real)
    return out


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _fresh_uid() -> int:
    return SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN - 1)


def _bwrap_args(workdir: str, drop_user: bool, python: str) -> list[str]:
    """bwrap command prefix. As root (``drop_user``): no user namespace, every capability dropped
    except CAP_SETUID/CAP_SETGID, which the harness uses once to become the run's uid before the
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
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))  # PREFIX/bin/pythonX.Y
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        # bwrap would create the missing parents (e.g. /root) with mode 0700, which hides the
        # standard library from the run's uid: create them world-traversable first
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


def _probe(use_bwrap: bool, drop_user: bool, python: str) -> bool:
    """Can ``python`` run the harness file (in bwrap or not, as a fresh unprivileged uid or not),
    import the standard library and write its directory? The fallback also needs
    ``sys.addaudithook``. (``harness.py --probe``, :func:`salt.tasks.sandbox_harness.probe`.)"""
    workdir = tempfile.mkdtemp(prefix="salt-sbx-probe-")
    try:
        uid = os.getuid()
        if drop_user:
            uid = _fresh_uid()
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o755)
        cmd = [python, "-I", "-S", "-B", _copy_harness(workdir), "--probe", str(uid) if drop_user else "-"]
        if use_bwrap:
            cmd = _bwrap_args(workdir, drop_user, python) + cmd
        out = subprocess.run(cmd, capture_output=True, timeout=20, env={"LANG": "C.UTF-8"},
                             cwd=workdir, start_new_session=True)
        want = [b"ok", str(uid).encode(), str(sys.version_info[0]).encode()]
        words = out.stdout.split()
        return out.returncode == 0 and words[:3] == want and (use_bwrap or words[3:] == [b"1"])
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def capabilities(refresh: bool = False) -> dict[str, Any]:
    """What works here (probed once, cached): ``{"mode": "bwrap" | "unisolated", "bwrap": bool,
    "drop_user": bool, "python": str, "missing": [...], "why": str, "fatal": str | None}``.

    ``missing`` lists the isolation layers that are absent (the fallback needs the opt-in);
    ``fatal`` is set when, as root, no interpreter runs as an unprivileged user (nothing may run).
    ``SALT_SANDBOX_NO_BWRAP=1`` disables bwrap (for tests of the fallback).
    """
    global _CAPS
    with _CAPS_LOCK:
        if _CAPS is not None and not refresh:
            return _CAPS
        is_root = _is_root()
        bwrap_allowed = os.environ.get(NO_BWRAP_ENV, "").lower() not in ("1", "true", "yes")
        have_bwrap = bwrap_allowed and shutil.which("bwrap") is not None
        candidates = _python_candidates()
        python = None
        if have_bwrap:
            python = next((py for py in candidates if _probe(True, is_root, py)), None)
        use_bwrap = python is not None
        if not use_bwrap:
            python = next((py for py in candidates if _probe(False, is_root, py)), None)
        missing, fatal = [], None
        if not use_bwrap:
            missing.append("namespaces (bubblewrap): no-network, pid-namespace, read-only-root, private-/tmp")
        if python is None:
            if is_root:
                fatal = ("running as root, and no Python interpreter runs as an unprivileged user here "
                         f"(tried {', '.join(candidates)}); programs never run as root: install a system "
                         f"python{sys.version_info[0]} that every user can read (e.g. apt-get install python3)")
            else:
                fatal = f"no working Python interpreter with sys.addaudithook (tried {', '.join(candidates)})"
            python = candidates[0]
        if not bwrap_allowed:
            why = f"bwrap disabled by {NO_BWRAP_ENV}"
        elif not shutil.which("bwrap"):
            why = "bwrap is not installed"
        elif not use_bwrap:
            why = "bwrap failed its probe (user namespaces or mounts not permitted here)"
        else:
            why = ""
        _CAPS = {"mode": "bwrap" if use_bwrap else "unisolated", "bwrap": use_bwrap,
                 "drop_user": is_root and fatal is None, "python": python, "missing": missing,
                 "why": why, "fatal": fatal}
        if missing or fatal:
            log.warning("code sandbox: %s", fatal or f"isolation missing: {'; '.join(missing)} ({why})")
        return _CAPS


# ---------------------------------------------------------------------------------------------
# the policy: fail closed unless the user opted in


def allow_unisolated(flag: bool = True) -> None:
    """Allow (or forbid again) the unisolated fallback in this process (the run config's
    ``sandbox.allow_unisolated``); ``SALT_SANDBOX_ALLOW_UNISOLATED=1`` also allows it."""
    _set_allowed(flag)


def _set_allowed(flag: bool) -> None:
    global _ALLOW_UNISOLATED
    _ALLOW_UNISOLATED = bool(flag)


def unisolated_allowed() -> bool:
    """Whether the fallback may run: :func:`allow_unisolated` or the environment variable."""
    return _ALLOW_UNISOLATED or os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def isolation_error(caps: Mapping[str, Any]) -> str | None:
    """The message of :class:`SandboxIsolationError` for these capabilities under the current
    policy, or None when programs may run."""
    if caps["fatal"]:
        return f"code sandbox: {caps['fatal']}. Nothing was run (sandbox.allow_unisolated does not change this)."
    if caps["missing"] and not unisolated_allowed():
        return (
            f"code sandbox: isolation missing here: {'; '.join(caps['missing'])} ({caps['why']}). "
            "Nothing untrusted runs without it. Either install bubblewrap (apt-get install "
            "bubblewrap; user namespaces must be allowed when not root), or opt in explicitly to "
            "the weaker fallback (own session and supervisor, limits, an unprivileged uid as root, "
            "an audit-hook guard: not a security boundary): set `sandbox.allow_unisolated: true` "
            "in the workflow config or the run config (`salt evaluate --allow-unisolated`), or "
            f"{ALLOW_ENV}=1 for library use."
        )
    return None


def require_isolation(allow_unisolated: bool | None = None) -> dict[str, Any]:
    """Start-up check of a job that will run code: raise :class:`SandboxIsolationError` now if
    programs could not run, instead of after the model is loaded.

    Args:
        allow_unisolated: when not None, set the process-wide opt-in first (the config's
            ``sandbox.allow_unisolated``), so later :func:`run_tests` calls follow the same rule.
    Returns:
        ``{"mode", "python", "missing", "allow_unisolated"}`` to record with the run.
    """
    if allow_unisolated is not None:
        _set_allowed(allow_unisolated)
    caps = capabilities()
    message = isolation_error(caps)
    if message:
        raise SandboxIsolationError(message)
    return {"mode": caps["mode"], "python": caps["python"], "missing": list(caps["missing"]),
            "allow_unisolated": unisolated_allowed()}


def _isolation_list(caps: Mapping[str, Any]) -> list[str]:
    iso = ["session", "supervisor", "wallclock-kill", "rlimits", "tempdir", "empty-env",
           "isolated-python", "output-cap", f"python={caps['python']}"]
    if caps["drop_user"]:
        iso.append("unprivileged-uid")
    if caps["bwrap"]:
        iso += ["bwrap", "no-network", "pid-namespace", "private-tmp", "read-only-root"]
    else:
        iso += ["unisolated-opt-in"] + (["audit-guard"] if _FALLBACK_GUARD else [])
    return iso



# ---------------------------------------------------------------------------------------------
# running one program: the payload, the command line, the I/O pump, the classification


@dataclass
class _Run:
    """One run's identity: ``marker`` (its environment and directory name), ``uid`` (root only),
    ``workdir`` (``salt-sbx-<marker>-*``), ``nonce`` (the harness's progress lines)."""

    marker: str
    uid: int | None
    workdir: str
    nonce: str


def _check_args(program: Any, tests: Any, timeout_s: float, memory_mb: int) -> None:
    if not isinstance(program, str):
        raise TypeError(f"run_tests: program must be a str, got {type(program).__name__}")
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("run_tests: tests must be a non-empty list of source strings")
    if timeout_s <= 0 or memory_mb < 64:
        raise ValueError(f"run_tests: need timeout_s > 0 and memory_mb >= 64, got {timeout_s}, {memory_mb}")


def _copy_harness(workdir: str) -> str:
    """The harness file in the run's directory (the one place its interpreter surely reaches)."""
    path = os.path.join(workdir, "harness.py")
    shutil.copyfile(HARNESS, path)
    return path


def _write_payload(run: _Run, caps: Mapping[str, Any], setup: str, program: str, tests: list[str],
                   entry_point: str | None) -> None:
    """The run's directory: ``harness.py`` and ``payload.txt`` (which the harness reads and deletes
    before the program runs), owned by the run's uid when there is one."""
    _copy_harness(run.workdir)
    with open(os.path.join(run.workdir, "payload.txt"), "w", encoding="utf-8") as fh:
        json.dump({"setup": setup or "", "program": program, "tests": list(tests), "entry_point": entry_point}, fh)
    if run.uid is not None:
        for name in ("", "harness.py", "payload.txt"):
            os.chown(os.path.join(run.workdir, name), run.uid, run.uid)
    # 0755 lets the capability-less bwrap (root) enter the run uid's directory; without bwrap
    # root needs no permission bits and other users are kept out
    os.chmod(run.workdir, 0o755 if (caps["bwrap"] and run.uid is not None) else 0o700)


def _command(run: _Run, caps: Mapping[str, Any], timeout_s: float, memory_mb: int,
             channel_fd: int) -> tuple[list[str], dict[str, str]]:
    """The supervisor's command line (it runs the harness, in bwrap when it works) and its
    environment (nothing of the caller's)."""
    uid = "-" if run.uid is None else str(run.uid)
    limits = f"{int(timeout_s) + 1},{memory_mb * 1024 * 1024},{NPROC},{FSIZE_MB * 1024 * 1024},{NOFILE}"
    guard = "guard" if _FALLBACK_GUARD and not caps["bwrap"] else "-"
    harness = [caps["python"], "-I", "-S", "-B", os.path.join(run.workdir, "harness.py"), str(channel_fd),
               limits, uid, guard]
    if caps["bwrap"]:
        harness = _bwrap_args(run.workdir, run.uid is not None, caps["python"]) + harness
    cmd = [_python(), "-I", "-S", "-B", SUPERVISOR, str(timeout_s + SUPERVISOR_GRACE_S), uid, run.marker,
           run.workdir, "--"] + harness
    env = {"LANG": "C.UTF-8", "HOME": run.workdir, "TMPDIR": run.workdir, "PYTHONHASHSEED": "0",
           "PYTHONIOENCODING": "utf-8", supervisor.MARKER_VAR: run.marker}
    return cmd, env


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
    Raises:
        SandboxIsolationError: isolation is missing and the fallback was not allowed (or, as
            root, no unprivileged user can run Python); nothing was run.
    """
    _check_args(program, tests, timeout_s, memory_mb)
    caps = capabilities()
    message = isolation_error(caps)
    if message:
        raise SandboxIsolationError(message)
    isolation = _isolation_list(caps)
    start = time.monotonic()
    marker = secrets.token_hex(8)
    run = _Run(marker, _fresh_uid() if caps["drop_user"] else None,
               tempfile.mkdtemp(prefix=f"salt-sbx-{marker}-"), secrets.token_hex(16))
    proc = None
    swept = False
    read_fd = write_fd = -1
    try:
        _write_payload(run, caps, setup, program, tests, entry_point)
        read_fd, write_fd = os.pipe()
        cmd, env = _command(run, caps, timeout_s, memory_mb, write_fd)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=run.workdir, pass_fds=(write_fd,),
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return SandboxResult(False, "sandbox_error", "", f"could not start the sandbox: {exc}",
                                 time.monotonic() - start, isolation, None, marker, run.uid)
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write((run.nonce + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass  # the child died already; its status tells why
        got = pump(proc, read_fd, start + timeout_s, max_output_bytes)
        stop(proc)
        sweep(marker, run.uid)
        swept = True
        status = got.status or classify(bytes(got.channel), run.nonce, proc.returncode)
        return SandboxResult(status == "passed", status, tail(got.out), tail(got.err), time.monotonic() - start,
                             isolation, proc.returncode, marker, run.uid)
    finally:
        close((read_fd, write_fd), proc)
        if proc is not None and not swept:
            stop(proc)
            sweep(marker, run.uid)
        shutil.rmtree(run.workdir, ignore_errors=True)


def run_tests_many(jobs: Iterable[Mapping[str, Any]], max_workers: int = 2) -> list[SandboxResult]:
    """Run many ``run_tests(**job)`` with at most ``max_workers`` sandboxes at a time; results in
    the order of ``jobs`` (each job: ``program``, ``tests`` and optional ``run_tests`` keywords).
    Raises :class:`SandboxIsolationError` before running any job when programs may not run."""
    jobs = [dict(j) for j in jobs]
    if max_workers < 1:
        raise ValueError(f"run_tests_many: max_workers must be >= 1, got {max_workers}")
    if not jobs:
        return []
    message = isolation_error(capabilities())  # probe once before the threads start
    if message:
        raise SandboxIsolationError(message)
    if max_workers == 1 or len(jobs) == 1:
        return [run_tests(**job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs)), thread_name_prefix="sandbox") as ex:
        return list(ex.map(lambda job: run_tests(**job), jobs))


__all__ = ["ALLOW_ENV", "SandboxIsolationError", "SandboxResult", "allow_unisolated", "capabilities",
           "isolation_error", "processes_of_uid", "processes_with_marker", "require_isolation", "run_tests",
           "run_tests_many", "unisolated_allowed"]
