"""Small shared helpers: seeding, dict merging, JSONL and atomic file writes."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


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
            raise ValueError(f"--set expects key.sub=value, got '{item}'")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return out


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
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc


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
