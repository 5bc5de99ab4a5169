"""The code sandbox's supervisor process, and the one process sweep the sandbox uses.

Two roles, one file:

* **the supervisor** (run as a script: ``python -I -S -B <this file> BUDGET UID MARKER WORKDIR --
  HARNESS...``, see :func:`main`). :mod:`salt.tasks.sandbox` starts it in a new session as the
  caller's user; it forks the harness into its own process group, waits for it with a
  wall-clock deadline and then kills everything the run started (:func:`kill_run`). It is the
  program's parent, never the caller.
* **the sweep** (:func:`processes_with_marker`, :func:`processes_of_uid`, :func:`sweep`),
  imported by :mod:`salt.tasks.sandbox` for its own clean-up after the supervisor is gone, and
  called by the supervisor itself: one implementation for both.

Standard library only, and nothing runs at import: under ``-I -S`` (isolated mode, no site)
neither the script's directory nor site-packages is on ``sys.path``, so this file must not import
anything from ``salt``.
"""

import os
import signal
import sys
import time

MARKER_VAR = "SALT_SANDBOX_ID"
"""Every process of a run carries ``SALT_SANDBOX_ID=<marker>`` in its initial environment."""
SWEEP_WAIT_S = 2.0
"""How long a sweep keeps killing and waits for the run's processes to be gone (a killed process
exits only once it is scheduled again, which on a loaded machine takes a while)."""
POLL_S = 0.25
"""How often the supervisor checks that its caller is still alive."""


# ---------------------------------------------------------------------------------------------
# the sweep (shared with the caller)


def proc_pids():
    """Every PID in /proc."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def processes_with_marker(marker):
    """PIDs whose initial environment carries ``SALT_SANDBOX_ID=<marker>`` (a /proc scan)."""
    needle = (MARKER_VAR + "=" + marker).encode()
    pids = []
    for pid in proc_pids():
        try:
            with open("/proc/%d/environ" % pid, "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(pid)
    return pids


def processes_of_uid(uid):
    """PIDs of live (not zombie) processes whose real or effective uid is ``uid`` (a /proc scan)."""
    pids = []
    want = str(uid).encode()
    for pid in proc_pids():
        try:
            with open("/proc/%d/status" % pid, "rb") as fh:
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


def sweep(marker, uid=None, wait_s=None):
    """SIGKILL every process of this run still alive (its marker, or as root its uid), except the
    calling process, until none is left or ``wait_s`` (default :data:`SWEEP_WAIT_S`) has passed;
    returns how many distinct processes were signalled. A killed process lives on until it is
    scheduled, and a fork loop can create new ones while they are killed: hence the repeats."""
    deadline = time.monotonic() + (SWEEP_WAIT_S if wait_s is None else wait_s)
    signalled = set()
    me = os.getpid()
    while True:
        pids = set(processes_with_marker(marker))
        if uid is not None:
            pids.update(processes_of_uid(uid))
        pids.discard(me)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                signalled.add(pid)
            except OSError:
                pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return len(signalled)


# ---------------------------------------------------------------------------------------------
# the supervisor


def kill_as_uid(uid):
    """As root: fork a helper that becomes ``uid`` and calls ``kill(-1, SIGKILL)``, which then
    reaches exactly that uid's processes, all in one system call (a fork bomb cannot outrun it)."""
    helper = os.fork()
    if helper == 0:
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


def kill_run(pid, uid, marker):
    """Kill everything the run started: the harness's process group, then, as root, every process
    of the run's uid, else (same user as the caller) every process carrying the run's marker."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if uid is not None and os.geteuid() == 0:
        kill_as_uid(uid)
    else:
        sweep(marker)


def _start(cmd):
    """Fork ``cmd`` into a process group of its own, with the signal mask cleared."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    return pid


def _detach_stdio():
    """Only the harness's tree holds the caller's pipes from now on."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 65536)


def _wait(pid, deadline, watched, parent):
    """The harness's wait status, or None when the deadline passed, the caller asked to stop
    (SIGTERM, SIGINT, SIGHUP) or the caller (``parent``) is gone."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        got = signal.sigtimedwait(watched, min(left, POLL_S))
        if got is not None and got.si_signo != signal.SIGCHLD:
            return None  # the caller asks us to stop
        if os.getppid() != parent:
            return None  # the caller is gone
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status


def supervise(budget_s, uid, marker, cmd):
    """Run ``cmd`` (the harness) for at most ``budget_s`` seconds, kill the run, and return the
    supervisor's exit code: the harness's, or 128 + signal number when a signal ended it or it
    was killed here."""
    deadline = time.monotonic() + budget_s
    parent = os.getppid()
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    pid = _start(cmd)
    _detach_stdio()
    status = _wait(pid, deadline, watched, parent)
    kill_run(pid, uid, marker)
    if status is None:
        os.waitpid(pid, 0)
        return 128 + signal.SIGKILL
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def parse_args(argv):
    """``BUDGET UID|- MARKER WORKDIR -- CMD...`` -> (budget_s, uid or None, marker, cmd). WORKDIR
    is not used here: it puts the run's directory name in the supervisor's command line."""
    if "--" not in argv or len(argv[: argv.index("--")]) != 4 or argv.index("--") == len(argv) - 1:
        raise SystemExit("usage: sandbox_supervisor.py BUDGET UID|- MARKER WORKDIR -- CMD...")
    budget, uid, marker = argv[0], argv[1], argv[2]
    return float(budget), None if uid == "-" else int(uid), marker, argv[argv.index("--") + 1:]


def main(argv):
    budget_s, uid, marker, cmd = parse_args(argv)
    os._exit(supervise(budget_s, uid, marker, cmd))


if __name__ == "__main__":
    main(sys.argv[1:])
