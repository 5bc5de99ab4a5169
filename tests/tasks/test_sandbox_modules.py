"""The sandbox's own modules in-process, where that is safe: the harness guard's path checks and
audit hook (built, never installed here), the shared process sweep, the supervisor's arguments,
the classification of how a run ended. The end-to-end behaviour (both modes, hostile programs)
is in test_sandbox.py, test_sandbox_adversarial.py and test_sandbox_policy.py."""

from __future__ import annotations

import os
import posixpath
import random
import subprocess
import time

import pytest

from salt.tasks import sandbox, sandbox_harness, sandbox_io, sandbox_supervisor
from salt.tasks.sandbox_harness import inside, make_hook, norm, readable_roots

WORK = "/tmp/salt-sbx-0123-run"
ROOTS = ["/usr/lib/python3.11", "/usr/share/zoneinfo"]


def _reference_norm(path: str, cwd: str) -> str | None:
    """Brute force: refuse any '..' part, else posixpath's lexical normalisation of cwd/path."""
    if ".." in path.split("/"):
        return None
    full = path if path.startswith("/") else cwd + "/" + path
    out = posixpath.normpath(full)
    return "/" + out.lstrip("/")  # normpath keeps a leading '//'


def test_norm_matches_a_brute_force_normalisation():
    rng = random.Random(0)
    parts = ["a", "bb", ".", "..", "", "c d", "é"]
    cwd = os.getcwd()
    for _ in range(2000):
        path = "/".join(rng.choice(parts) for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.5:
            path = "/" + path
        assert norm(path) == _reference_norm(path, cwd), path
        assert norm(path.encode()) == _reference_norm(path, cwd), path
    assert norm(3) is None and norm(None) is None


def test_inside_is_by_whole_components():
    assert inside(WORK, WORK) and inside(WORK + "/x/y", WORK)
    assert not inside(WORK + "x", WORK) and not inside("/tmp", WORK)


def test_readable_roots_drop_relative_dotdot_and_the_workdir():
    roots = readable_roots(WORK, ["", "relative", "/usr/lib/python3.11/", "/usr/../etc", WORK, WORK + "/sub"])
    assert roots == ["/usr/lib/python3.11", "/usr/share/zoneinfo"]


def _refused(hook, event, *args) -> bool:
    try:
        hook(event, args)
    except PermissionError:
        return True
    return False


def test_the_hook_refuses_escapes_and_allows_the_run_directory():
    hook = make_hook(WORK, ROOTS)
    for event in ("os.kill", "os.fork", "os.system", "subprocess.Popen", "socket.connect", "ctypes.dlopen",
                  "gc.get_referrers", "resource.prlimit"):
        assert _refused(hook, event, 1, 2), event
    assert _refused(hook, "import", "posix") and not _refused(hook, "import", "json")
    # open: (path, mode, flags)
    assert not _refused(hook, "open", WORK + "/out.txt", "w", os.O_WRONLY | os.O_CREAT)
    assert not _refused(hook, "open", "/dev/null", "w", os.O_WRONLY)
    assert not _refused(hook, "open", "/usr/share/zoneinfo/UTC", "r", os.O_RDONLY)
    assert not _refused(hook, "open", 7, "r", os.O_RDONLY)  # an fd it already holds
    assert _refused(hook, "open", "/etc/passwd", "r", os.O_RDONLY)
    assert _refused(hook, "open", "/usr/lib/python3.11/x.py", "w", os.O_WRONLY)
    assert _refused(hook, "open", WORK + "/../secret", "r", os.O_RDONLY)
    assert _refused(hook, "open", "/usr/share/zoneinfo", "r", os.O_RDONLY | os.O_DIRECTORY)
    assert not _refused(hook, "os.rename", WORK + "/a", WORK + "/b")
    assert _refused(hook, "os.rename", WORK + "/a", "/tmp/b")
    assert _refused(hook, "os.remove", "/tmp/x") and not _refused(hook, "os.remove", WORK + "/x")
    assert _refused(hook, "os.listdir", "/etc") and not _refused(hook, "os.listdir", "/usr/share/zoneinfo")
    assert _refused(hook, "os.chdir", "/") and not _refused(hook, "os.chdir", WORK + "/d")
    assert _refused(hook, "object.__setattr__", norm, "__code__", None)
    assert _refused(hook, "object.__setattr__", hook, "__defaults__", None)
    assert not _refused(hook, "object.__setattr__", object(), "x", 1)


def test_the_hook_keeps_private_tables():
    """The harness runs as ``__main__``, so the program can reach the module's tables: emptying
    them must not weaken a hook that is already built."""
    hook = make_hook(WORK, ROOTS)
    saved_w, saved_r = dict(sandbox_harness._WRITE_EVENTS), dict(sandbox_harness._READ_EVENTS)
    try:
        sandbox_harness._WRITE_EVENTS.clear()
        sandbox_harness._READ_EVENTS.clear()
        assert _refused(hook, "os.remove", "/tmp/x") and _refused(hook, "os.listdir", "/etc")
        assert not any(isinstance(d, (dict, list, set, bytearray)) for d in hook.__defaults__)  # none mutable
    finally:
        sandbox_harness._WRITE_EVENTS.update(saved_w)
        sandbox_harness._READ_EVENTS.update(saved_r)


def test_set_limits_names_a_malformed_argument():
    with pytest.raises(ValueError, match="LIMITS needs 5"):
        sandbox_harness.set_limits("1,2,3")


def test_the_harness_file_is_self_contained_and_old_syntax():
    """It is copied alone into the run directory and may run under a system python3.X: it
    imports nothing from salt and compiles as Python 3.8 (no newer syntax)."""
    import ast

    for module in (sandbox_harness, sandbox_supervisor):
        source = open(module.__file__, encoding="utf-8").read()
        tree = ast.parse(source, feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module and not node.module.startswith("salt"), (module.__name__, node.module)
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("salt") for a in node.names), module.__name__


def test_supervisor_arguments():
    assert sandbox_supervisor.parse_args(["2.5", "-", "m1", "/w", "--", "/py", "h.py"]) == (2.5, None, "m1",
                                                                                           ["/py", "h.py"])
    assert sandbox_supervisor.parse_args(["1", "1234", "m", "/w", "--", "x"])[1] == 1234
    for bad in (["1", "-", "m", "--", "x"], ["1", "-", "m", "/w", "x"], ["1", "-", "m", "/w", "--"]):
        with pytest.raises(SystemExit, match="usage"):
            sandbox_supervisor.parse_args(bad)


def test_the_sweep_kills_exactly_the_marked_processes():
    marker, other = "test" + os.urandom(6).hex(), "test" + os.urandom(6).hex()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    marked = [subprocess.Popen(["sleep", "60"], env={**env, "SALT_SANDBOX_ID": marker}) for _ in range(3)]
    spared = subprocess.Popen(["sleep", "60"], env={**env, "SALT_SANDBOX_ID": other})
    try:
        deadline = time.monotonic() + 5
        while len(sandbox.processes_with_marker(marker)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # /proc/PID/environ is the exec'd image's: wait for the exec
        assert sorted(sandbox.processes_with_marker(marker)) == sorted(p.pid for p in marked)
        assert sandbox_supervisor.sweep(marker) == 3
        assert [p.wait(timeout=5) for p in marked] == [-9, -9, -9]
        assert spared.poll() is None and sandbox.processes_with_marker(other) == [spared.pid]
        assert sandbox_supervisor.sweep(marker) == 0
    finally:
        for p in marked + [spared]:
            p.kill()
            p.wait()


def test_processes_of_uid_finds_this_process():
    assert os.getpid() in sandbox.processes_of_uid(os.getuid())
    assert sandbox.processes_of_uid(sandbox.SANDBOX_UID_BASE + 12345) == []


@pytest.mark.parametrize(
    "words, rc, status",
    [
        (["ready", "loaded", "passed"], 0, "passed"),
        (["ready", "loaded", "passed"], 1, "failed"),  # a pass line but a failing exit is no pass
        (["ready", "loaded"], 4, "failed"),
        (["ready", "loaded"], 0, "exited_early"),
        (["ready"], 0, "exited_early"),
        (["ready"], 3, "error"),
        ([], 0, "sandbox_error"),
        ([], 5, "sandbox_error"),
        (["ready", "loaded"], 137, "killed"),
        (["ready", "loaded", "passed"], -9, "killed"),
    ],
)
def test_classify(words, rc, status):
    nonce = "ab" * 16
    channel = "".join(f"{nonce} {w}\n" for w in words).encode()
    assert sandbox_io.classify(channel, nonce, rc) == status
    forged = "".join(f"{'cd' * 16} {w}\n" for w in words).encode()  # another nonce counts for nothing
    assert sandbox_io.classify(forged, nonce, rc) in ("sandbox_error", "killed")


def test_the_supervisor_and_harness_run_from_their_files(sandbox_modes):
    """The command line names the supervisor's file and runs the harness copied next to the payload."""
    caps = sandbox_modes["bwrap"] or sandbox_modes["fallback"]
    run = sandbox._Run("m" * 16, None, "/tmp/salt-sbx-" + "m" * 16 + "-x", "n" * 32)
    cmd, env = sandbox._command(run, caps, 2.0, 128, 9)
    assert cmd[:5] == [sandbox._python(), "-I", "-S", "-B", sandbox.SUPERVISOR]
    assert cmd[5:10] == [str(2.0 + sandbox.SUPERVISOR_GRACE_S), "-", run.marker, run.workdir, "--"]
    harness = cmd[cmd.index(caps["python"], 10):]
    assert harness == [caps["python"], "-I", "-S", "-B", run.workdir + "/harness.py", "9",
                       f"3,{128 * 1024 * 1024},64,{16 * 1024 * 1024},64", "-", "-" if caps["bwrap"] else "guard"]
    assert env["SALT_SANDBOX_ID"] == run.marker and "PATH" not in env
    assert os.path.isfile(sandbox.SUPERVISOR) and os.path.isfile(sandbox.HARNESS)
