"""The code sandbox's harness: limits, privilege drop, the fallback's guard, then the program and
its tests. :mod:`salt.tasks.sandbox` copies this file into the run's directory as ``harness.py``
and runs it there (``python -I -S -B harness.py FD LIMITS UID|- guard|-``, inside bubblewrap when it
works), where the program could already see it: the run directory is the only place both the
caller and the program's interpreter can reach (bubblewrap shows nothing else of the host; as
root the run's uid may not be able to enter the repository). ``harness.py --probe UID|-`` is
the capability probe (:func:`probe`).

Standard library only, nothing runs at import, and no syntax newer than the oldest interpreter
the sandbox may fall back to (a system ``python3.X``): the file is copied alone.

Protocol (:func:`run`): the nonce arrives on stdin (which is then replaced by ``/dev/null``), the
payload (``payload.txt``: setup, program, tests, entry point) is read and deleted, and
``<nonce> ready`` / ``loaded`` / ``passed`` are written on the inherited fd FD; the exit code is
3 when the program did not load, 4 when a test raised, 5 when the privilege drop did not hold.

The guard (fallback mode only: :func:`install_guard`). Before the program runs, an audit hook
(:func:`sys.addaudithook`, built by :func:`make_hook`) is installed and the few dangerous
functions that raise no audit event are replaced with ones that raise. It refuses
(``PermissionError``): signals to other processes (``os.kill``, ``killpg``, ``pidfd_send_signal``,
``setpriority``, ``sched_set*``), process creation (``os.fork``/``forkpty``/``exec*``/``spawn*``/
``posix_spawn``/``system``, ``subprocess.Popen``, ``_posixsubprocess.fork_exec``, re-importing
``posix`` and friends), every socket operation (``socket.*``, so no network and no DNS),
``ctypes``, ``gc.get_objects``/``get_referrers``/``get_referents`` (used to find and patch the
hook), ``resource.prlimit``, ``fcntl.ioctl``; opening for writing, creating, removing, renaming,
chmod/chown and symlinks or hard links anywhere but its directory (plus ``/dev/null``); reading
or listing anything but its directory, the interpreter's standard library (``sys.path``),
``/usr/share/zoneinfo`` and ``/dev/{null,zero,random,urandom}``; any path with a ``..``
component; opening a directory outside its directory (no ``dir_fd`` escapes). Everything the
hook uses is bound as a default argument when it is built, so the program cannot swap a module
function or builtin under it. Honest limit: this is **not a security boundary**; the hook runs in
the same interpreter as the program (see :mod:`salt.tasks.sandbox`).
"""

import os
import posix
import stat
import sys
from types import MappingProxyType

EXIT_NOT_LOADED = 3
EXIT_TEST_FAILED = 4
EXIT_PRIVILEGES = 5
RLIMITS = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE")
"""The order of the comma-separated LIMITS argument (RLIMIT_CORE is always 0)."""

_HIDDEN = ("pidfd_open", "mkfifo", "mknod", "setpriority", "sched_setaffinity", "sched_setscheduler",
           "sched_setparam")
_DENY = frozenset(("os.kill", "os.killpg", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
                   "os.spawn", "os.system", "os.startfile", "os.symlink", "os.link", "subprocess.Popen",
                   "pty.spawn", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                   "resource.prlimit", "fcntl.ioctl", "sqlite3.enable_load_extension",
                   "sqlite3.load_extension", "webbrowser.open", "_posixsubprocess.fork_exec"))
_DENY_PREFIX = ("socket.", "ctypes.", "_ctypes.")
_DENY_IMPORT = frozenset(("posix", "_posixsubprocess", "_signal", "_ctypes", "ctypes"))
_WRITE_EVENTS = {"os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.truncate": (0,),
                 "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                 "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,),
                 "os.lchflags": (0,), "sqlite3.connect": (0,)}
_READ_EVENTS = {"os.listdir": 0, "os.scandir": 0, "os.getxattr": 0, "os.listxattr": 0}
_WRITE_FLAGS = (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
                | getattr(os, "O_TMPFILE", 0))
_DIR_FLAGS = getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0)
_FILES = frozenset(("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"))


# ---------------------------------------------------------------------------------------------
# the guard


def norm(path, _getcwd=posix.getcwd, _add=str.__add__, _decode=bytes.decode, _split=str.split,
         _join=str.join, _startswith=str.startswith, _str=str, _bytes=bytes, _list=list,
         _isinstance=isinstance):
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
    """``path`` is ``root`` or below it (both normalised)."""
    return path == root or _startswith(path, _add(root, "/"))


def readable_roots(workdir, path_entries):
    """Directories the program may read besides its own: absolute ``sys.path`` entries (the
    standard library) and ``/usr/share/zoneinfo``, none with a '..' part, none at or below
    ``workdir`` (which is allowed anyway)."""
    roots = []
    for entry in list(path_entries) + ["/usr/share/zoneinfo"]:
        if entry and entry.startswith("/") and ".." not in entry.split("/"):
            entry = entry.rstrip("/")
            if entry and entry != workdir and not entry.startswith(workdir + "/"):
                roots.append(entry)
    return roots


def make_hook(workdir, roots):
    """The audit hook for a program confined to ``workdir`` that may read below ``roots``. Its
    tables are read-only views of private copies: the module's own dicts are reachable by the
    program (this file runs as ``__main__``), the copies are not."""

    write_events = MappingProxyType(dict(_WRITE_EVENTS))
    read_events = MappingProxyType(dict(_READ_EVENTS))

    def hook(event, args, _deny=_DENY, _deny_prefix=_DENY_PREFIX, _deny_import=_DENY_IMPORT,
             _write_events=write_events, _read_events=read_events, _write_flags=_WRITE_FLAGS,
             _dir_flags=_DIR_FLAGS, _files=_FILES, _roots=tuple(roots), _workdir=workdir, _norm=norm,
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
    return hook


def _refuse(*args, **kwargs):
    raise PermissionError("sandbox: this function is not allowed")


def install_guard(workdir):
    """Replace the functions that raise no audit event, then install the hook (irreversible: only
    ever in the harness process, right before the program runs)."""
    import _posixsubprocess
    import _signal
    import signal

    for mod, names in ((posix, _HIDDEN), (os, _HIDDEN),
                       (_signal, ("pidfd_send_signal",)), (signal, ("pidfd_send_signal",)),
                       (_posixsubprocess, ("fork_exec",))):
        for name in names:
            if hasattr(mod, name):
                setattr(mod, name, _refuse)
    sys.addaudithook(make_hook(workdir, readable_roots(workdir, sys.path)))


# ---------------------------------------------------------------------------------------------
# the run


def set_limits(limits):
    """``limits``: "CPU_S,AS_BYTES,NPROC,FSIZE_BYTES,NOFILE" (see :data:`RLIMITS`); the CPU hard
    limit is one second above the soft one (SIGXCPU first, then SIGKILL)."""
    import resource

    values = [int(x) for x in limits.split(",")]
    if len(values) != len(RLIMITS):
        raise ValueError("harness: LIMITS needs %d comma-separated integers, got %r" % (len(RLIMITS), limits))
    for name, value in [("RLIMIT_CORE", 0)] + list(zip(RLIMITS, values)):
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


def become(uid):
    """Root only: become ``uid`` (= gid, no supplementary groups); exit at once if it did not hold."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != uid or os.getgroups():
        os._exit(EXIT_PRIVILEGES)


def _read_nonce():
    """The nonce from stdin; stdin is then ``/dev/null`` (the program reads end of file)."""
    nonce = sys.stdin.buffer.readline().strip().decode()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return nonce


def _load_payload(path):
    import json

    with open(path, "r", encoding="utf-8") as fh:
        payload = json.load(fh)
    return payload["setup"], payload["program"], payload["tests"], payload["entry_point"]


def _exit_with_traceback(code, flush_stdout):
    import traceback

    traceback.print_exc()
    sys.stderr.flush()
    if flush_stdout:
        sys.stdout.flush()
    os._exit(code)


def run(argv):
    """``FD LIMITS UID|- guard|-``: the harness proper (never returns)."""
    import traceback  # noqa: F401 (loaded before the limits: a traceback prints even at the memory limit)

    nonce = _read_nonce()
    fd = int(argv[0])
    here = os.path.dirname(os.path.abspath(__file__))
    payload = os.path.join(here, "payload.txt")
    setup, program, tests, entry_point = _load_payload(payload)
    set_limits(argv[1])
    if argv[2] != "-":  # root: become the run's own uid before any untrusted code runs
        become(int(argv[2]))
    os.unlink(payload)
    if argv[3] == "guard":
        install_guard(os.path.realpath(here))

    def tell(word):
        os.write(fd, (nonce + " " + word + "\n").encode())

    tell("ready")
    g = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(setup + "\n" + program, "solution.py", "exec"), g)
        if entry_point and not callable(g.get(entry_point)):
            raise NameError("the program does not define a function named " + repr(entry_point))
    except BaseException:
        _exit_with_traceback(EXIT_NOT_LOADED, False)
    tell("loaded")
    try:
        for i, test in enumerate(tests):
            exec(compile(test, "test_%d.py" % i, "exec"), g)
    except BaseException:
        _exit_with_traceback(EXIT_TEST_FAILED, True)
    sys.stdout.flush()
    sys.stderr.flush()
    tell("passed")
    os._exit(0)


def probe(uid):
    """``--probe UID|-``: can this interpreter (as ``uid`` when given) import the standard library
    the programs need and write its directory? Prints ``ok UID MAJOR HAS_AUDITHOOK``."""
    if uid != "-":
        uid = int(uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # the standard library must stay importable after the switch (it is not when Python lives
    # under a directory only root may enter, e.g. /root/.pyenv without bwrap)
    import decimal  # noqa: F401
    import json  # noqa: F401
    import socket  # noqa: F401
    import traceback  # noqa: F401

    with open("probe.txt", "w") as fh:
        fh.write("x")
    print("ok", os.getuid(), sys.version_info[0], int(hasattr(sys, "addaudithook")))


def main(argv):
    if argv[:1] == ["--probe"]:
        probe(argv[1])
    else:
        run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
