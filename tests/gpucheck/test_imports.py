"""``python -m salt.gpucheck.imports``: the runner's "does this package import in the GPU venv"
probe (a module, not a ``python -c`` string)."""

from __future__ import annotations

import os
import sys

import pytest

from salt.gpucheck import runner
from salt.gpucheck.imports import main


def test_main_imports_or_raises_the_import_error():
    assert main(["json", "email.mime.text"]) == 0
    assert main([]) == 2
    with pytest.raises(ModuleNotFoundError, match="no_such_package_xyz"):
        main(["no_such_package_xyz"])


def test_runner_probe_in_a_child_interpreter(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(runner.REPO)}
    budget = runner.Budget(600)
    assert runner._imports(sys.executable, "json", budget, tmp_path / "ok.log", env)
    assert not runner._imports(sys.executable, "no_such_package_xyz", budget, tmp_path / "bad.log", env)
    assert "ModuleNotFoundError" in (tmp_path / "bad.log").read_text()
