"""The caller's side of one sandbox run, after the supervisor started: the I/O pump (stdout,
stderr and the harness's channel, under the run's deadline and output cap), the classification
of how the run ended, and stopping the supervisor. Used by :func:`salt.tasks.sandbox.run_tests`."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable

TAIL_BYTES = 4096
"""How much of the end of stdout / stderr is kept in the result."""
CHANNEL_BYTES = 4096
"""The most of the harness's channel that is kept (its few nonce lines fit many times)."""
DRAIN_S = 0.2
"""After the supervisor exits, how long buffered output is still read."""


@dataclass
class Pumped:
    """What the pump read: the tails of stdout / stderr, the harness's channel, and ``status``
    when the caller cut the run short (``timeout``, ``output_limit``), else None."""

    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    channel: bytearray = field(default_factory=bytearray)
    status: str | None = None


def pump(proc: subprocess.Popen, channel_fd: int, deadline: float, max_output_bytes: int) -> Pumped:
    """Read stdout, stderr and the channel until the supervisor exits (plus a short drain), the
    deadline passes or the output cap is exceeded; keeps only the tails."""
    got = Pumped()
    total = 0
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): got.out, proc.stderr.fileno(): got.err, channel_fd: got.channel}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    open_fds = set(streams)
    exited_at = None
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                got.status = "timeout"
                return got
            if proc.poll() is not None:
                exited_at = exited_at or now
                # drain what is buffered, then stop: survivors holding the pipes are killed later
                if not open_fds or now - exited_at > DRAIN_S:
                    return got
            for key, _ in sel.select(timeout=min(deadline - now, 0.05 if exited_at else 0.5)):
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
                if key.fd == channel_fd:
                    if len(buf) < CHANNEL_BYTES:
                        buf += chunk
                    continue
                total += len(chunk)
                buf += chunk
                if len(buf) > 2 * TAIL_BYTES:
                    del buf[: len(buf) - TAIL_BYTES]
            if total > max_output_bytes:
                got.status = "output_limit"
                return got
            if not open_fds and proc.poll() is None:
                # every pipe closed but the supervisor lives on (the program closed its fds)
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    got.status = "timeout"
                    return got
    finally:
        sel.close()


def classify(channel: bytes, nonce: str, rc: int | None) -> str:
    """The status of a run that ended by itself, from the harness's nonce lines and the
    supervisor's exit code (the harness's, or 128 + a signal number)."""
    lines = channel.decode("ascii", errors="replace").split("\n")
    if f"{nonce} passed" in lines and rc == 0:
        return "passed"
    if rc is not None and (rc < 0 or rc >= 128):
        return "killed"  # a signal (the supervisor and bwrap report 128 + its number)
    if f"{nonce} ready" not in lines:
        return "sandbox_error"  # the harness failed before the program ran
    if f"{nonce} loaded" not in lines:
        return "exited_early" if rc == 0 else "error"
    return "exited_early" if rc == 0 else "failed"


def stop(proc: subprocess.Popen) -> None:
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


def close(fds: Iterable[int], proc: subprocess.Popen | None) -> None:
    for fd in fds:
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


def tail(buf: bytearray) -> str:
    """The last :data:`TAIL_BYTES` of a stream, as text."""
    return bytes(buf[-TAIL_BYTES:]).decode("utf-8", errors="replace")
