"""Math answer verification with math-verify, bounded in time by worker processes we control.

math-verify's own timeouts use ``signal.alarm`` and fail outside the main thread, and sympy can
spend unbounded time (and memory) on adversarial answers such as ``9^{9^{9^{9}}}``. So parsing
and comparison run with math-verify's timeouts *disabled* inside worker processes, and the
parent enforces a wall-clock deadline per comparison: a worker that misses its deadline is
killed (SIGKILL) and replaced, and the comparison counts as not equal.

Pipeline for one ``(gold, pred)`` pair:

1. cheap, in the parent: cap absurd inputs (:data:`MAX_PRED_CHARS`, :data:`MAX_ANSWER_CHARS`)
   and extract the content of the *last* ``\\boxed{...}`` / ``\\fbox{...}`` of the prediction
   (:func:`extract_math_answer`, plain string scanning, linear time, bounded brace depth);
2. in a worker: ``math_verify.parse`` of the gold (wrapped in ``\\boxed{}`` unless it already
   carries LaTeX delimiters) and of the prediction (the boxed answer when there is one,
   otherwise the tail of the completion through math-verify's own extraction);
3. in a worker: ``math_verify.verify(gold, pred)``.

Equivalent forms compare equal (``0.5`` and ``\\frac{1}{2}``, AIME's ``033`` and ``33``,
``2^{3}`` and ``8``, sets and intervals as math-verify supports them).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

MAX_PRED_CHARS = 4000
"""Without a ``\\boxed{}``, only the last this-many characters go to math-verify's extraction."""
MAX_ANSWER_CHARS = 400
"""A boxed answer longer than this is not a final answer (returns False without parsing)."""
MAX_GOLD_CHARS = 2000
MAX_BRACE_DEPTH = 50
"""Deeper nesting inside ``\\boxed{}`` is rejected (returns False without parsing)."""

WORKER_MEMORY_MB = 2048
"""Address-space limit of each verifier process."""

_BOX_MARKERS = ("\\boxed", "\\fbox")
MAX_BOX_ATTEMPTS = 20


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (None if unbalanced or too deep)."""
    depth = 0
    end = min(len(text), open_idx + MAX_ANSWER_CHARS * 4)
    i = open_idx
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip escaped characters such as \{ and \}
            continue
        if ch == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return None
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``), else None.

    A malformed box (unbalanced, too deep) is skipped for the one before it, at most
    :data:`MAX_BOX_ATTEMPTS` times, so the scan stays linear on adversarial text.
    """
    if not isinstance(text, str):
        return None
    pos = len(text)
    found = {m: True for m in _BOX_MARKERS}
    for _ in range(MAX_BOX_ATTEMPTS):
        starts = {}
        for m in _BOX_MARKERS:
            idx = text.rfind(m, 0, pos) if found[m] else -1
            found[m] = idx >= 0  # absent before pos -> absent before any smaller pos
            starts[m] = idx
        marker = max(starts, key=starts.get)
        start = starts[marker]
        if start < 0:
            return None
        j = start + len(marker)
        if j < len(text) and text[j] == "{":
            close = _matching_brace(text, j)
            if close is not None:
                return text[j + 1 : close].strip()
        elif j < len(text) and text[j] == " ":  # "\boxed 5" (no braces, up to a separator)
            rest = text[j + 1 : j + 1 + MAX_ANSWER_CHARS]
            token = rest.split("$")[0].split("\n")[0].strip()
            if token:
                return token
        pos = start  # malformed box: try the previous one
    return None


def extract_math_answer(text: str | None) -> str | None:
    """The final answer string of a completion: the content of its last ``\\boxed{}``, else None.

    Pure string scanning (no sympy), linear in the length of the text, safe on any input.
    """
    if not text:
        return None
    ans = extract_boxed(text)
    if ans is None or not ans:
        return None
    return ans


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str | None) -> str | None:
    """The last number written in ``text`` (thousands commas removed), as written: ``-3``, ``2.50``;
    None when there is none. Used by the SALT authors' fallback (``reward.math_fallback``)."""
    if not text:
        return None
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def _wrap_gold(gold: str) -> str:
    gold = gold.strip()
    if "\\boxed" in gold or gold.startswith("$") or gold.startswith("\\("):
        return gold
    return "\\boxed{" + gold + "}"


def _prepare(gold: str, pred: str) -> tuple[str | None, str | None, str | None]:
    """Cheap pre-processing in the parent: (gold_text, pred_text, extracted) or a rejection.

    Returns ``(None, None, extracted)`` when the pair is rejected without parsing.
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"math_equal: the gold answer must be a non-empty string, got {gold!r}")
    if len(gold) > MAX_GOLD_CHARS:
        raise ValueError(f"math_equal: gold answer of {len(gold)} chars is longer than {MAX_GOLD_CHARS}")
    if not isinstance(pred, str) or not pred.strip():
        return None, None, None
    boxed = extract_math_answer(pred)
    if boxed is not None:
        if len(boxed) > MAX_ANSWER_CHARS:
            return None, None, boxed[:80]
        return _wrap_gold(gold), "\\boxed{" + boxed + "}", boxed
    if "\\boxed" in pred or "\\fbox" in pred:
        return None, None, None  # a box that never closes, is absurdly long or nested too deep
    if _looks_like_bare_answer(pred):
        return _wrap_gold(gold), "\\boxed{" + pred.strip() + "}", pred.strip()
    return _wrap_gold(gold), pred[-MAX_PRED_CHARS:], None


def _looks_like_bare_answer(pred: str) -> bool:
    """A short single-line string with no English words: an answer, not a completion
    (``2^{3}``, ``\\frac{1}{2}``, ``(0, 1]``), parsed as if it were boxed."""
    text = pred.strip()
    if not text or len(text) > MAX_ANSWER_CHARS or "\n" in text or "$" in text:
        return False
    return re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", text)) is None


def _compare_in_worker(gold_text: str, pred_text: str) -> tuple[bool, str | None]:
    """Runs inside a worker: math-verify parse + verify with their own timeouts disabled."""
    import warnings

    from math_verify import parse, verify

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gold_parsed = parse(gold_text, parsing_timeout=None)
        pred_parsed = parse(pred_text, parsing_timeout=None)
        extracted = str(pred_parsed[-1])[:MAX_ANSWER_CHARS] if pred_parsed else None
        if not gold_parsed or not pred_parsed:
            return False, extracted
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), extracted


def _worker_main() -> None:
    """Worker loop (``python -m salt.tasks.verify --worker``): one JSON request per stdin line
    ``[gold_text, pred_text]``, one JSON reply per stdout line ``[ok, extracted, error]``."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:  # a runaway sympy expansion dies of MemoryError instead of swapping the machine
        import resource

        limit = WORKER_MEMORY_MB * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing printed by a library may corrupt the reply channel
    try:  # warm up the imports once, so the first deadline is not spent importing sympy
        _compare_in_worker("\\boxed{1}", "\\boxed{1}")
    except Exception:  # noqa: BLE001 - a broken install shows up as False answers + "error" status
        pass
    for line in sys.stdin:
        try:
            gold_text, pred_text = json.loads(line)
            ok, extracted = _compare_in_worker(gold_text, pred_text)
            reply = [ok, extracted, None]
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not equal"
            reply = [False, None, f"{type(exc).__name__}: {str(exc)[:200]}"]
        out.write(json.dumps(reply) + "\n")
        out.flush()


@dataclass
class MathResult:
    equal: bool
    extracted: str | None
    status: str  # "ok" | "rejected" | "timeout" | "error"
    duration_s: float


class _Worker:
    """One verifier subprocess (plain ``subprocess``: no fork of the caller, no ``__main__``
    re-import), talking JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONHASHSEED", "0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "salt.tasks.verify", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def send(self, gold_text: str, pred_text: str) -> None:
        self.proc.stdin.write((json.dumps([gold_text, pred_text]) + "\n").encode())
        self.proc.stdin.flush()

    def read_reply(self) -> list | None:
        """A complete reply if one is buffered; raises EOFError when the worker died."""
        while b"\n" not in self.buf:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return None
            if not chunk:
                raise EOFError("math verifier worker exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # EOF ends the worker loop
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.kill()
        else:
            self.proc.stdout.close()


class MathVerifierPool:
    """A fixed number of verifier processes with a per-comparison wall-clock deadline.

    ``compare_many(pairs, timeout_s)`` keeps every worker busy; a worker that misses its deadline
    is killed (SIGKILL) and replaced, and the pair gets ``equal=False, status="timeout"``.
    Thread-safe (calls are serialised by a lock). Workers are plain subprocesses started lazily,
    so the caller (full of torch threads) is never forked.
    """

    startup_grace_s = 20.0
    """Extra time granted to the first comparison of a fresh worker (interpreter start + imports)."""

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"MathVerifierPool: workers must be >= 1, got {workers}")
        self.n_workers = int(workers)
        self._workers: list[_Worker] = []
        self._fresh: list[bool] = []
        self._lock = threading.Lock()
        self._closed = False
        self.n_killed = 0

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker())
            self._fresh.append(True)

    def compare_many(self, pairs: Sequence[tuple[str, str]], timeout_s: float = 5.0) -> list[MathResult]:
        """``pairs[i] = (gold, pred)`` -> ``results[i]``. Each comparison gets ``timeout_s`` seconds
        of wall clock (plus a one-off start-up grace for a fresh worker); the batch takes at most
        about ``ceil(len(pairs) / workers) * timeout_s``."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        results: list[MathResult | None] = [None] * len(pairs)
        jobs: list[tuple[int, str, str, str | None]] = []
        for i, (gold, pred) in enumerate(pairs):
            gold_text, pred_text, extracted = _prepare(gold, pred)
            if gold_text is None or pred_text is None:
                results[i] = MathResult(False, extracted, "rejected", 0.0)
            else:
                jobs.append((i, gold_text, pred_text, extracted))
        if jobs:
            with self._lock:
                if self._closed:
                    raise RuntimeError("MathVerifierPool is closed")
                self._run(jobs, results, timeout_s)
        return results  # type: ignore[return-value]

    def _run(self, jobs: list, results: list, timeout_s: float) -> None:
        self._ensure_workers()
        pending = list(reversed(jobs))
        busy: dict[int, tuple[int, str | None, float, float]] = {}  # slot -> (job, extracted, start, deadline)
        sel = selectors.DefaultSelector()
        try:
            while pending or busy:
                for slot in range(len(self._workers)):
                    if slot in busy or not pending:
                        continue
                    idx, gold_text, pred_text, extracted = pending.pop()
                    try:
                        self._workers[slot].send(gold_text, pred_text)
                    except OSError:  # the idle worker died: replace it and retry the job
                        self._replace(slot)
                        pending.append((idx, gold_text, pred_text, extracted))
                        continue
                    start = time.monotonic()
                    grace = self.startup_grace_s if self._fresh[slot] else 0.0
                    busy[slot] = (idx, extracted, start, start + timeout_s + grace)
                    sel.register(self._workers[slot].fd, selectors.EVENT_READ, slot)
                wait_s = max(0.0, min(d for (_, _, _, d) in busy.values()) - time.monotonic())
                for key, _ in sel.select(timeout=wait_s):
                    slot = key.data
                    idx, extracted, start, _ = busy[slot]
                    try:
                        reply = self._workers[slot].read_reply()
                    except (EOFError, OSError, ValueError):  # died (e.g. out of memory) or garbage
                        sel.unregister(key.fd)
                        busy.pop(slot)
                        self._replace(slot)
                        results[idx] = MathResult(False, extracted, "error", time.monotonic() - start)
                        continue
                    if reply is None:
                        continue  # partial line; wait for the rest
                    sel.unregister(key.fd)
                    busy.pop(slot)
                    self._fresh[slot] = False
                    ok, worker_extracted, error = reply
                    results[idx] = MathResult(
                        bool(ok),
                        extracted if extracted is not None else worker_extracted,
                        "ok" if error is None else "error",
                        time.monotonic() - start,
                    )
                now = time.monotonic()
                for slot, (idx, extracted, start, deadline) in list(busy.items()):
                    if now >= deadline:
                        sel.unregister(self._workers[slot].fd)
                        busy.pop(slot)
                        self._replace(slot)
                        self.n_killed += 1
                        results[idx] = MathResult(False, extracted, "timeout", now - start)
        finally:
            sel.close()

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker()
        self._fresh[slot] = True

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for w in self._workers:
                w.close()
            self._workers = []
            self._fresh = []

    def __enter__(self) -> "MathVerifierPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_POOL: MathVerifierPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool(workers: int | None = None) -> MathVerifierPool:
    """The module-level pool (created on first use with ``workers`` processes, default 2; resized
    when another ``workers`` is asked for; closed at exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and not _POOL._closed and workers in (None, _POOL.n_workers):
            return _POOL
        if _POOL is not None:
            _POOL.close()
        _POOL = MathVerifierPool(workers or 2)
        return _POOL


def shutdown_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(shutdown_pool)


def math_equal(gold: str, pred: str, timeout_s: float = 5.0) -> bool:
    """True when ``pred`` (a completion or an answer) states an answer equivalent to ``gold``.

    Runs in the module-level worker pool, so it is safe to call from any thread and returns
    False within about ``timeout_s`` seconds on adversarial input.
    """
    return get_pool().compare_many(
        [(gold, pred)], timeout_s=timeout_s
    )[0].equal


def math_equal_many(pairs: Sequence[tuple[str, str]], workers: int = 2, timeout_s: float = 5.0) -> list[MathResult]:
    """Batch form of :func:`math_equal` with the full :class:`MathResult` records."""
    return get_pool(workers).compare_many(pairs, timeout_s=timeout_s)


__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_PRED_CHARS",
    "MathResult",
    "MathVerifierPool",
    "extract_boxed",
    "extract_math_answer",
    "get_pool",
    "math_equal",
    "math_equal_many",
    "shutdown_pool",
]


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
