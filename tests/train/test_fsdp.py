"""FSDP (v2, ``fully_shard``) for real on CPU: ``accelerate launch`` with the project's
``config/accelerate/fsdp.yaml``, two processes on gloo, against one process.

Accelerate enables FSDP only for accelerator devices: on a CPU-only machine it silently falls back
to ``MULTI_CPU`` (DDP). :func:`salt.train.strategy.make_accelerator` switches the FSDP plugin back
on, so the launched workers run Accelerate's own FSDP2 preparation (``fsdp2_prepare_model``) and the
project's :class:`salt.train.strategy.FSDP` strategy. The workers (this module's :func:`main`, run
by ``accelerate launch -m tests.train.test_fsdp``) check that the parameters are really sharded and:

* run 3 optimizer steps of ``update_minibatch`` on 3 fixed global mini-batches (15 rollouts, 8 rows
  on rank 0 and 7 on rank 1 with different token counts), SALT scope ``global`` (SGD, no clipping,
  rank 1 pads a zero-weight pass) and scope ``micro`` (SGD with active clipping); after every
  step the full weights gathered on EVERY rank (``full_state_every_rank``, what a colocated vLLM
  engine is fed) must equal the one-process step within 1e-5, and so must SALT's coefficients.
  SGD, because its update is linear in the gradient: AdamW divides by sqrt(v), which turns
  float32 summation-order noise on small gradients into ~1e-5 weight differences (measured: ONE
  process, the same mini-batch in micro-batches of 4 vs 3, AdamW lr 1e-2, differs by 1.3e-5 after
  2 steps and 2.3e-5 after 3; SGD by 7e-8). AdamW's sharded state is covered by the loop below;
* run the training loop (3 steps, checkpoint every step), then resume a copy of it from its
  step-1 checkpoint (full model + Accelerate's sharded optimizer state): the resumed run's metrics
  and final weights equal the uninterrupted run's exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.test_ddp import _free_port
from tests.train.test_trainer import _strip_time, _tensor_batch, policy, run_config  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
CASES = {
    "global-sgd-pad7": {"algorithm": {"salt": {"gram": "exact"}},
                        "train": {"optimizer": "sgd", "lr": 0.5, "max_grad_norm": 0.0, "micro_batch_size": 7}},
    "micro-sgd-clip4": {"algorithm": {"salt": {"gram": "exact", "scope": "micro"}},
                        "train": {"optimizer": "sgd", "lr": 0.5, "max_grad_norm": 0.2, "micro_batch_size": 4}},
}
LOOP = {"train": {"steps": 3, "checkpoint_every": 1, "keep_checkpoints": 3, "micro_batch_size": 5}}


def launch_cmd(config: str, module: str, args: list[str], nproc: int = 2, port: int | None = None,
               extra: list[str] | None = None) -> list[str]:
    """``accelerate launch`` of ``python -m module args`` with one of config/accelerate/*.yaml on CPU
    (no mixed precision: float32 numbers comparable to one process)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "config" / "accelerate" / config),
            "--num_processes", str(nproc), "--mixed_precision", "no",
            "--main_process_port", str(port or _free_port()), *(extra or []), "-m", module, *args]


def launch_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def _steps(policy_dir: str, batches: list, case: str, acc=None) -> dict:
    """``STEPS`` calls of ``update_minibatch`` under ``strategy_for(acc)``: the coefficients, metrics
    and the full weights (``full_state_every_rank``) after every step, the rank-0 save view at the end."""
    from transformers import AutoModelForCausalLM

    from salt.train.config import from_dict
    from salt.train.strategy import strategy_for
    from salt.train.update import UpdateSettings, make_optimizer, update_minibatch

    cfg = from_dict(run_config(Path(policy_dir), **CASES[case]))
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    opt, sched = make_optimizer(model, cfg, STEPS)
    strategy = strategy_for(acc)
    model, opt, sched = strategy.prepare(model, opt, sched, cfg.train)
    if strategy.sharded:
        _assert_sharded(model)
    out: dict = {"coef": [], "metrics": [], "state": []}
    for i, tb in enumerate(batches):
        coefs: list = []
        out["metrics"].append(update_minibatch(model, opt, sched, tb, UpdateSettings.from_config(cfg), seed=7 + i,
                                               coef_out=coefs, strategy=strategy))
        out["coef"].append(torch.cat(coefs))
        out["state"].append({k: v.detach().clone() for k, v in strategy.full_state_every_rank(model).items()})
    full = strategy.full_state(model)  # collective; the full weights on rank 0 (None: one process)
    out["saved"] = None if full is None else {k: v.detach().clone() for k, v in full.items()}
    return out


def _assert_sharded(model) -> None:
    """Every parameter is a DTensor sharded over the 2 ranks (FSDP2), not a replica."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    assert isinstance(model, FSDPModule), type(model)
    params = dict(model.named_parameters())
    assert params and all(isinstance(p, DTensor) for p in params.values()), "parameters are not DTensors"
    local, total = sum(p.to_local().numel() for p in params.values()), sum(p.numel() for p in params.values())
    assert local <= total // 2 + 1024, (local, total)


def main(argv: list[str]) -> None:
    """One rank of ``accelerate launch -m tests.train.test_fsdp POLICY BATCHES OUT KIND``: KIND ``fsdp``
    (FSDP2; the loop is also resumed) or ``ddp`` (``MULTI_CPU``; ``tests/train/test_multinode.py``)."""
    import torch.distributed as dist
    from accelerate.utils import DistributedType

    from salt.train.config import from_dict
    from salt.train.strategy import make_accelerator
    from salt.train.trainer import train

    policy_dir, batch_file, out, kind = argv[0], argv[1], Path(argv[2]), argv[3]
    torch.set_num_threads(1)
    acc = make_accelerator(None)
    expected = {"fsdp": DistributedType.FSDP, "ddp": DistributedType.MULTI_CPU}[kind]
    assert acc.distributed_type == expected and acc.num_processes == 2, (acc.distributed_type, acc.num_processes)
    assert acc.is_fsdp2 == (kind == "fsdp") and dist.get_backend() == "gloo"
    rank = acc.process_index
    batches = torch.load(batch_file, weights_only=False)
    results = {}
    for case in CASES:
        t0 = time.perf_counter()
        results[case] = _steps(policy_dir, batches, case, make_accelerator(None))
        results[case]["seconds"] = time.perf_counter() - t0
    torch.save(results, out / f"rank{rank}.pt")
    cfg = from_dict(run_config(Path(policy_dir), **LOOP))
    train(cfg, out / "loop")
    if kind == "fsdp":  # resume from the step-1 checkpoint in a copy of the loop's directory
        if rank == 0:
            shutil.copytree(out / "loop", out / "resumed")
            for rel in ("DONE", "final", "checkpoints/step_000002", "checkpoints/accelerate/step_000002"):
                p = out / "resumed" / rel
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        dist.barrier()
        train(cfg, out / "resumed")
    dist.destroy_process_group()


def _batches(policy) -> list:  # noqa: F811
    """3 global mini-batches of 15 rollouts: rank 0 gets 8 rows, rank 1 gets 7, with different
    token counts (the first rows cut to one response token), off-policy old log-probs."""
    out = []
    for seed in (1, 2, 3):
        tb = _tensor_batch(policy, n_prompts=3, n=5, seed=seed)[3]
        tb.mask[:4, 1:] = 0.0
        tb.old_logp = torch.where(tb.mask > 0, torch.full_like(tb.mask, -1.0), torch.zeros_like(tb.mask))
        out.append(tb)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def check_against_one_process(policy, batches: list, ranks: list[dict]) -> dict:  # noqa: F811
    """The workers' 3 steps (``ranks``: rank 0's and rank 1's results of :func:`_steps`) against one
    process on the same batches; returns the max weight difference per case and step."""
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).state_dict()
    report = {}
    for case in CASES:
        one = _steps(str(policy), batches, case)
        r0, r1 = ranks[0][case], ranks[1][case]
        micro = CASES[case]["algorithm"]["salt"].get("scope") == "micro"
        diffs = []
        for i in range(STEPS):
            coef2 = torch.cat([r0["coef"][i], r1["coef"][i]]) if micro else r0["coef"][i]
            assert coef2.shape == one["coef"][i].shape == (15,), (case, i)
            assert torch.allclose(one["coef"][i], coef2, atol=1e-5), (case, i, (one["coef"][i] - coef2).abs().max())
            assert not torch.allclose(one["coef"][i], batches[i].advantages, atol=1e-3), "SALT left the advantages"
            # the gathered full weights are the same on both ranks and equal the one-process weights
            assert _max_diff(r0["state"][i], r1["state"][i]) == 0.0, (case, i, "ranks gathered different weights")
            d = _max_diff(one["state"][i], r0["state"][i])
            assert d <= 1e-5, (case, i, d)
            diffs.append(d)
            for key in ("train/update_norm", "salt/alpha", "salt/n_eff", "train/clip_frac", "train/loss"):
                assert one["metrics"][i][key] == pytest.approx(r0["metrics"][i][key], rel=1e-4, abs=1e-6), (case, i, key)
        assert _max_diff(init, one["state"][-1]) > 1e-3, "the steps did not move the weights"
        if not micro:
            assert all(m["train/update_norm"] > 0 for m in one["metrics"])
        else:  # clipping is active: the pre-clip norm exceeds max_grad_norm
            assert min(m["train/update_norm"] for m in one["metrics"]) > CASES[case]["train"]["max_grad_norm"]
        assert list(r0["state"][-1]) == list(one["state"][-1]), "the gather must keep the model's own names and order"
        # the rank-0 save view (accelerator.get_state_dict) equals the every-rank gather
        assert _max_diff(r0["saved"], r0["state"][-1]) == 0.0
        report[case] = {"max_abs_diff_per_step": diffs, "worker_seconds": round(r0["seconds"], 1)}
    return report


def test_fsdp_two_processes_equal_one_process(policy, tmp_path):  # noqa: F811
    batches = _batches(policy)
    torch.save(batches, tmp_path / "batches.pt")
    t0 = time.perf_counter()
    res = subprocess.run(launch_cmd("fsdp.yaml", "tests.train.test_fsdp", [str(policy), str(tmp_path / "batches.pt"),
                                                                           str(tmp_path), "fsdp"]),
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    report = {"launch_seconds": round(time.perf_counter() - t0, 1)}
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    report.update(check_against_one_process(policy, batches, ranks))
    print(json.dumps(report))

    from safetensors.torch import load_file

    from salt.train.checkpoint import load_checkpoint
    from salt.utils import read_jsonl

    init = load_file(Path(policy) / "model.safetensors")
    loop, resumed = tmp_path / "loop", tmp_path / "resumed"
    a, b = read_jsonl(loop / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3] and a[-1]["train/rollouts"] == 3 * 16
    assert _strip_time(a) == _strip_time(b)
    wa, wb = load_file(loop / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _max_diff(init, wa) > 1e-4, "the loop did not move the weights"
    ck = load_checkpoint(loop / "checkpoints" / "step_000001")
    assert ck["state"]["accelerate_state"] == "accelerate/step_000001"
    assert sorted(ck["model"]) == sorted(init), "the checkpoint must hold the full, unwrapped model"
    assert (loop / "checkpoints" / "accelerate" / "step_000001").is_dir()


if __name__ == "__main__":
    main(sys.argv[1:])
