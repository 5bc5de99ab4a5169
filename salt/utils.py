"""Small shared helpers: seeding, dict merging, JSONL and atomic file writes."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


DEBUG_ENV = "SALT_DEBUG"  # SALT_DEBUG=1: bad input raises with its full traceback instead of one line


class InputError(ValueError):
    """Bad input (a config, a data file, a flag); the message names the file or key, the problem and the fix."""


def report_input_error(prog: str, exc: BaseException) -> int:
    """Print ``prog: message`` as one line on stderr and return the exit code 2; with ``SALT_DEBUG=1``
    in the environment re-raise ``exc`` instead (full traceback)."""
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        raise exc
    print(f"{prog}: {exc}", file=sys.stderr)
    return 2


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # numpy is a dependency; kept optional for tiny scripts
        pass
    import torch

    torch.manual_seed(seed)


def resolve_ref(ref: str) -> Any:
    """The object a ``"module:attr"`` reference names, imported now (ImportError / AttributeError
    propagate): the lazy entries of the command table, the config choices, the figure and gpu-check registries."""
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``override`` merged into ``base`` recursively (override wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects key.sub=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            _, column, what = yaml_problem(exc, column_offset=len(key) + 1)
            at = f" at column {column}" if column is not None else ""
            raise InputError(f"--set '{item}': the value is not valid YAML{at}: {what}; complete or quote "
                             "the value, e.g. --set 'train.dump_gram_steps=[1, 2]'") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def yaml_problem(exc: Exception, column_offset: int = 0) -> tuple[int | None, int | None, str]:
    """``(line, column, what)`` of a YAML parse error: 1-based position of the problem (None when
    PyYAML gives none; columns shifted by ``column_offset``) and a one-line description (with where
    the unclosed construct started)."""
    mark, ctx_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context:
        started = f" started at line {ctx_mark.line + 1}, column {ctx_mark.column + 1 + column_offset}" if ctx_mark else ""
        what += f" ({context}{started})"
    mark = mark or ctx_mark
    return (mark.line + 1, mark.column + 1 + column_offset, what) if mark is not None else (None, None, what)


def load_yaml_file(path: str | os.PathLike) -> Any:
    """The YAML document in ``path``; bytes that are not UTF-8 or malformed YAML raise one
    ``ValueError("FILE:LINE:COLUMN: ...")`` (a missing file raises ``FileNotFoundError``)."""
    import yaml

    text = decode_utf8(Path(path).read_bytes(), path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, column, what = yaml_problem(exc)
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        raise InputError(f"{where}: not valid YAML: {what}; fix the file there (close every bracket and quote, "
                         "quote values holding ': ' or ' #', indent with spaces)") from None


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux exposes it as the ``Umask:`` line of ``/proc/self/status`` (a pure read, safe with
    threads). Elsewhere ``os.umask`` must set a value to return the old one; that set-and-restore
    is process-global, so it is done once, at import (before the caller starts threads).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def _import_umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_IMPORT_UMASK = _import_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file (``mkstemp``: mode 0600) gets the mode a plain ``open(path, "w")`` would
    give, ``0o666 & ~umask``, before it replaces ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o666 & ~_read_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, with mode ``0o666 & ~umask`` (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    return (value for _, value in iter_jsonl_numbered(path))


def utf8_error(path: str | os.PathLike, data: bytes, exc: UnicodeDecodeError, first_line: int = 1) -> InputError:
    """``FILE:LINE:COLUMN: not valid UTF-8 ...`` for bytes ``data`` (starting at ``first_line``) of ``path``."""
    line = first_line + data.count(b"\n", 0, exc.start)
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    bad = data[exc.start:exc.end].hex(" ")
    return InputError(f"{path}:{line}:{column}: not valid UTF-8 (byte(s) {bad}); re-save the file as UTF-8 "
                      "(e.g. `iconv -f latin1 -t utf-8`) or remove that line")


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """``data`` decoded as UTF-8 (a leading BOM dropped), else :func:`utf8_error` naming file, line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith(b"\xef\xbb\xbf"):
            exc.start, exc.end = exc.start + 3, exc.end + 3
        raise utf8_error(path, data, exc) from None


def iter_jsonl_numbered(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSONL file; a line that is not UTF-8 or
    not JSON raises ``ValueError("FILE:LINE...: ...")``."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise utf8_error(path, raw, exc, lineno) from None
            if not line:
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc


def append_jsonl(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk (used for metrics.jsonl)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The commit checked out at ``repo`` (default: this package's checkout), or None outside git."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None
