"""Hostile programs in both sandbox modes: bwrap, and the fallback forced with
SALT_SANDBOX_NO_BWRAP=1 plus the explicit opt-in. In each case the caller survives, nothing
escapes (no file read or written outside, no connection, no signal delivered), nothing is left
running, and the run ends in bounded time. Plus: the program's parent is the supervisor, it never
runs as root, and HumanEval's 164 canonical solutions pass (broken ones fail) in both modes."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from salt.tasks import sandbox, sandbox_supervisor
from salt.tasks.datasets import humaneval_data_path
from salt.tasks.sandbox import run_tests, run_tests_many
from tests.tasks.conftest import check_clean

IS_ROOT = os.geteuid() == 0


def still_fine() -> None:
    """The caller is alive and the sandbox still runs an ordinary program."""
    again = run_tests("def f():\n    return 1\n", ["assert f() == 1"], timeout_s=10)
    assert again.passed, again.stderr
    check_clean(again)


def test_killing_its_parent_its_group_and_every_visible_process(sandbox_mode):
    decoy = subprocess.Popen(["sleep", "120"], start_new_session=True)
    me, my_group = os.getpid(), os.getpgid(0)
    # every pid in /proc too, where that is safe to try on a shared machine (a pid namespace, or
    # a uid of its own); as an ordinary user without bwrap only the named targets are tried
    everything = sandbox_mode == "bwrap" or IS_ROOT
    program = (
        "import os, signal\n"
        "HITS = []\n"
        "def hit(kind, fn, *args):\n"
        "    try:\n"
        "        fn(*args)\n"
        "        HITS.append(kind)\n"
        "    except Exception:\n"
        "        pass\n"
        f"for pid in ({me}, {decoy.pid}):\n"
        "    hit(('pid', pid), os.kill, pid, signal.SIGKILL)\n"
        f"for group in ({my_group}, {decoy.pid}):\n"
        "    hit(('group', group), os.killpg, group, signal.SIGKILL)\n"
        f"if {everything}:\n"
        "    try:\n"
        "        pids = [int(e) for e in os.listdir('/proc') if e.isdigit()]\n"
        "    except OSError:\n"
        "        pids = range(2, 1 << 15)\n"
        "    for pid in pids:\n"
        "        if pid not in (os.getpid(), os.getppid()):\n"
        "            hit(('visible', pid), os.kill, pid, signal.SIGKILL)\n"
        "hit('parent', os.kill, os.getppid(), signal.SIGKILL)\n"
        "hit('session', os.killpg, os.getsid(0), signal.SIGKILL)\n"
        "hit('own-group', os.killpg, os.getpgid(0), signal.SIGKILL)\n"
    )
    try:
        t0 = time.monotonic()
        res = run_tests(program, ["assert HITS == []"], timeout_s=10)
        assert time.monotonic() - t0 < 20
        assert decoy.poll() is None, "a process outside the sandbox was killed"
        assert os.getpgid(0) == my_group
        if sandbox_mode == "fallback":  # the guard refuses every signal to another process
            assert res.passed, res.stderr
        check_clean(res)
        still_fine()
    finally:
        decoy.kill()
        decoy.wait()


def test_program_parent_is_a_supervisor_in_its_own_session(sandbox_mode):
    program = "import os\nprint(os.getppid(), os.getsid(0), os.getpgid(0), os.getuid())\n"
    res = run_tests(program, ["assert True"], timeout_s=10)
    assert res.passed, res.stderr
    ppid, sid, pgid, uid = (int(x) for x in res.stdout.split())
    assert ppid != os.getpid() and sid != os.getsid(0) and pgid != os.getpgid(0)
    if sandbox_mode == "bwrap":
        assert ppid == 1  # bwrap's init in the program's own pid namespace
    else:
        assert "supervisor" in res.isolation
    if IS_ROOT:  # never root: a uid of its own, with or without bwrap
        assert uid == res.uid and uid >= sandbox.SANDBOX_UID_BASE
    check_clean(res)


def _reachable_by_others(path: str) -> bool:
    parts = Path(path).resolve().parents
    return all(os.stat(p).st_mode & 0o001 for p in parts) and bool(os.stat(path).st_mode & 0o005)


def test_never_root_and_the_interpreter_is_named(sandbox_mode):
    res = run_tests("import os, sys\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), sys.executable)\n",
                    ["assert True"], timeout_s=10)
    assert res.passed, res.stderr
    python = [s for s in res.isolation if s.startswith("python=")]
    assert len(python) == 1
    used = python[0].split("=", 1)[1]
    assert res.stdout.split()[-1] == used
    if IS_ROOT:
        uid, euid, gid = (int(x) for x in res.stdout.split()[:3])
        assert uid == euid == gid == res.uid != 0 and "[]" in res.stdout
        assert "unprivileged-uid" in res.isolation
        if sandbox_mode == "fallback" and not _reachable_by_others(sandbox._python()):
            # e.g. a pyenv under /root: a system Python of the same major version is used instead
            assert used != sandbox._python() and _reachable_by_others(used)
    check_clean(res)


def test_reading_root_only_files(sandbox_mode, tmp_path):
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    paths = [str(secret), "/etc/shadow", "/root/.bash_history", str(Path.home() / ".ssh" / "id_rsa")]
    program = (
        "LEAKS = {}\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        with open(path) as fh:\n"
        "            LEAKS[path] = fh.read()\n"
        "    except Exception as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "print(LEAKS)\n"
    )
    res = run_tests(program, ["assert LEAKS == {}"], timeout_s=10)
    assert res.passed, res.stdout + res.stderr
    assert res.duration_s < 15
    assert token not in res.stdout + res.stderr
    check_clean(res)


def test_writing_into_the_home_directory(sandbox_mode, tmp_path):
    token = secrets.token_hex(8)
    targets = [Path.home() / f"salt-sbx-escape-{token}.txt", tmp_path / f"escape-{token}.txt",
               Path.cwd() / f"salt-sbx-escape-{token}.txt"]
    program = (
        "import os\n"
        "WROTE = []\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    for how in ('open', 'mkdir'):\n"
        "        try:\n"
        "            if how == 'open':\n"
        "                with open(path, 'w') as fh:\n"
        "                    fh.write('pwned')\n"
        "            else:\n"
        "                os.mkdir(path + '.d')\n"
        "            WROTE.append((how, path))\n"
        "        except Exception:\n"
        "            pass\n"
        "with open('inside.txt', 'w') as fh:\n"
        "    fh.write('ok')\n"
    )
    try:
        res = run_tests(program, ["assert WROTE == []", "assert open('inside.txt').read() == 'ok'"], timeout_s=10)
        assert res.passed, res.stderr
        assert res.duration_s < 15
        for target in targets:
            assert not target.exists() and not Path(str(target) + ".d").exists()
        check_clean(res)
    finally:
        for target in targets:
            target.unlink(missing_ok=True)
            if Path(str(target) + ".d").is_dir():
                Path(str(target) + ".d").rmdir()


def test_network_connection_to_a_local_listener(sandbox_mode):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        "CONNECTED = False\n"
        "try:\n"
        f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    s.sendall(b'leak')\n"
        "    CONNECTED = True\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    try:
        res = run_tests(program, ["assert not CONNECTED"], timeout_s=10)
        try:
            conn, _ = server.accept()
            conn.close()
            accepted = True
        except socket.timeout:
            accepted = False
    finally:
        server.close()
    assert not accepted
    assert res.passed, res.stdout + res.stderr
    assert res.duration_s < 15
    check_clean(res)
    still_fine()


def test_fork_bomb(sandbox_mode):
    program = (
        "import os, time\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
        "time.sleep(1000)\n"
    )
    t0 = time.monotonic()
    res = run_tests(program, ["assert True"], timeout_s=2.0)
    assert not res.passed
    assert time.monotonic() - t0 < 15.0
    check_clean(res)
    still_fine()


def test_detached_children_do_not_survive(sandbox_mode):
    # a child that leaves the session (setsid) and outlives the program
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1000)\n"
        "    os._exit(0)\n"
        "def f():\n    return 1\n"
    )
    res = run_tests(program, ["assert f() == 1"], timeout_s=5)
    if sandbox_mode == "bwrap":
        assert res.passed, res.stderr
    else:  # the guard refuses to create processes
        assert res.status == "error" and "os.fork is not allowed" in res.stderr
    check_clean(res)


@pytest.mark.parametrize(
    "program",
    ["x = bytearray(20 * 1024 ** 3)\n",
     "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))\n"],
    ids=["one-block", "gradual"],
)
def test_memory_bomb(sandbox_mode, program):
    t0 = time.monotonic()
    res = run_tests(program, ["assert True"], timeout_s=10, memory_mb=256)
    assert not res.passed
    assert res.status in ("error", "killed")
    assert time.monotonic() - t0 < 15.0
    check_clean(res)


def test_guard_refusals_are_errors_not_crashes(sandbox_mode):
    """Process creation and friends end as an ordinary failed program in both modes."""
    cases = {
        "subprocess": "import subprocess\nsubprocess.run(['/bin/true'])\n",
        "system": "import os\nos.system('true')\n",
        "multiprocessing": ("import multiprocessing as mp\n"
                            "p = mp.get_context('fork').Process(target=print)\np.start()\np.join()\n"),
        "pidfd": "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n",
        "ctypes": "import ctypes\nctypes.CDLL(None).kill(0, 9)\n",
    }
    jobs = [{"program": code, "tests": ["assert True"], "timeout_s": 10} for code in cases.values()]
    for name, res in zip(cases, run_tests_many(jobs, max_workers=2)):
        if sandbox_mode == "fallback":
            assert res.status == "error" and "PermissionError" in res.stderr, (name, res.status, res.stderr)
        check_clean(res)
    still_fine()


def _humaneval():
    with gzip.open(humaneval_data_path(), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(sandbox_mode):
    problems = _humaneval()
    assert len(problems) == 164

    def job(p, body):
        return {"program": p["prompt"] + body, "tests": [p["test"] + f"\ncheck({p['entry_point']})\n"],
                "entry_point": p["entry_point"], "timeout_s": 20}

    good = run_tests_many([job(p, p["canonical_solution"]) for p in problems], max_workers=4)
    failures = [(p["task_id"], r.status, r.stderr[-300:]) for p, r in zip(problems, good) if not r.passed]
    assert failures == []
    assert all(("bwrap" in r.isolation) == (sandbox_mode == "bwrap") for r in good)
    wrong = run_tests_many([job(p, "    return None\n") for p in problems], max_workers=4)
    passed_wrong = [p["task_id"] for p, r in zip(problems, wrong) if r.passed]
    assert passed_wrong == []


def test_mbpp_reference_solutions_pass(sandbox_mode, tmp_path):
    from salt.tasks.datasets import prepare, read_local_file
    from salt.utils import read_jsonl

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "mbpp_sanitized_sample.jsonl"
    prepare("mbpp", tmp_path, source=str(fix))
    rows = read_jsonl(tmp_path / "data.jsonl")
    for row, src in zip(rows, read_local_file(fix)):
        res = run_tests(src["code"], row["tests"], setup=row["setup"], entry_point=row.get("entry_point"))
        assert res.passed, (row["id"], res.stderr)
        broken = run_tests(src["code"] + "\n" + f"def {row['entry_point']}(*a):\n    return None\n", row["tests"],
                           setup=row["setup"], entry_point=row.get("entry_point"))
        assert not broken.passed


def test_caller_signals_and_dies_are_handled(sandbox_mode):
    """Killing the supervisor from outside (as an OOM killer would) leaves nothing behind.

    Only this process's own supervisor (a child of this process) is a target: another pytest
    worker may be running sandboxed programs at the same time, and its supervisors are not ours.
    """
    import threading

    found = {}
    me = os.getpid()

    def parent_of(pid):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state letter

    def kill_supervisor():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not found:
            for pid in sandbox_supervisor.proc_pids():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    ours = parent_of(pid) == me
                except (OSError, IndexError, ValueError):
                    continue
                if ours and sandbox.SUPERVISOR.encode() in argv and any(b"salt-sbx-" in a for a in argv):
                    time.sleep(0.3)
                    os.kill(pid, signal.SIGKILL)
                    found["pid"] = pid
                    return
            time.sleep(0.02)

    t = threading.Thread(target=kill_supervisor)
    t.start()
    res = run_tests("import time\ntime.sleep(30)\n", ["assert True"], timeout_s=8)
    t.join()
    assert found, "the supervisor was not found"
    assert not res.passed and res.status == "killed"
    assert res.duration_s < 6
    check_clean(res)


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the sandbox is Linux only")


@pytest.mark.skipif(not IS_ROOT, reason="the uid boundary exists when the caller is root")
def test_as_root_the_uid_alone_stops_signals_reads_writes_and_bounds_a_fork_bomb(sandbox_modes, monkeypatch,
                                                                                 tmp_path):
    """The fallback with the guard switched off: what remains is the run's own uid (no root)."""
    from tests.tasks.conftest import _use_mode

    _use_mode("fallback", sandbox_modes, monkeypatch)
    monkeypatch.setattr(sandbox, "_FALLBACK_GUARD", False)
    decoy = subprocess.Popen(["sleep", "120"], start_new_session=True)
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    home_target = Path.home() / f"salt-sbx-escape-{token}.txt"
    program = (
        "import errno, os, signal\n"
        "DENIED = []\n"
        "def tryit(kind, fn, *args):\n"
        "    try:\n"
        "        fn(*args)\n"
        "    except PermissionError:\n"
        "        DENIED.append(kind)\n"
        f"tryit('kill-caller', os.kill, {os.getpid()}, signal.SIGKILL)\n"
        f"tryit('kill-decoy', os.kill, {decoy.pid}, signal.SIGKILL)\n"
        "tryit('kill-supervisor', os.kill, os.getppid(), signal.SIGKILL)\n"
        f"tryit('read', lambda: open({str(secret)!r}).read())\n"
        f"tryit('write-home', lambda: open({str(home_target)!r}, 'w').write('x'))\n"
    )
    try:
        res = run_tests(program, ["assert sorted(DENIED) == ['kill-caller', 'kill-decoy', 'kill-supervisor', "
                                  "'read', 'write-home']"], timeout_s=10)
        assert res.passed, res.stdout + res.stderr
        assert "audit-guard" not in res.isolation and "unprivileged-uid" in res.isolation
        assert decoy.poll() is None and not home_target.exists() and token not in res.stdout + res.stderr
        check_clean(res)
        bomb = ("import os, time\n"
                "for _ in range(100000):\n"
                "    try:\n"
                "        if os.fork() == 0:\n"
                "            os.setsid()\n"
                "    except OSError:\n"
                "        time.sleep(0.001)\n")
        t0 = time.monotonic()
        res = run_tests(bomb, ["assert True"], timeout_s=2.0)
        assert time.monotonic() - t0 < 15 and not res.passed
        check_clean(res)  # every process of the run's uid is gone (RLIMIT_NPROC held it at 64)
    finally:
        decoy.kill()
        decoy.wait()
        home_target.unlink(missing_ok=True)
