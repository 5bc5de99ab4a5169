"""Data parallel: one global mini-batch through 2 CPU processes (gloo) and through 1 process.

Two processes are spawned with the environment ``accelerate launch`` gives its workers
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); Accelerate creates
the gloo process group (``DistributedType.MULTI_CPU``) and the model, optimizer and scheduler go
through ``accelerator.prepare`` (a ``DistributedDataParallel`` model), exactly as in
``Trainer.setup``. The trainer's own ``update_minibatch`` then runs one step on the same global
batch as a single process; SALT's coefficients and the parameters after the step must agree
within 1e-5. Cases:

* ``exact-grpo``: scope ``global``, exact Gram (the distributed form: each rank keeps its hidden
  states, tokens and mask and sends per-rollout features on every vocabulary id; the logits formed
  from the hidden states and the head weight), one pass per rank: DDP's own reducer averages.
* ``support-global-micro6``: the distributed support estimator (with a tail sketch) against the
  single-process one (``tests/algo/test_gram_distributed.py`` tests it against brute force).
* ``sketch-dapo-micro5``: sketch features gathered, two micro-batches per rank after the no-grad
  pass that collects the Gram's hidden states: the first pass runs under ``no_sync``, DDP's
  reducer averages after the second.
* ``global-pad-micro7``: rank 0 has two micro-batches (7 + 1 rows), rank 1 one (7 rows) and adds a
  zero-weight pass so that both run the same collectives.
* ``micro-scope-micro4``: scope ``micro`` (one Gram per micro-batch), two passes per rank, the
  first under ``accelerator.no_sync``, the second synchronised by DDP.

The batch has 15 rollouts (8 on rank 0, 7 on rank 1) with different token counts per rank, so
token-mean scaling matters. The unprepared path (a raw model in a process group, gradients summed
by hand) is checked too, and the whole training loop runs on the 2 ranks (split generation,
gathered batch, DDP checkpoint in the single-process format, final save).

FSDP runs for real on CPU in ``tests/train/test_fsdp.py`` (``accelerate launch`` with
``config/accelerate/fsdp.yaml``). DeepSpeed is not exercised (not installed; GPU only); its code path
in ``update_minibatch`` / ``Trainer`` is written against Accelerate's and DeepSpeed's public API.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.test_trainer import _tensor_batch, policy, run_config  # noqa: F401  (fixture)

CASES = {
    "exact-grpo": {"algorithm": {"salt": {"gram": "exact"}}, "train": {"micro_batch_size": 64}},
    "sketch-dapo-micro5": {"algorithm": {"salt": {"gram": "sketch", "sketch_dim": 16}, "loss": {"name": "dapo"}},
                           "train": {"micro_batch_size": 5}},
    "global-pad-micro7": {"algorithm": {"salt": {"gram": "sketch", "sketch_dim": 16}}, "train": {"micro_batch_size": 7}},
    "support-global-micro6": {"algorithm": {"salt": {"gram": "support", "tail_dim": 4}}, "train": {"micro_batch_size": 6}},
    # auto across ranks (the distributed estimator: exact when cheap, else support), both ranks alike
    "auto-global-micro6": {"algorithm": {"salt": {"gram": "auto"}}, "train": {"micro_batch_size": 6}},
    "micro-scope-micro4": {"algorithm": {"salt": {"gram": "exact", "scope": "micro"}}, "train": {"micro_batch_size": 4}},
}
RAW_CASE = "sketch-dapo-micro5"


def _one_step(policy_dir: str, tb, case: str, accelerator=None):
    """One ``update_minibatch`` (prepared by ``accelerator`` when given); returns (coef, params, metrics).

    ``coef`` is this rank's view: scope ``global`` the whole mini-batch's coefficients, scope
    ``micro`` the concatenated coefficients of this rank's micro-batches.
    """
    from transformers import AutoModelForCausalLM

    from salt.train.config import from_dict
    from salt.train.strategy import strategy_for
    from salt.train.update import UpdateSettings, make_optimizer, update_minibatch
    from salt.utils import deep_merge

    # SGD without clipping: the parameter change is the gradient itself, so any scaling error shows
    overrides = {"train": {"optimizer": "sgd", "lr": 1.0, "max_grad_norm": 0.0}}
    cfg = from_dict(run_config(Path(policy_dir), **deep_merge(overrides, CASES[case])))
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    opt, sched = make_optimizer(model, cfg, 1)
    if accelerator is not None:
        model, opt, sched = accelerator.prepare(model, opt, sched)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    coefs: list = []
    metrics = update_minibatch(model, opt, sched, tb, UpdateSettings.from_config(cfg), seed=7, coef_out=coefs,
                               strategy=strategy_for(accelerator))
    bare = accelerator.unwrap_model(model) if accelerator is not None else model
    params = torch.cat([p.detach().flatten() for p in bare.parameters()])
    return torch.cat(coefs), params, metrics


def _worker(rank: int, world: int, port: int, policy_dir: str, batch_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from salt.train.config import from_dict
    from salt.train.trainer import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    try:
        assert acc.distributed_type == DistributedType.MULTI_CPU and acc.num_processes == world
        assert dist.get_backend() == "gloo"
        tb = torch.load(batch_file, weights_only=False)
        results = {case: _one_step(policy_dir, tb, case, acc) for case in CASES}
        results["raw"] = _one_step(policy_dir, tb, RAW_CASE, None)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # the whole loop on 2 ranks: split generation, gathered batch, checkpoint barrier, final save
        cfg = run_config(Path(policy_dir), train={"steps": 2, "checkpoint_every": 1, "micro_batch_size": 5})
        train(from_dict(cfg), Path(out_dir) / "loop")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(policy, tmp_path):  # noqa: F811
    # 15 rollouts: rank 0 gets 8 rows, rank 1 gets 7; the first rows are cut to one response token
    # so that the two ranks also hold different numbers of tokens (token-mean scaling matters)
    _, _, _, tb = _tensor_batch(policy, n_prompts=3, n=5, seed=1)
    tb.mask[:4, 1:] = 0.0
    assert tb.mask[:8].sum() != tb.mask[8:].sum() * 8 / 7
    tb.old_logp = torch.where(tb.mask > 0, torch.full_like(tb.mask, -1.0), torch.zeros_like(tb.mask))
    batch_file = tmp_path / "batch.pt"
    torch.save(tb, batch_file)
    mp.spawn(_worker, args=(2, _free_port(), str(policy), str(batch_file), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    from salt.train.checkpoint import load_checkpoint
    from salt.utils import read_jsonl

    loop = read_jsonl(tmp_path / "loop" / "metrics.jsonl")
    assert [r["step"] for r in loop] == [1, 2] and loop[-1]["train/rollouts"] == 2 * 16
    assert (tmp_path / "loop" / "DONE").is_file() and (tmp_path / "loop" / "final" / "config.json").is_file()
    ck = load_checkpoint(tmp_path / "loop" / "checkpoints" / "step_000001")
    assert not any(k.startswith("module.") for k in ck["model"]), "DDP checkpoint must hold the unwrapped model"
    assert ck["optimizer"]["state"], "DDP checkpoint must hold the full optimizer state"

    for case in list(CASES) + ["raw"]:
        coef1, params1, m1 = _one_step(str(policy), tb, RAW_CASE if case == "raw" else case)
        (c0, params2, m2), (c1, params2_r1, _) = ranks[0][case], ranks[1][case]
        coef2 = torch.cat([c0, c1]) if CASES.get(case, {}).get("algorithm", {}).get("salt", {}).get("scope") == "micro" else c0
        assert coef1.shape == coef2.shape == (len(tb),), case
        assert torch.allclose(coef1, coef2, atol=1e-5), (case, (coef1 - coef2).abs().max())
        assert not torch.allclose(coef1, tb.advantages, atol=1e-3), "SALT left the advantages unchanged"
        assert torch.equal(params2, params2_r1), (case, "the ranks' replicas diverged")
        assert not torch.allclose(params1, torch.cat([p.flatten() for p in _initial_params(policy)]), atol=1e-4)
        assert torch.allclose(params1, params2, atol=1e-5), (case, (params1 - params2).abs().max())
        for key in ("train/update_norm", "salt/alpha", "salt/n_eff", "train/clip_frac", "train/entropy",
                    "train/ratio_max", "train/loss"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), (case, key)


def _initial_params(policy_dir) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return [p.detach() for p in AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).parameters()]


def test_strategy_zero_stage_and_full_state_fallback(policy):  # noqa: F811
    """The CPU-side pieces of the FSDP / DeepSpeed routing: which strategy, which ZeRO stage, and the
    full-weights view (every rank) for DDP / one process (the unwrapped model's own state dict)."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import AutoModelForCausalLM

    from salt.train.strategy import strategy_for, zero_stage

    def fake(dt, ds_config=None):
        plugin = None if ds_config is None else SimpleNamespace(deepspeed_config=ds_config)
        return SimpleNamespace(distributed_type=dt, state=SimpleNamespace(deepspeed_plugin=plugin))

    kind = lambda acc: strategy_for(acc).kind  # noqa: E731
    assert kind(None) == "none"
    assert kind(fake(DistributedType.NO)) == "none"
    assert kind(fake(DistributedType.MULTI_CPU)) == kind(fake(DistributedType.MULTI_GPU)) == "ddp"
    assert kind(fake(DistributedType.FSDP)) == "fsdp"
    assert kind(fake(DistributedType.DEEPSPEED)) == "deepspeed"
    with pytest.raises(ValueError, match="config/accelerate"):
        strategy_for(fake(DistributedType.XLA))
    assert zero_stage(fake(DistributedType.MULTI_GPU)) == 0
    assert zero_stage(fake(DistributedType.DEEPSPEED, {"zero_optimization": {"stage": 3}})) == 3
    assert zero_stage(fake(DistributedType.DEEPSPEED, {"zero_optimization": {"stage": 2}})) == 2

    acc = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    full = strategy_for(acc).full_state_every_rank(model)
    ref = model.state_dict()
    assert list(full) == list(ref) and all(torch.equal(full[k], ref[k]) for k in ref)
    # what the vLLM backend receives under FSDP / ZeRO-3: that full state dict
    from salt.rollout.vllm import weights_to_sync

    names = dict(weights_to_sync(full))
    assert "model.embed_tokens.weight" in names and torch.equal(names["lm_head.weight"], ref["lm_head.weight"])


def test_sharded_guards(policy, tmp_path):  # noqa: F811
    """FSDP / ZeRO-3 runs refuse, before any work, what would deadlock or break on sharded weights."""
    from types import SimpleNamespace

    from salt.train.config import ConfigError, from_dict
    from salt.train.strategy import DDP, FSDP, DeepSpeed, Single
    from salt.train.trainer import Trainer

    strategies = {"none": Single, "ddp": DDP, "fsdp": FSDP, "deepspeed": DeepSpeed}

    def trainer(kind: str, stage: int = 0, **sections) -> Trainer:
        t = Trainer(from_dict(run_config(policy, **sections)), tmp_path / "t")
        plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}}) if stage else None
        t.strategy = strategies[kind](SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))
        t.world = 2
        return t

    assert trainer("fsdp").strategy.sharded and trainer("deepspeed", 3).strategy.sharded
    assert not any(trainer(*k).strategy.sharded for k in (("deepspeed", 2), ("ddp",), ("none",)))
    trainer("fsdp").check_sharded_hf_generation()  # 4 prompts on 2 ranks: fine
    with pytest.raises(ConfigError, match="rollout.prompts_per_step = 3"):
        trainer("fsdp", rollout={"prompts_per_step": 3, "group_size": 4}).check_sharded_hf_generation()
    with pytest.raises(ConfigError, match="data.eval_limit = 5"):
        trainer("fsdp", data={"eval": "toy:test", "eval_limit": 5},
                train={"eval_every": 1}).check_sharded_hf_generation()


def test_sparse_gram_refused_across_ranks(policy, tmp_path):  # noqa: F811
    """Scope global over several processes exchanges no per-token data: the sparse Gram (a token-pair
    product over the whole mini-batch) is refused at set-up, naming the keys and the alternatives;
    one process, scope micro, or SALT and its diagnostics off are fine."""
    from salt.train.config import ConfigError, from_dict
    from salt.train.trainer import Trainer
    from salt.train.update import UpdateSettings

    def check(world: int, **salt) -> None:
        t = Trainer(from_dict(run_config(policy, algorithm={"salt": salt})), tmp_path / "t")
        t.world, t.settings = world, UpdateSettings.from_config(t.cfg)
        t.check_distributed_gram()

    with pytest.raises(ConfigError, match=r"algorithm\.salt\.gram: sparse .* 2 processes .* gram: auto or support"):
        check(2, gram="sparse")
    check(1, gram="sparse")
    check(2, gram="sparse", scope="micro")
    check(2, gram="sparse", enabled=False, diagnostics=False)
    for gram in ("auto", "support", "exact", "sketch", "dense"):
        check(2, gram=gram)
