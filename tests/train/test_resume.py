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

import pytest
import torch
import yaml

from salt.train.checkpoint import latest_checkpoint, list_checkpoints
from salt.utils import read_jsonl
from tests.train.test_trainer import _strip_time, policy, run_config  # noqa: F401  (fixture)


STEPS = 24


def _cmd(cfg_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "salt.cli", "train", "--config", str(cfg_path), "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_kill9_then_rerun_equals_uninterrupted(policy, tmp_path):  # noqa: F811
    # VIP on: its success predictor is part of the state that must survive the kill
    cfg = run_config(policy, algorithm={"loss": {"name": "dapo"}, "vip": {"enabled": True, "budget": 16, "upper": 8}},
                     train={"steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 2, "log_samples_every": 3})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    ref = tmp_path / "ref"  # uninterrupted, in this process (train.num_threads = 1 in both)
    from salt.train.config import from_dict
    from salt.train.trainer import train

    train(from_dict(cfg), ref)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(cfg_path, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # a random moment after the first checkpoint: once a random number of steps are logged,
    # plus a random fraction of a step (steps take ~0.05-0.2 s here)
    rng = random.Random()
    target = rng.randint(2, STEPS - 3)
    deadline = time.time() + 240

    def lines() -> int:
        path = out / "metrics.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    while latest_checkpoint(out / "checkpoints") is None or lines() < target:
        assert proc.poll() is None, "the run ended before the kill"
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = [int(p.name.split("_")[1]) for p in list_checkpoints(out / "checkpoints")]
    assert not (out / "DONE").exists(), "killed too late: the run had already finished"

    rerun = subprocess.run(_cmd(cfg_path, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from checkpoint" in rerun.stderr
    assert len(list_checkpoints(out / "checkpoints")) <= 2 and killed_at

    a, b = read_jsonl(ref / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert _strip_time(a) == _strip_time(b)
    from safetensors.torch import load_file

    wa, wb = load_file(ref / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_are_atomic_pruned_and_restore_rng(tmp_path):
    import numpy as np

    from salt.train.checkpoint import load_checkpoint, save_checkpoint, set_rng_state, truncate_jsonl

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        random.seed(step)
        np.random.seed(step)
        torch.manual_seed(step)
        save_checkpoint(root, step, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                        scheduler_state=sched.state_dict(),
                        state={"data_position": 10 * step}, extra={"predictor": {"x": step}}, keep=2)
    # a torn write (no COMPLETE marker) and a stale temp dir are never taken for a checkpoint
    (root / "step_000008").mkdir()
    (root / ".tmp-step_000010-abc").mkdir()
    assert [p.name for p in list_checkpoints(root)] == ["step_000004", "step_000006"]
    ck = load_checkpoint(latest_checkpoint(root))
    assert ck["state"] == {"data_position": 60, "step": 6} and ck["extra"] == {"predictor": {"x": 6}}
    assert torch.equal(ck["model"]["weight"], model.weight.detach())
    assert ck["scheduler"]["last_epoch"] == 1 and ck["optimizer"]["state"][0]["step"] == 1
    torch.manual_seed(123)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(ck["rng"])  # the states captured right after seeding with 6
    random.seed(6)
    np.random.seed(6)
    torch.manual_seed(6)
    again = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(ck["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == again != expected

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "torn')
    truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with pytest.raises(ValueError, match="the checkpoint expects 5"):
        truncate_jsonl(path, 5)
