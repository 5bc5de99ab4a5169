"""The code sandbox on ordinary and misbehaving programs, in bwrap mode and in the opted-in fallback:
each case ends in bounded time, nothing is left running, the temporary directory is gone.
Hostile programs in both modes: test_sandbox_adversarial.py; failing closed: test_sandbox_policy.py."""

from __future__ import annotations

import time

import pytest

from salt.tasks import sandbox
from salt.tasks.sandbox import run_tests, run_tests_many
from tests.tasks.conftest import check_clean


@pytest.fixture(autouse=True)
def _both_modes(sandbox_mode):
    """Every test here runs in bwrap mode and in the opted-in fallback."""
    return sandbox_mode


def test_passing_and_failing_programs():
    ok = run_tests("def f(x):\n    return x + 1\n", ["assert f(1) == 2", "assert f(-1) == 0"], timeout_s=10)
    assert ok.passed and ok.status == "passed", ok.stderr
    bad = run_tests("def f(x):\n    return x\n", ["assert f(1) == 1", "assert f(1) == 2"], timeout_s=10)
    assert not bad.passed and bad.status == "failed"
    assert "AssertionError" in bad.stderr
    syntax = run_tests("def f(x) return x", ["assert f(1) == 1"], timeout_s=10)
    assert syntax.status == "error" and "SyntaxError" in syntax.stderr
    missing = run_tests("def g():\n    return 1\n", ["assert True"], entry_point="f", timeout_s=10)
    assert missing.status == "error" and "'f'" in missing.stderr
    with_setup = run_tests("def r(x):\n    return math.sqrt(x)\n", ["assert r(4) == 2"], setup="import math")
    assert with_setup.passed
    for res in (ok, bad, syntax, missing, with_setup):
        check_clean(res)


@pytest.mark.parametrize(
    "program, test",
    [
        ("import sys\nsys.exit(0)\n", "assert False"),
        ("import os\nos._exit(0)\n", "assert False"),
        ("import os\ndef f():\n    os._exit(0)\n", "assert f() == 1"),
        ("import sys\ndef f():\n    sys.exit(0)\n", "assert f() == 1"),
        # a program that fakes every marker it could guess and then leaves quietly
        ("import os, sys\nprint('passed')\nsys.stderr.write('passed\\n')\n"
         "for fd in range(3, 64):\n    try:\n        os.write(fd, b'passed\\n')\n    except OSError:\n        pass\n"
         "os._exit(0)\n", "assert False"),
    ],
    ids=["sys.exit-top", "os._exit-top", "os._exit-in-test", "sys.exit-in-test", "fake-markers"],
)
def test_exit_before_tests_is_a_failure(program, test):
    res = run_tests(program, [test], timeout_s=10)
    assert not res.passed
    assert res.status in ("exited_early", "error", "failed")
    check_clean(res)


@pytest.mark.parametrize(
    "program",
    ["while True:\n    pass\n", "import time\ntime.sleep(1000)\n",
     "import threading, time\nthreading.Thread(target=time.sleep, args=(1000,)).start()\ntime.sleep(1000)\n"],
    ids=["busy-loop", "sleep", "thread-sleep"],
)
def test_timeouts_kill_in_bounded_time(program):
    t0 = time.monotonic()
    res = run_tests(program, ["assert True"], timeout_s=1.5)
    elapsed = time.monotonic() - t0
    assert res.status == "timeout" and not res.passed
    assert elapsed < 6.0
    check_clean(res)


def test_huge_output_is_capped():
    res = run_tests("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", ["assert True"], timeout_s=10)
    assert res.status == "output_limit" and not res.passed
    assert len(res.stdout) <= 2 * sandbox.TAIL_BYTES
    assert res.duration_s < 5.0
    check_clean(res)


def test_big_file_is_capped():
    res = run_tests("with open('big.bin', 'wb') as fh:\n    fh.write(b'0' * (64 * 1024 ** 2))\n",
                    ["assert True"], timeout_s=10)
    assert not res.passed  # RLIMIT_FSIZE: SIGXFSZ or an OSError
    check_clean(res)


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("SALT_TEST_SECRET", "hunter2-do-not-leak")
    program = "import os\nprint(dict(os.environ))\nSEEN = 'hunter2-do-not-leak' in repr(dict(os.environ))\n"
    res = run_tests(program, ["assert not SEEN", "import os\nassert 'PATH' not in os.environ"], timeout_s=10)
    assert res.passed, res.stderr
    assert "hunter2" not in res.stdout
    check_clean(res)


def test_run_tests_many_bounded_concurrency_and_order():
    jobs = [{"program": f"def f():\n    return {i}\n", "tests": [f"assert f() == {i}"], "timeout_s": 10}
            for i in range(6)]
    jobs[3]["tests"] = ["assert f() == -1"]
    results = run_tests_many(jobs, max_workers=3)
    assert [r.passed for r in results] == [True, True, True, False, True, True]
    # concurrency bound: 4 sleepers of 1 s with 2 workers take >= 2 s, with 4 workers < 2 s
    sleeper = {"program": "import time\ntime.sleep(1.0)\n", "tests": ["assert True"], "timeout_s": 10}
    t0 = time.monotonic()
    assert all(r.passed for r in run_tests_many([sleeper] * 4, max_workers=2))
    assert time.monotonic() - t0 >= 2.0
    with pytest.raises(ValueError, match="max_workers"):
        run_tests_many(jobs, max_workers=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tests"):
        run_tests("x = 1", [])
    with pytest.raises(ValueError, match="timeout_s"):
        run_tests("x = 1", ["assert True"], timeout_s=0)


