"""``python -m salt.gpucheck.imports PACKAGE...``: import each package in this interpreter (the
GPU venv's), so the runner can tell whether one imports before ``accelerate launch`` needs it.
Exit 0 when all import; otherwise the import's own traceback (its last line names the error)."""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m salt.gpucheck.imports PACKAGE...", file=sys.stderr)
        return 2
    for name in argv:
        importlib.import_module(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
