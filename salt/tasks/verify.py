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
import logging
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from typing import Any, Sequence

log = logging.getLogger(__name__)

MAX_PRED_CHARS = 4000
"""Without a ``\\boxed{}``, only the last this-many characters go to math-verify's extraction."""
MAX_ANSWER_CHARS = 400
"""A boxed answer longer than this is not a final answer (returns False without parsing)."""
MAX_GOLD_CHARS = 2000
MAX_BRACE_DEPTH = 50
"""Deeper nesting inside ``\\boxed{}`` is rejected (returns False without parsing)."""

_BOX_MARKERS = ("\\boxed", "\\fbox")


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
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``), else None."""
    if not isinstance(text, str):
        return None
    pos = len(text)
    while True:
        starts = [text.rfind(m, 0, pos) for m in _BOX_MARKERS]
        start = max(starts)
        if start < 0:
            return None
        marker = _BOX_MARKERS[starts.index(start)]
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
    if "\\boxed" in pred[-MAX_PRED_CHARS:] or "\\fbox" in pred[-MAX_PRED_CHARS:]:
        return None, None, None  # a box that never closes (or is nested absurdly deep)
    return _wrap_gold(gold), pred[-MAX_PRED_CHARS:], None


def _compare_in_worker(gold_text: str, pred_text: str) -> tuple[bool, str | None]:
    """Runs inside a worker: math-verify parse + verify with their own timeouts disabled."""
    import warnings

    from math_verify import parse, verify

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gold_parsed = parse(gold_text, parsing_timeout=None)
        pred_parsed = parse(pred_text, parsing_timeout=None)
        extracted = str(pred_parsed[-1]) if pred_parsed else None
        if not gold_parsed or not pred_parsed:
            return False, extracted
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), extracted


def _worker_main(conn: Any) -> None:
    """Worker loop: receive ``(gold_text, pred_text)``, send ``(ok, extracted)``; exit on None."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:  # warm up the imports once, so the first deadline is not spent importing sympy
        _compare_in_worker("\\boxed{1}", "\\boxed{1}")
    except Exception:  # noqa: BLE001 - a broken install shows up as False answers + the parent log
        pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            result = _compare_in_worker(*msg)
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not equal"
            result = (False, None, f"{type(exc).__name__}: {str(exc)[:200]}")
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


@dataclass
class MathResult:
    equal: bool
    extracted: str | None
    status: str  # "ok" | "rejected" | "timeout" | "error"
    duration_s: float


class _Worker:
    def __init__(self, ctx: Any) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child_conn,), daemon=True)
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn

    def kill(self) -> None:
        try:
            self.proc.kill()
        except (OSError, AttributeError, ValueError):
            pass
        self.proc.join(timeout=5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=1)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


class MathVerifierPool:
    """A fixed number of verifier processes with a per-comparison wall-clock deadline.

    ``compare_many(pairs, timeout_s)`` keeps every worker busy; a worker that misses its deadline
    is killed and replaced and the pair gets ``equal=False, status="timeout"``. Thread-safe
    (calls are serialised by a lock). Workers are started lazily with the ``forkserver`` start
    method (``spawn`` where unavailable), so a parent full of torch threads is never forked.
    """

    def __init__(self, workers: int = 2, start_method: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"MathVerifierPool: workers must be >= 1, got {workers}")
        self.n_workers = int(workers)
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.n_killed = 0

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(_Worker(self._ctx))

    def compare_many(self, pairs: Sequence[tuple[str, str]], timeout_s: float = 5.0) -> list[MathResult]:
        """``pairs[i] = (gold, pred)`` -> ``results[i]``; every result arrives within ~timeout_s
        of the start of its comparison (the batch takes at most ~len(pairs)/workers * timeout_s)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        results: list[MathResult | None] = [None] * len(pairs)
        jobs: list[tuple[int, str, str]] = []
        for i, (gold, pred) in enumerate(pairs):
            gold_text, pred_text, extracted = _prepare(gold, pred)
            if gold_text is None:
                results[i] = MathResult(False, extracted, "rejected", 0.0)
            else:
                jobs.append((i, gold_text, pred_text, extracted))  # type: ignore[arg-type]
        if not jobs:
            return results  # type: ignore[return-value]
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifierPool is closed")
            self._run(jobs, results, timeout_s)
        return results  # type: ignore[return-value]

    def _run(self, jobs: list, results: list, timeout_s: float) -> None:
        self._ensure_workers()
        pending = list(reversed(jobs))
        busy: dict[int, tuple[int, str | None, float]] = {}  # worker slot -> (job idx, extracted, start)
        # the first comparison of a fresh worker also pays for its imports: grant it extra time
        startup_grace = 30.0
        fresh = {w: True for w in range(len(self._workers))}
        while pending or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and pending:
                    idx, gold_text, pred_text, extracted = pending.pop()
                    worker = self._workers[slot]
                    try:
                        worker.conn.send((gold_text, pred_text))
                    except (OSError, ValueError):
                        self._replace(slot)
                        fresh[slot] = True
                        pending.append((idx, gold_text, pred_text, extracted))
                        continue
                    busy[slot] = (idx, extracted, time.monotonic())
            now = time.monotonic()
            deadlines = {
                slot: start + timeout_s + (startup_grace if fresh.get(slot) else 0.0)
                for slot, (_, _, start) in busy.items()
            }
            wait_s = max(0.0, min(deadlines.values()) - now)
            conns = {self._workers[slot].conn: slot for slot in busy}
            ready = mp_wait(list(conns), timeout=wait_s)
            for conn in ready:
                slot = conns[conn]
                idx, extracted, start = busy.pop(slot)
                fresh[slot] = False
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory)
                    self._replace(slot)
                    fresh[slot] = True
                    results[idx] = MathResult(False, extracted, "error", time.monotonic() - start)
                    continue
                status = "ok" if len(msg) == 2 else "error"
                results[idx] = MathResult(bool(msg[0]), extracted if extracted is not None else msg[1], status,
                                          time.monotonic() - start)
            now = time.monotonic()
            for slot in list(busy):
                if now >= deadlines[slot] and self._workers[slot].conn not in ready:
                    idx, extracted, start = busy.pop(slot)
                    self._replace(slot)
                    fresh[slot] = True
                    self.n_killed += 1
                    results[idx] = MathResult(False, extracted, "timeout", now - start)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._ctx)

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for w in self._workers:
                w.close()
            self._workers = []

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
