"""``make gpu-check`` / ``salt gpu-check``: verify every GPU path on one CUDA GPU in ten minutes.

* :mod:`salt.gpucheck.plan`    what runs (checks, budgets, tolerances, set-up commands), the
  comparisons and the JSON / Markdown report. Standard library only.
* :mod:`salt.gpucheck.runner`  the driver: set-up in its own venv, one subprocess per check with
  its own timeout (the whole process group is killed when it runs over), the total budget,
  ``--dry-run``. Standard library only, so the system ``python3`` can run it before anything
  is installed.
* :mod:`salt.gpucheck.checks`  the checks themselves (torch, transformers, vLLM, Accelerate,
  DeepSpeed imported lazily), run as ``python -m salt.gpucheck.checks NAME`` inside the GPU venv.
* :mod:`salt.gpucheck.imports` ``python -m salt.gpucheck.imports PACKAGE``: does it import in the
  GPU venv (asked before ``accelerate launch`` of a check that needs it).

The checks never report a GPU result they did not measure: without a CUDA device a GPU check
is skipped with that reason.
"""
