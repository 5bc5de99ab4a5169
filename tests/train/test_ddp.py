"""Data parallel: one global mini-batch through 2 CPU processes (gloo) and through 1 process.

The trainer's own ``update_minibatch`` runs in both settings on the same global batch; SALT's
coefficients (scope ``global``: the Gram is gathered across ranks) and the parameters after the
step must agree within 1e-5. Cases cover the exact Gram (token factors gathered), the sketch
(features gathered), token-mean aggregation with uneven token counts per rank, and micro-batches
that split the ranks' slices unevenly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.test_trainer import _tensor_batch, policy, run_config  # noqa: F401  (fixture)

CASES = {
    "exact-grpo": {"algorithm": {"salt": {"gram": "exact"}}, "train": {"micro_batch_size": 64}},
    "sketch-dapo-micro5": {"algorithm": {"salt": {"gram": "sketch", "sketch_dim": 16}, "loss": {"name": "dapo"}},
                           "train": {"micro_batch_size": 5}},
}


def _one_step(policy_dir: str, tb, case: str):
    """Run update_minibatch once (whatever the process group is); returns (coef, params, metrics)."""
    from transformers import AutoModelForCausalLM

    from salt.train.config import from_dict
    from salt.train.trainer import UpdateSpec, make_optimizer, update_minibatch
    from salt.utils import deep_merge

    # SGD without clipping: the parameter change is the gradient itself, so any scaling error shows
    overrides = {"train": {"optimizer": "sgd", "lr": 1.0, "max_grad_norm": 0.0}}
    cfg = from_dict(run_config(Path(policy_dir), **deep_merge(overrides, CASES[case])))
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    opt, sched = make_optimizer(model, cfg, 1)
    coefs: list = []
    metrics = update_minibatch(model, opt, sched, tb, UpdateSpec.from_config(cfg), seed=7, coef_out=coefs)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return coefs[0], params, metrics


def _worker(rank: int, world: int, init_file: str, policy_dir: str, batch_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from salt.train.config import from_dict
    from salt.train.trainer import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tb = torch.load(batch_file, weights_only=False)
        results = {case: _one_step(policy_dir, tb, case) for case in CASES}
        if rank == 0:
            torch.save(results, out_file)
        # the whole loop on 2 ranks: split generation, gathered batch, checkpoint barrier
        cfg = run_config(Path(policy_dir), train={"steps": 2, "checkpoint_every": 1})
        train(from_dict(cfg), Path(out_file).parent / "loop")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(policy, tmp_path):  # noqa: F811
    # 15 rollouts: rank 0 gets 8 rows, rank 1 gets 7; the first rows are cut to one response token
    # so that the two ranks also hold different numbers of tokens (token-mean scaling matters)
    _, _, _, tb = _tensor_batch(policy, n_prompts=3, n=5, seed=1)
    tb.mask[:4, 1:] = 0.0
    assert tb.mask[:8].sum() != tb.mask[8:].sum() * 8 / 7
    tb.old_logp = torch.where(tb.mask > 0, torch.full_like(tb.mask, -1.0), torch.zeros_like(tb.mask))
    batch_file, out_file = tmp_path / "batch.pt", tmp_path / "ddp.pt"
    torch.save(tb, batch_file)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(policy), str(batch_file), str(out_file)), nprocs=2, join=True)
    ddp = torch.load(out_file, weights_only=False)
    from salt.utils import read_jsonl

    loop = read_jsonl(tmp_path / "loop" / "metrics.jsonl")
    assert [r["step"] for r in loop] == [1, 2] and loop[-1]["train/rollouts"] == 2 * 16
    assert (tmp_path / "loop" / "DONE").is_file() and (tmp_path / "loop" / "checkpoints" / "step_000001").is_dir()
    for case in CASES:
        coef1, params1, m1 = _one_step(str(policy), tb, case)
        coef2, params2, m2 = ddp[case]
        assert coef1.shape == (len(tb),)
        assert torch.allclose(coef1, coef2, atol=1e-5), case
        assert not torch.allclose(coef1, tb.advantages, atol=1e-3), "SALT left the advantages unchanged"
        assert torch.allclose(params1, params2, atol=1e-5), (case, (params1 - params2).abs().max())
        for key in ("train/update_norm", "salt/alpha", "salt/n_eff", "train/clip_frac", "train/entropy",
                    "train/ratio_max", "train/loss"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), (case, key)
