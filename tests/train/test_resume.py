"""kill -9 a `salt train` process after its first checkpoint, rerun the same command: the final
metrics.jsonl (timings aside) and parameters equal those of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from salt.train.checkpoint import latest_checkpoint, list_checkpoints
from salt.utils import read_jsonl
from tests.train.test_trainer import _strip_time, policy, run_config  # noqa: F401  (fixture)


def _cmd(cfg_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "salt.cli", "train", "--config", str(cfg_path), "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "SALT_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_kill9_then_rerun_equals_uninterrupted(policy, tmp_path):  # noqa: F811
    # VIP on: its success predictor is part of the state that must survive the kill
    cfg = run_config(policy, algorithm={"loss": {"name": "dapo"}, "vip": {"enabled": True, "budget": 16, "upper": 8}},
                     train={"steps": 10, "checkpoint_every": 2, "keep_checkpoints": 2, "log_samples_every": 3})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    ref = tmp_path / "ref"  # uninterrupted, in this process (same single thread as the subprocess)
    from salt.train.config import from_dict
    from salt.train.trainer import train

    train(from_dict(cfg), ref)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cfg_path, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint(out / "checkpoints") is None:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.6))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = [int(p.name.split("_")[1]) for p in list_checkpoints(out / "checkpoints")]
    assert not (out / "DONE").exists(), "killed too late: the run had already finished"

    rerun = subprocess.run(_cmd(cfg_path, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from checkpoint" in rerun.stderr
    assert len(list_checkpoints(out / "checkpoints")) <= 2 and killed_at

    a, b = read_jsonl(ref / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 11))
    assert _strip_time(a) == _strip_time(b)
    from safetensors.torch import load_file

    wa, wb = load_file(ref / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
