"""Sandbox fixtures: both isolation modes (bwrap, and the opted-in fallback) probed once, and a
check that a run left nothing behind (no process, no temporary directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def leftovers(res) -> list[int]:
    """PIDs that belong to this run: its marker in the command line (the temp dir) or in the
    environment, or (as root) its uid."""
    from salt.tasks import sandbox

    needle = f"salt-sbx-{res.run_id}".encode()
    pids = set(sandbox.processes_with_marker(res.run_id))
    if res.uid is not None:
        pids.update(sandbox.processes_of_uid(res.uid))
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if needle in fh.read():
                        pids.add(int(entry))
            except OSError:
                continue
    return sorted(pids)


def check_clean(res) -> None:
    assert res.run_id
    assert leftovers(res) == [], f"processes of run {res.run_id} still alive"
    assert not list(Path(tempfile.gettempdir()).glob(f"salt-sbx-{res.run_id}-*")), "temp dir not removed"


@pytest.fixture(scope="session")
def sandbox_modes():
    """``{"bwrap": caps or None, "fallback": caps}``: what each mode finds on this machine."""
    from salt.tasks import sandbox

    default = sandbox.capabilities(refresh=True)
    old = os.environ.get(sandbox.NO_BWRAP_ENV)
    os.environ[sandbox.NO_BWRAP_ENV] = "1"
    try:
        fallback = sandbox.capabilities(refresh=True)
    finally:
        if old is None:
            del os.environ[sandbox.NO_BWRAP_ENV]
        else:
            os.environ[sandbox.NO_BWRAP_ENV] = old
        sandbox._CAPS = default
    return {"bwrap": default if default["bwrap"] else None, "fallback": fallback}


def _use_mode(name, modes, monkeypatch):
    from salt.tasks import sandbox

    caps = modes[name]
    if caps is None:
        pytest.skip("bubblewrap does not work on this machine (CI installs it)")
    monkeypatch.setattr(sandbox, "_CAPS", caps)
    if name == "fallback":
        monkeypatch.setenv(sandbox.NO_BWRAP_ENV, "1")
        monkeypatch.setattr(sandbox, "_ALLOW_UNISOLATED", True)  # the explicit opt-in
    return caps


@pytest.fixture(params=["bwrap", "fallback"])
def sandbox_mode(request, sandbox_modes, monkeypatch):
    """Each test runs twice: in bwrap mode and in the opted-in fallback (SALT_SANDBOX_NO_BWRAP=1)."""
    _use_mode(request.param, sandbox_modes, monkeypatch)
    return request.param


@pytest.fixture(autouse=True)
def _opt_in_where_bubblewrap_is_missing(sandbox_modes, monkeypatch):
    """Tests that score code with the default sandbox (test_rewards, test_datasets) use the
    opted-in fallback on a machine without bubblewrap (CI has it: there they use bwrap). The
    policy tests remove this opt-in again."""
    from salt.tasks import sandbox

    if sandbox_modes["bwrap"] is None:
        monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
