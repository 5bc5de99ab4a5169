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

* The caller starts a small **supervisor** (``python -I -S -B -c``) in a new session
  (``start_new_session``). The supervisor forks the harness into its own process group and waits
  for it with a wall-clock deadline; it is the program's parent, never the caller. When the
  harness ends (or at its deadline, or when the caller sends SIGTERM, or when the caller dies)
  it kills everything the run started: the harness's process group, and as root every process
  of the run's uid (a helper that becomes that uid and calls ``kill(-1, SIGKILL)``: one system
  call reaches all of them at once, so a fork bomb cannot outrun it), else (same user as the
  caller) every process carrying the run's marker.
* The **harness** sets the limits, drops privileges, then runs the program in-process in a module
  namespace named ``__solution__`` (its ``if __name__ == "__main__":`` block does not run) and
  each test in that namespace, reporting progress on a private pipe (the nonce protocol below).
* The caller keeps its own deadline and output cap, and afterwards sweeps ``/proc`` for any
  process that still carries this run's marker (``SALT_SANDBOX_ID`` in its initial environment)
  or, as root, the run's uid.

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

Defence in depth: the harness guard (fallback only). Before the program runs, the harness
installs an audit hook (:func:`sys.addaudithook`) and replaces the few dangerous functions that
raise no audit event with ones that raise. It refuses (``PermissionError``): signals to other
processes (``os.kill``, ``killpg``, ``pidfd_send_signal``, ``setpriority``, ``sched_set*``),
process creation (``os.fork``/``forkpty``/``exec*``/``spawn*``/``posix_spawn``/``system``,
``subprocess.Popen``, ``_posixsubprocess.fork_exec``, re-importing ``posix`` and friends),
every socket operation (``socket.*``, so no network and no DNS), ``ctypes``, ``gc.get_objects``/
``get_referrers``/``get_referents`` (used to find and patch the hook), ``resource.prlimit``,
``fcntl.ioctl``; opening for writing, creating, removing, renaming, chmod/chown and symlinks or
hard links anywhere but its directory (plus ``/dev/null``); reading or listing anything but its
directory, the interpreter's standard library (``sys.path``), ``/usr/share/zoneinfo`` and
``/dev/{null,zero,random,urandom}``; any path with a ``..`` component; opening a directory
outside its directory (no ``dir_fd`` escapes). HumanEval's and MBPP's reference solutions pass
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

SANDBOX_UID_BASE = 1 << 30
"""As root, each run's program gets a fresh uid (= gid) drawn from [2**30, 2**31)."""
SANDBOX_UID_SPAN = 1 << 30
MAX_OUTPUT_BYTES = 1 << 20
"""Total stdout + stderr a program may write before it is killed (status ``output_limit``)."""
TAIL_BYTES = 4096
"""How much of the end of stdout / stderr is kept in the result."""
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


class SandboxIsolationError(RuntimeError):
    """The code sandbox cannot isolate programs here (and the fallback was not allowed, or no
    unprivileged user can run Python as root): nothing was run. The message says what is missing
    and how to fix it."""


# ---------------------------------------------------------------------------------------------
# the supervisor: the program's parent (runs as the caller's user, in its own session)

_SUPERVISOR = r'''
import os, signal, sys, time

def _sweep_marker(marker):
    needle = ("SALT_SANDBOX_ID=" + marker).encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open("/proc/%s/environ" % entry, "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass

def _kill_all(pid, uid, marker):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if uid is not None and os.geteuid() == 0:
        helper = os.fork()
        if helper == 0:  # become the run's uid: kill(-1) then reaches exactly its processes
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                for _ in range(3):  # (a fork in progress passes the signal on to the child)
                    os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(helper, 0)
    else:  # same user as the caller: find the run's processes by the marker in their environment
        for _ in range(3):
            _sweep_marker(marker)

def _main():
    budget, uid, marker = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    uid = None if uid == "-" else int(uid)
    cmd = sys.argv[sys.argv.index("--") + 1:]
    deadline = time.monotonic() + budget
    parent = os.getppid()
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    # only the harness's tree holds the caller's pipes from now on
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 65536)
    status = None
    while status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got = signal.sigtimedwait(watched, min(left, 0.25))
        if got is not None and got.si_signo != signal.SIGCHLD:
            break  # the caller asks us to stop
        if os.getppid() != parent:
            break  # the caller is gone
        done, st = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            status = st
    _kill_all(pid, uid, marker)
    if status is None:
        os.waitpid(pid, 0)
        os._exit(128 + signal.SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)

_main()
'''

# ---------------------------------------------------------------------------------------------
# the harness: limits, privilege drop, guard, then the program and its tests

_HARNESS = r'''
import os, sys

def _salt_guard(workdir):
    """Install the audit hook (fallback mode). Everything it uses is bound as a default argument
    now, so that the program cannot swap a module function or builtin under it."""
    import posix, _signal, signal, _posixsubprocess, stat

    def _refuse(*args, **kwargs):
        raise PermissionError("sandbox: this function is not allowed")

    hidden = ("pidfd_open", "mkfifo", "mknod", "setpriority", "sched_setaffinity", "sched_setscheduler",
              "sched_setparam")
    for mod, names in ((posix, hidden), (os, hidden),
                       (_signal, ("pidfd_send_signal",)), (signal, ("pidfd_send_signal",)),
                       (_posixsubprocess, ("fork_exec",))):
        for name in names:
            if hasattr(mod, name):
                setattr(mod, name, _refuse)
    roots = []
    for entry in sys.path + ["/usr/share/zoneinfo"]:
        if entry and entry.startswith("/") and ".." not in entry.split("/"):
            entry = entry.rstrip("/")
            if entry and entry != workdir and not entry.startswith(workdir + "/"):
                roots.append(entry)
    deny = frozenset(("os.kill", "os.killpg", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
                      "os.spawn", "os.system", "os.startfile", "os.symlink", "os.link", "subprocess.Popen",
                      "pty.spawn", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                      "resource.prlimit", "fcntl.ioctl", "sqlite3.enable_load_extension",
                      "sqlite3.load_extension", "webbrowser.open", "_posixsubprocess.fork_exec"))
    deny_prefix = ("socket.", "ctypes.", "_ctypes.")
    deny_import = frozenset(("posix", "_posixsubprocess", "_signal", "_ctypes", "ctypes"))
    write_events = {"os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.truncate": (0,),
                    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                    "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,),
                    "os.lchflags": (0,), "sqlite3.connect": (0,)}
    read_events = {"os.listdir": 0, "os.scandir": 0, "os.getxattr": 0, "os.listxattr": 0}
    write_flags = (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
                   | getattr(os, "O_TMPFILE", 0))
    dir_flags = getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0)
    files = frozenset(("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"))

    def norm(path, _getcwd=posix.getcwd, _add=str.__add__, _decode=bytes.decode, _split=str.split,
             _join=str.join, _startswith=str.startswith, _str=str, _bytes=bytes, _type=type,
             _list=list, _isinstance=isinstance):
        """Absolute lexical path, or None when it cannot be checked (a '..' part, odd type)."""
        if _isinstance(path, _bytes):
            path = _decode(path, "utf-8", "surrogateescape")
        elif _isinstance(path, _str):
            path = _add("", path)  # a plain str (a subclass cannot lie about its value)
        else:
            return None
        if not _startswith(path, "/"):
            path = _add(_add(_getcwd(), "/"), path)
        parts = _list()
        for part in _split(path, "/"):
            if part == "..":
                return None
            if part and part != ".":
                parts.append(part)
        return _add("/", _join("/", parts))

    def inside(path, root, _startswith=str.startswith, _add=str.__add__):
        return path == root or _startswith(path, _add(root, "/"))

    def hook(event, args, _deny=deny, _deny_prefix=deny_prefix, _deny_import=deny_import,
             _write_events=write_events, _read_events=read_events, _write_flags=write_flags,
             _dir_flags=dir_flags, _files=files, _roots=tuple(roots), _workdir=workdir, _norm=norm,
             _inside=inside, _stat=posix.stat, _isdir=stat.S_ISDIR, _isinstance=isinstance,
             _int=int, _err=PermissionError, _startswith=str.startswith, _str=str, _any=any,
             _guarded=None):
        if event in _deny or (_isinstance(event, _str) and _startswith(event, _deny_prefix)):
            raise _err("sandbox: %s is not allowed" % event)
        if event == "import":
            if args[0] in _deny_import:
                raise _err("sandbox: importing %s is not allowed" % args[0])
            return
        if event == "open":
            path, flags = args[0], args[2]
            if _isinstance(path, _int):
                return  # an fd it already holds
            p = _norm(path)
            if p is None:
                raise _err("sandbox: path %r is not allowed" % (path,))
            if _inside(p, _workdir):
                return
            if flags & _write_flags:
                if p == "/dev/null":
                    return
                raise _err("sandbox: writing outside the sandbox directory is not allowed: %s" % p)
            if flags & _dir_flags:
                raise _err("sandbox: opening a directory outside the sandbox is not allowed: %s" % p)
            if p in _files or _any(_inside(p, r) for r in _roots):
                try:
                    if _isdir(_stat(p).st_mode):
                        raise _err("sandbox: opening a directory outside the sandbox is not allowed: %s" % p)
                except OSError as exc:
                    if _isinstance(exc, _err):
                        raise
                return
            raise _err("sandbox: reading outside the sandbox is not allowed: %s" % p)
        if event in _write_events:
            for i in _write_events[event]:
                p = _norm(args[i])
                if p is None or not _inside(p, _workdir):
                    raise _err("sandbox: %s outside the sandbox directory is not allowed: %r" % (event, args[i]))
            return
        if event in _read_events:
            path = args[_read_events[event]]
            if path is None:
                path = "."
            if _isinstance(path, _int):
                return
            p = _norm(path)
            if p is None or not (_inside(p, _workdir) or _any(_inside(p, r) for r in _roots)):
                raise _err("sandbox: %s outside the sandbox is not allowed: %r" % (event, path))
            return
        if event == "os.chdir":
            if _isinstance(args[0], _int):
                return
            p = _norm(args[0])
            if p is None or not _inside(p, _workdir):
                raise _err("sandbox: os.chdir outside the sandbox directory is not allowed")
            return
        if event in ("object.__setattr__", "object.__delattr__") and _any(args[0] is f for f in _guarded):
            raise _err("sandbox: changing the guard is not allowed")

    hook.__defaults__ = hook.__defaults__[:-1] + ((hook, norm, inside),)
    sys.addaudithook(hook)


def _salt_harness():
    import resource, traceback, json
    nonce = sys.stdin.buffer.readline().strip().decode()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    fd = int(sys.argv[1])
    limits = [int(x) for x in sys.argv[2].split(",")]
    cpu_s, mem_b, nproc, fsize_b, nofile = limits
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "payload.txt"), "r", encoding="utf-8") as fh:
        payload = json.load(fh)
    setup, program, tests, entry_point = (payload["setup"], payload["program"], payload["tests"],
                                          payload["entry_point"])
    del payload
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_CPU", cpu_s), ("RLIMIT_AS", mem_b),
                        ("RLIMIT_NPROC", nproc), ("RLIMIT_FSIZE", fsize_b), ("RLIMIT_NOFILE", nofile)):
        res = getattr(resource, name)
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(res, (value, hard))
    if sys.argv[3] != "-":  # root: become the run's own uid (= gid) before any untrusted code runs
        uid = int(sys.argv[3])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgid() != uid or os.getgroups():
            os._exit(5)
    os.unlink(os.path.join(here, "payload.txt"))
    if sys.argv[4] == "guard":
        _salt_guard(os.path.realpath(here))
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
    """Can ``python`` run (in bwrap or not, as a fresh unprivileged uid or not), import the
    standard library and write its directory? The fallback also needs ``sys.addaudithook``."""
    workdir = tempfile.mkdtemp(prefix="salt-sbx-probe-")
    try:
        code = "import os, sys\n"
        uid = os.getuid()
        if drop_user:
            uid = _fresh_uid()
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o755)
            code += f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        # the standard library must stay importable after the switch (it is not when Python
        # lives under a directory only root may enter, e.g. /root/.pyenv without bwrap)
        code += ("import json, socket, decimal, traceback\nopen('probe.txt', 'w').write('x')\n"
                 "print('ok', os.getuid(), sys.version_info[0], int(hasattr(sys, 'addaudithook')))")
        cmd = [python, "-I", "-S", "-B", "-c", code]
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
# process sweeping


def _proc_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def processes_with_marker(marker: str) -> list[int]:
    """PIDs whose initial environment carries ``SALT_SANDBOX_ID=<marker>`` (a /proc scan)."""
    needle = f"SALT_SANDBOX_ID={marker}".encode()
    pids = []
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(pid)
    return pids


def processes_of_uid(uid: int) -> list[int]:
    """PIDs of live (not zombie) processes whose real or effective uid is ``uid`` (a /proc scan)."""
    pids = []
    want = str(uid).encode()
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                zombie = False
                for line in fh:
                    if line.startswith(b"State:"):
                        zombie = line.split()[1:2] == [b"Z"]
                    elif line.startswith(b"Uid:"):
                        if not zombie and want in line.split()[1:3]:
                            pids.append(pid)
                        break
        except OSError:
            continue
    return pids


def _sweep(marker: str, uid: int | None = None) -> int:
    """SIGKILL every process of this run still alive; returns how many were signalled."""
    killed = 0
    for _ in range(5):  # a fork loop can create new ones while we kill: repeat a few times
        pids = set(processes_with_marker(marker))
        if uid is not None:
            pids.update(processes_of_uid(uid))
        pids.discard(os.getpid())
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


def _stop(proc: subprocess.Popen) -> None:
    """Ask the supervisor to kill the run (SIGTERM), then kill its process group if it lingers."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=10)


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
    Raises:
        SandboxIsolationError: isolation is missing and the fallback was not allowed (or, as
            root, no unprivileged user can run Python); nothing was run.
    """
    if not isinstance(program, str):
        raise TypeError(f"run_tests: program must be a str, got {type(program).__name__}")
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("run_tests: tests must be a non-empty list of source strings")
    if timeout_s <= 0 or memory_mb < 64:
        raise ValueError(f"run_tests: need timeout_s > 0 and memory_mb >= 64, got {timeout_s}, {memory_mb}")
    caps = capabilities()
    message = isolation_error(caps)
    if message:
        raise SandboxIsolationError(message)
    isolation = _isolation_list(caps)
    start = time.monotonic()
    marker = secrets.token_hex(8)
    uid = _fresh_uid() if caps["drop_user"] else None
    workdir = tempfile.mkdtemp(prefix=f"salt-sbx-{marker}-")
    nonce = secrets.token_hex(16)
    proc = None
    swept = False
    read_fd = write_fd = -1
    try:
        with open(os.path.join(workdir, "harness.py"), "w", encoding="utf-8") as fh:
            fh.write(_HARNESS)
        with open(os.path.join(workdir, "payload.txt"), "w", encoding="utf-8") as fh:
            json.dump({"setup": setup or "", "program": program, "tests": list(tests),
                       "entry_point": entry_point}, fh)
        if uid is not None:
            for name in ("", "harness.py", "payload.txt"):
                os.chown(os.path.join(workdir, name), uid, uid)
        # 0755 lets the capability-less bwrap (root) enter the run uid's directory; without bwrap
        # root needs no permission bits and other users are kept out
        os.chmod(workdir, 0o755 if (caps["bwrap"] and uid is not None) else 0o700)
        read_fd, write_fd = os.pipe()
        cpu_s = int(timeout_s) + 1
        limits = f"{cpu_s},{memory_mb * 1024 * 1024},{NPROC},{FSIZE_MB * 1024 * 1024},{NOFILE}"
        harness = [caps["python"], "-I", "-S", "-B", os.path.join(workdir, "harness.py"), str(write_fd), limits,
                   "-" if uid is None else str(uid), "guard" if _FALLBACK_GUARD and not caps["bwrap"] else "-"]
        if caps["bwrap"]:
            harness = _bwrap_args(workdir, uid is not None, caps["python"]) + harness
        cmd = [_python(), "-I", "-S", "-B", "-c", _SUPERVISOR, str(timeout_s + SUPERVISOR_GRACE_S),
               "-" if uid is None else str(uid), marker, workdir, "--"] + harness
        env = {"LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
               "PYTHONIOENCODING": "utf-8", "SALT_SANDBOX_ID": marker}
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=workdir, pass_fds=(write_fd,),
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return SandboxResult(False, "sandbox_error", "", f"could not start the sandbox: {exc}",
                                 time.monotonic() - start, isolation, None, marker, uid)
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
                # every pipe closed but the supervisor lives on (the program closed its fds)
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    status = "timeout"
                    break
        sel.close()
        _stop(proc)
        _sweep(marker, uid)
        swept = True
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
                status = "killed"  # a signal (the supervisor and bwrap report 128 + its number)
            elif not ready:
                status = "sandbox_error"  # the harness failed before the program ran
            elif not loaded:
                status = "exited_early" if rc == 0 else "error"
            elif rc == 0:
                status = "exited_early"
            else:
                status = "failed"
        return SandboxResult(status == "passed", status, _tail(out), _tail(err), duration, isolation, rc,
                             marker, uid)
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
            if not swept:
                _stop(proc)
                _sweep(marker, uid)
        shutil.rmtree(workdir, ignore_errors=True)


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
