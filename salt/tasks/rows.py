"""The normalised row schema (ARCHITECTURE.md, "Rows") and its one validator.

Every reader of rows checks them here, all of them at load time (before any model is loaded or any
training step runs): ``salt prepare-data`` (the rows it built, before writing), ``salt train``
(``data.train`` / ``data.eval``, :func:`salt.train.rollouts.load_rows`), ``salt evaluate``
(``--data``) and ``salt validate-proxy`` (``--data``). An error names the file and line of the first bad row (or the dataset and row when
the rows are not read from a file), what is wrong and how to fix it.

Fields each task needs (``id``, ``task`` and ``prompt`` always):

* ``toy``, ``math``: ``answer``, a non-empty string;
* ``mcq``: ``choices``, a list of >= 2 non-empty strings, and ``answer``, the letter of one of them;
* ``code``: ``tests``, a non-empty list of non-empty strings; optional ``entry_point`` and ``setup``
  are strings.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from salt.utils import InputError, iter_jsonl_numbered

TASKS = ("toy", "math", "mcq", "code")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIX = "fix that row or regenerate the file with `salt prepare-data NAME --out DIR` (row schema: salt/ARCHITECTURE.md, Rows)"


class DatasetError(InputError):
    """Rows that cannot be used; the message names the file and line (or dataset and row) and the fix."""


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def row_problem(row: Any) -> str | None:
    """What is wrong with one row (schema above), or None."""
    if not isinstance(row, Mapping):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if not _nonempty_str(row.get("id")):
        return "'id' must be a non-empty string"
    task = row.get("task")
    if task not in TASKS:
        return f"unknown task {task!r} (one of {', '.join(TASKS)})"
    if not _nonempty_str(row.get("prompt")):
        return "no prompt ('prompt' must be a non-empty string)"
    if task in ("toy", "math"):
        if not _nonempty_str(row.get("answer")):
            return f"no answer (a {task} row needs 'answer', a non-empty string)"
    elif task == "mcq":
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(_nonempty_str(c) for c in choices):
            return "'choices' must be a list of >= 2 non-empty strings"
        letters = LETTERS[: len(choices)]
        if not isinstance(row.get("answer"), str) or row["answer"] not in letters or not row["answer"]:
            return f"answer {row.get('answer')!r} is not one of {list(letters)}"
    elif task == "code":
        tests = row.get("tests")
        if not isinstance(tests, list) or not tests or not all(_nonempty_str(t) for t in tests):
            return "empty tests (a code row needs 'tests', a non-empty list of test strings)"
        for key in ("entry_point", "setup"):
            if row.get(key) is not None and not isinstance(row[key], str):
                return f"'{key}' must be a string, got {type(row[key]).__name__}"
    return None


def validate_rows(name: str, rows: Sequence[Any], *, path: str | os.PathLike | None = None,
                  lines: Sequence[int] | None = None) -> None:
    """Raise :class:`DatasetError` for the first malformed or duplicate row.

    With ``path`` and ``lines`` (the line of each row in that file) the error starts ``FILE:LINE``;
    otherwise it names dataset ``name`` and the row's id and index.
    """
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        rid = row.get("id") if isinstance(row, Mapping) else None
        where = f"{path}:{lines[i]}: row {rid!r}" if path is not None and lines is not None \
            else f"dataset '{name}', row {rid!r} (#{i})"
        problem = row_problem(row)
        if problem is None and rid in seen:
            first = f"line {lines[seen[rid]]}" if lines is not None else f"row #{seen[rid]}"
            problem = f"duplicate id (first at {first})"
        if problem is not None:
            raise DatasetError(f"{where}: {problem}; {FIX}")
        seen[rid] = i


def read_rows(path: str | os.PathLike, *, what: str = "data") -> list[dict[str, Any]]:
    """The rows of a prepared JSONL file (``DIR/data.jsonl``), every one validated.

    ``what`` names where the path came from (a config key or flag) in the error for an empty or
    missing file; unreadable bytes, bad JSON and bad rows are reported as ``FILE:LINE``.
    """
    try:
        numbered = list(iter_jsonl_numbered(path))
    except FileNotFoundError:
        raise DatasetError(f"{what} = '{path}' does not exist; create it with `salt prepare-data NAME --out DIR` "
                           "(then DIR/data.jsonl)") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise DatasetError(f"{what} = '{path}' cannot be read ({exc.strerror}); point it at a readable "
                           "JSONL file") from None
    except ValueError as exc:  # bad UTF-8 or JSON, already FILE:LINE
        raise DatasetError(str(exc)) from None
    if not numbered:
        raise DatasetError(f"{what} = '{path}' holds no rows; regenerate it with `salt prepare-data NAME --out DIR`")
    lines, rows = [n for n, _ in numbered], [r for _, r in numbered]
    validate_rows(str(path), rows, path=path, lines=lines)
    return rows


__all__ = ["DatasetError", "TASKS", "read_rows", "row_problem", "validate_rows"]
