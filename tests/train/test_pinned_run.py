"""Pinned numbers: short runs through every trainer path must keep giving the same metrics.jsonl.

The golden file ``golden/pinned_runs.json`` was written by this test (``SALT_REGEN_PINNED=1``)
on the code before the trainer was split into one file per job (issue 12). A refactor that moves
code must leave every number where it was; a change that means to alter what training computes
regenerates the file in the same commit and says why.

Each case runs 3 steps of the tiny policy of ``test_trainer`` through a different set of code paths:
global and micro SALT scope, exact / support / sketch Grams, several epochs and mini-batches with
gradient accumulation, DAPO dynamic sampling and overlong shaping, PODS selection, F-GRPO, VIP,
every policy loss, a KL term, and baselines with diagnostics on and off. Besides every metric
(except wall times) it pins a fingerprint of the final weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tests.train.test_trainer import build_policy, run_config

GOLDEN = Path(__file__).parent / "golden" / "pinned_runs.json"
REGEN = os.environ.get("SALT_REGEN_PINNED") == "1"

CASES: dict[str, dict] = {
    "grpo_salt_global_exact_epochs": {
        "algorithm": {"salt": {"enabled": True, "gram": "exact"}},
        "train": {"ppo_epochs": 2, "mini_batch_prompts": 2, "micro_batch_size": 5, "dump_gram_steps": [2]},
    },
    "grpo_salt_micro_support": {
        "algorithm": {"salt": {"enabled": True, "scope": "micro", "gram": "support", "tail_dim": 8}},
        "train": {"micro_batch_size": 8},
    },
    "dapo_salt_dynamic_overlong": {
        "algorithm": {"loss": {"name": "dapo"}, "salt": {"enabled": True, "gram": "auto"},
                      "dynamic_sampling": {"enabled": True, "max_gen_batches": 3, "gen_batch_factor": 1.5},
                      "overlong": {"enabled": True, "buffer": 2}},
    },
    "pods_drgrpo_cispo": {
        "algorithm": {"advantage": "dr_grpo", "loss": {"name": "cispo"}, "salt": {"enabled": False},
                      "selection": {"rule": "max_variance", "n": 6}},
    },
    "vip_focal_gspo_sketch": {
        "algorithm": {"loss": {"name": "gspo"}, "focal": {"enabled": True, "gamma": 1.0},
                      "vip": {"enabled": True, "budget": 16, "lower": 2, "upper": 8, "allocation": "exact",
                              "embedding": "hash"},
                      "salt": {"enabled": True, "gram": "sketch", "sketch_dim": 16}},
    },
    "drgrpo_kl_no_diagnostics": {
        "algorithm": {"advantage": "dr_grpo", "loss": {"name": "dr_grpo", "beta": 0.1},
                      "salt": {"enabled": False, "diagnostics": False}},
        "train": {"scheduler": "cosine", "warmup_steps": 1},
    },
}


def _fingerprint(model_dir: Path) -> list[float]:
    """sum and sum of squares (float64) over every weight of the saved model."""
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    flat = torch.cat([v.double().flatten() for v in sd.values()])
    return [float(flat.sum()), float((flat * flat).sum())]


def _run(policy: Path, sections: dict, out: Path) -> dict:
    from salt.train.config import from_dict
    from salt.train.trainer import train
    from salt.utils import read_jsonl

    train(from_dict(run_config(policy, **sections)), out)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(out / "metrics.jsonl")]
    return {"metrics": rows, "weights": _fingerprint(out / "final")}


@pytest.fixture(scope="module")
def pinned_policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("pinned_policy"))


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if math.isnan(a) and math.isnan(b):
                return True
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return False
    return a == b


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_run_numbers(pinned_policy, tmp_path, case):
    got = _run(pinned_policy, CASES[case], tmp_path / case)
    if REGEN:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[case] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden numbers regenerated")
    want = json.loads(GOLDEN.read_text())[case]
    assert len(got["metrics"]) == len(want["metrics"])
    for step, (g, w) in enumerate(zip(got["metrics"], want["metrics"]), start=1):
        assert set(g) == set(w), f"step {step}: metric names changed: {sorted(set(g) ^ set(w))}"
        bad = {k: (g[k], w[k]) for k in w if not _close(g[k], w[k])}
        assert not bad, f"step {step}: (got, pinned) {bad}"
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got["weights"], want["weights"])), (
        got["weights"], want["weights"])
