"""Local dataset sources: reading a ``.jsonl``/``.json``/``.parquet``/``.csv`` (optionally ``.gz``)
file in a benchmark's own hub schema, and telling a local path from a hub id.

:func:`source_problem` is what ``salt prepare-data`` would fail on for a ``--source``, checked
without reading the data: the workflow calls it while the DAG is planned (``datasets.*.source``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from salt.tasks.rows import DatasetError
from salt.utils import decode_utf8

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
USE_SUFFIXES = "use .jsonl, .json, .parquet or .csv (optionally .gz)"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def data_kind(path: Path) -> tuple[str, bool]:
    """``(suffix, gzipped)``: ``data.csv.gz`` -> ``(".csv", True)``."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    return (suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")), gz


def at(path: str | Path, base: str | Path | None = None) -> Path:
    """``path`` (``~`` expanded) as seen from the directory ``base`` (None: the working directory),
    without changing the process's working directory."""
    p = Path(path).expanduser()
    return p if base is None or p.is_absolute() else Path(base) / p


def is_local_path(source: str, base: str | Path | None = None) -> bool:
    """True when ``source`` can only mean a local path: it exists (relative to ``base``, default the
    working directory), starts with ``/ . ~``, has a data-file suffix, or is not of the hub id form
    ``name`` / ``owner/name``."""
    if at(source, base).exists() or source.startswith(("/", ".", "~")):
        return True
    return data_kind(Path(source))[0] in DATA_SUFFIXES or not HUB_ID.match(source)


def source_problem(source: str, base: str | Path | None = None) -> str | None:
    """Why ``salt prepare-data --source SOURCE`` run in ``base`` (default: here) cannot read a local
    source (None: fine, or a hub id)."""
    if not is_local_path(source, base):
        return None
    path = at(source, base)
    if not path.exists():
        return "does not exist"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return "is not readable (check its permissions)"
    if path.is_file() and data_kind(path)[0] not in DATA_SUFFIXES:
        return f"has an unsupported file type; {USE_SUFFIXES}"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def maybe_list(value: Any) -> Any:
    """CSV cells holding a list (``"['assert ...']"``) become lists."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        for parse in (json.loads, ast.literal_eval):
            try:
                out = parse(value)
            except (ValueError, SyntaxError, json.JSONDecodeError):
                continue
            if isinstance(out, list):
                return out
    return value


def _read_text(path: Path, gz: bool) -> str:
    with (gzip.open if gz else open)(path, "rb") as fh:
        data = fh.read()
    try:
        return decode_utf8(data, path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def read_local_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``/``.json``/``.parquet``/``.csv`` (optionally ``.gz``) file.

    Text that is not UTF-8, bad JSON and a row that is not an object raise :class:`DatasetError`
    naming ``FILE:LINE``."""
    kind, gz = data_kind(path)
    if kind in (".jsonl", ".ndjson"):
        rows = []
        for lineno, line in enumerate(_read_text(path, gz).splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if kind == ".json":
        try:
            data = json.loads(_read_text(path, gz))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):  # {"rows": [...]} / {"data": [...]} / {"train": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DatasetError(f"{path}: a .json source must be a list of rows or hold exactly one list")
            data = lists[0]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatasetError(f"{path}: a .json source must be a list of JSON objects (rows)")
        return list(data)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if kind == ".csv":
        text = io.StringIO(_read_text(path, gz), newline="")
        return [{k: maybe_list(v) for k, v in row.items()} for row in csv.DictReader(text)]
    raise DatasetError(f"{path}: unsupported file type; {USE_SUFFIXES}")


__all__ = ["DATA_SUFFIXES", "data_kind", "is_local_path", "maybe_list", "read_local_file", "sha256_file",
           "source_problem"]
