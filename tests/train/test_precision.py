"""Master-weight precision: the optimizer updates fp32 weights, bf16 is compute only (autocast).

Pure bf16 weights round small AdamW updates away (at lr 1e-6 almost every entry keeps its value),
which is why ``model.dtype: auto`` means float32 and bf16 comes from ``model.mixed_precision``.
Accelerate's precision state is per process, so each run here is its own ``salt train`` process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from salt.train.strategy import resolve_mixed_precision
from tests.train.test_trainer import build_policy, run_config


def test_resolve_mixed_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    expected = "bf16" if torch.cuda.is_available() else "no"
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("bf16") == "bf16" and resolve_mixed_precision("no") == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # set by `accelerate launch`: keep it
    assert resolve_mixed_precision("auto") is None


def _changed_fraction(policy: Path, out: Path, model: dict) -> tuple[float, set]:
    from transformers import AutoModelForCausalLM

    cfg = run_config(policy, model=model, algorithm={"salt": {"enabled": False}},
                     train={"steps": 1, "lr": 1e-6, "max_grad_norm": 0.0, "warmup_steps": 0})
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "salt.cli", "train", "--config", str(out.parent / f"{out.name}.yaml"),
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    before = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).state_dict()
    after_model = AutoModelForCausalLM.from_pretrained(out / "final")
    after = after_model.state_dict()
    # the starting point in the run's own parameter dtype (bf16 weights are rounded once at load)
    changed = sum(int((before[k].to(after[k].dtype) != after[k]).sum()) for k in before)
    total = sum(before[k].numel() for k in before)
    return changed / total, {p.dtype for p in after_model.parameters()}


@pytest.mark.slow
def test_small_updates_survive_with_fp32_master_weights_and_bf16_compute(tmp_path):
    policy = build_policy(tmp_path / "p")
    frac_mp, dtypes = _changed_fraction(policy, tmp_path / "mp", {"mixed_precision": "bf16"})
    assert dtypes == {torch.float32}
    assert frac_mp > 0.9, f"only {frac_mp:.1%} of the entries moved with fp32 master weights"
    frac_bf16, _ = _changed_fraction(policy, tmp_path / "bf16", {"dtype": "bfloat16", "mixed_precision": "no"})
    assert frac_bf16 < 0.5 * frac_mp, "pure bf16 weights were expected to lose most lr=1e-6 updates"
