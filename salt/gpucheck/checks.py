"""The GPU checks of ``salt gpu-check`` (one per worker process: ``python -m salt.gpucheck.checks NAME``).

Each ``check_<name>(work, device)`` returns a result dict (:func:`salt.gpucheck.plan.make_result`)
and raises :class:`SkipCheck` when it cannot run here (no CUDA device, a package that did not
install). torch, transformers, vLLM, Accelerate and DeepSpeed are imported inside the functions.
``bf16_step`` and ``gram_gpu`` also run on CPU (``--device cpu``, small sizes: the unit tests);
a GPU result is only ever produced on a GPU.

All checks use the toy model that ``toy_model`` writes to ``WORK/toy_model`` (built locally,
never downloaded).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from salt.gpucheck.plan import TOY_SIZE, judge, logprob_gap, make_result, rel_diff, skipped
from salt.train.outputs import run_files
from salt.train.engine_probe import (  # noqa: F401  (the same probes as the CPU tests of the real engine)
    PROBE_SEED, pad_id_of, probe_trainer_cls, recompute_logprobs, rollout_batch, toy_prompts)

TOY_DIR = "toy_model"


class SkipCheck(Exception):
    """The check cannot run here; the message is the reason in the report."""


# ----------------------------------------------------------------------------------- helpers


def require_device(device: str) -> Any:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SkipCheck("no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was measured")
    return torch.device(device)


def require_package(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a package that fails while importing (CUDA ops)
        raise SkipCheck(f"{name} does not import: {type(exc).__name__}: {str(exc)[:300]}") from exc


def environment() -> dict[str, Any]:
    """Versions and the GPU, without importing the optional packages."""
    from importlib import metadata

    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for pkg in ("transformers", "accelerate", "vllm", "deepspeed"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    return env


def toy_path(work: str | Path) -> Path:
    path = Path(work) / TOY_DIR
    if not (path / "config.json").is_file():
        raise SkipCheck(f"the toy model is missing ({path}); run the toy_model check first")
    return path


def load_model(path: str | Path, dtype: Any, device: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    return model.eval(), tok


def run_config(model_path: str | Path, **over: Any) -> Any:
    """A small RunConfig on the toy task (tracking, progress and samples off), ``over`` merged in."""
    from salt.train.config import from_dict
    from salt.utils import deep_merge

    base = {
        "seed": 0,
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": "toy:train", "toy_rows": 256},
        "rollout": {"backend": "hf", "group_size": 4, "prompts_per_step": 4, "max_new_tokens": 8,
                    "temperature": 1.0},
        "algorithm": {"advantage": "grpo", "loss": {"name": "grpo"}, "salt": {"enabled": True, "gram": "exact"}},
        "train": {"steps": 3, "micro_batch_size": 64, "lr": 1e-2, "optimizer": "sgd", "max_grad_norm": 1.0,
                  "checkpoint_every": 0, "log_samples_every": 0, "progress": False},
        "tracking": {"enabled": False},
    }
    cfg = from_dict(deep_merge(base, over))
    return cfg.validate(check_paths=True, check_devices=True)


def flat_state(state: dict[str, Any]) -> Any:
    """All floating tensors of a state dict, sorted by name, as one float32 CPU vector."""
    import torch

    return torch.cat([state[k].detach().float().cpu().reshape(-1) for k in sorted(state)
                      if torch.is_floating_point(state[k]) and not k.endswith("rotary_emb.inv_freq")])


def cosine(a: Any, b: Any) -> float:
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def rel_err(a: Any, ref: Any) -> float:
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def timed(fn: Callable[[], Any], device: Any, repeats: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls after one warm-up (CUDA synchronised); and the last result."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ------------------------------------------------------------------------------------ checks


def check_toy_model(work: str | Path, device: str = "cuda", steps: int = 600, batch_size: int = 64) -> dict:
    """Build (or reuse) the toy model: tokenizer + random ``TOY_SIZE`` Qwen2, short warm-up SFT."""
    import torch

    from salt.tasks.toy import generate_problems
    from salt.train.sft import _lr_factor, collate, encode_examples, target_loss
    from salt.train.toy_model import build_toy_model, train_toy_tokenizer

    dev = require_device(device)
    out = Path(work) / TOY_DIR
    meta_path = out / "gpucheck_meta.json"
    if (out / "config.json").is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        res = make_result("toy_model", [judge("toy_model", "final_loss", meta["final_loss"])],
                          {**meta, "reused": True})
        return {**res, "environment": environment()}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tok = train_toy_tokenizer(None)
    model = build_toy_model(tok, TOY_SIZE, seed=0, max_position_embeddings=64).to(dev)
    examples = encode_examples(generate_problems(3000, "train", seed=0), tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, 20, steps))
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        batch = {k: v.to(dev) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}
        loss = target_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    tmp = out.with_name(TOY_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.cpu().save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tail = losses[-50:]
    meta = {"size": TOY_SIZE, "steps": steps, "final_loss": sum(tail) / len(tail), "first_loss": losses[0],
            "train_s": time.perf_counter() - t0, "device": str(dev),
            "parameters": sum(p.numel() for p in model.parameters())}
    (tmp / "gpucheck_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    res = make_result("toy_model", [judge("toy_model", "final_loss", meta["final_loss"])], meta)
    return {**res, "environment": environment()}


def check_vllm_vs_hf(work: str | Path, device: str = "cuda", n_prompts: int = 32, n: int = 4,
                     max_new_tokens: int = 8, temperature: float = 0.7) -> dict:
    import torch

    dev = require_device(device)
    require_package("vllm")
    from salt.rollout.hf import HFBackend
    from salt.rollout.vllm import VLLMBackend, vllm_options

    path = toy_path(work)
    m32, tok = load_model(path, torch.float32, dev)
    m16, _ = load_model(path, torch.bfloat16, dev)
    _, prompts = toy_prompts(tok, n_prompts)
    pad = pad_id_of(tok)
    opts = vllm_options({"vllm": {"gpu_memory_utilization": 0.3, "dtype": "bfloat16", "enforce_eager": True}})
    t0 = time.perf_counter()
    engine = VLLMBackend(str(path), tok, opts, seed=0)
    numbers: dict[str, Any] = {"engine_start_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    v = engine.generate(prompts, n, max_new_tokens, temperature, 1.0, seed=0)
    numbers["vllm_generate_s"] = time.perf_counter() - t0
    g16 = logprob_gap(v.logprobs, recompute_logprobs(m16, v, pad, temperature))
    g32 = logprob_gap(v.logprobs, recompute_logprobs(m32, v, pad, temperature))
    hf = HFBackend(m32, tok)
    t0 = time.perf_counter()
    h = hf.generate(prompts, n, max_new_tokens, temperature, 1.0, seed=0)
    numbers["hf_generate_s"] = time.perf_counter() - t0
    gh = logprob_gap(h.logprobs, recompute_logprobs(m32, h, pad, temperature))
    vg = engine.generate(prompts, 1, max_new_tokens, 0.0, 1.0)
    hg = hf.generate(prompts, 1, max_new_tokens, 0.0, 1.0)
    agree = sum(a == b for a, b in zip(vg.completion_ids, hg.completion_ids)) / len(prompts)
    numbers.update({"tokens_compared": g16["tokens"], "vllm_vs_trainer_fp32_max_abs": g32["max_abs"],
                    "hf_vs_trainer_fp32_max_abs": gh["max_abs"],
                    "vllm_mean_len": sum(map(len, v.completion_ids)) / len(v.completion_ids),
                    "hf_mean_len": sum(map(len, h.completion_ids)) / len(h.completion_ids)})
    comps = [judge("vllm_vs_hf", k, x) for k, x in (
        ("prompt_ids_equal", float(v.prompt_ids == h.prompt_ids)),
        ("vllm_vs_trainer_bf16_mean_abs", g16["mean_abs"]), ("vllm_vs_trainer_bf16_max_abs", g16["max_abs"]),
        ("vllm_vs_trainer_fp32_mean_abs", g32["mean_abs"]), ("hf_vs_trainer_fp32_mean_abs", gh["mean_abs"]),
        ("greedy_agreement", agree))]
    engine.close()
    return make_result("vllm_vs_hf", comps, numbers)


def stale_weight_comparisons(probes: list[dict[str, float]]) -> tuple[list, dict[str, float]]:
    """Judge the probes of :func:`salt.train.engine_probe.probe_trainer_cls`: the engine must match the current weights.

    The first probe (before any update) gives the noise floor of engine vs trainer. A step whose
    drift (trainer log-probs after vs before the step) is at least twice that floor can tell a
    stale engine from a synced one: there the gap to the current weights must be at most half
    the gap to the previous ones.
    """
    floor = max(probes[0]["gap_now"], 1e-3)
    steps = [p for p in probes[1:] if "drift" in p]
    tested = [p for p in steps if p["drift"] >= 2 * floor]
    ratio = max((p["gap_now"] / max(p["gap_old"], 1e-12) for p in tested), default=float("nan"))
    comps = [judge("vllm_rl_sync", k, x) for k, x in (
        ("sync_gap_max", max(p["gap_now"] for p in probes)), ("steps_tested_for_staleness", len(tested)),
        ("stale_ratio_max", ratio if tested else 0.0))]
    numbers = {"noise_floor": floor, "syncs": float(len(steps)),
               "drift_min": min((p["drift"] for p in steps), default=float("nan")),
               "drift_max": max((p["drift"] for p in steps), default=float("nan"))}
    return comps, numbers


RL_STEPS, RL_LR = 8, 3e-4


def probed_run(model_path: str | Path, out: str | Path, backend: str, steps: int = RL_STEPS,
               lr: float = RL_LR) -> tuple[list[dict[str, float]], list[float], float]:
    """``Trainer.run`` with the probes of :func:`salt.train.engine_probe.probe_trainer_cls` (16 prompts x 8 rollouts per step,
    AdamW, model.dtype auto: bf16 on a GPU); returns (probes, reward per step, seconds)."""
    from salt.utils import read_jsonl

    shutil.rmtree(out, ignore_errors=True)
    cfg = run_config(model_path, model={"dtype": "auto"},
                     rollout={"backend": backend, "group_size": 8, "prompts_per_step": 16,
                              "vllm": {"gpu_memory_utilization": 0.3, "enable_sleep_mode": True}},
                     algorithm={"salt": {"enabled": False, "gram": "auto"}},
                     train={"steps": steps, "optimizer": "adamw", "lr": lr})
    trainer = probe_trainer_cls()(cfg, out)
    t0 = time.perf_counter()
    trainer.run()
    rewards = [float(r["reward/mean"]) for r in read_jsonl(run_files(out)["metrics"])]
    return trainer.probes, rewards, time.perf_counter() - t0


def check_vllm_rl_sync(work: str | Path, device: str = "cuda") -> dict:
    """The colocated engine stays in sync with the trainer, and RL with it tracks RL with HF rollouts."""
    require_device(device)
    require_package("vllm")
    path = toy_path(work)
    probes, r_vllm, s_vllm = probed_run(path, Path(work) / "rl_vllm", "vllm")
    _, r_hf, s_hf = probed_run(path, Path(work) / "rl_hf", "hf")
    comps, numbers = stale_weight_comparisons(probes)
    mean_v, mean_h = sum(r_vllm) / len(r_vllm), sum(r_hf) / len(r_hf)
    comps.append(judge("vllm_rl_sync", "reward_mean_diff_vs_hf", abs(mean_v - mean_h)))
    numbers.update({"vllm_run_s": s_vllm, "hf_run_s": s_hf, "reward_mean_vllm": mean_v, "reward_mean_hf": mean_h,
                    "rewards_vllm": json.dumps([round(r, 4) for r in r_vllm]),
                    "rewards_hf": json.dumps([round(r, 4) for r in r_hf]),
                    "probes": json.dumps([{k: round(v, 5) if isinstance(v, float) else v for k, v in p.items()}
                                          for p in probes])})
    return make_result("vllm_rl_sync", comps, numbers)


class _GradRecorder:
    """Stand-in optimizer: ``step`` records the gradients (float32 copies) and changes nothing."""

    def __init__(self, params: list) -> None:
        import torch

        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": 0.0}]
        self.grads: list = []
        self._torch = torch

    def step(self) -> None:
        t = self._torch
        self.grads = [(p.grad if p.grad is not None else t.zeros_like(p)).detach().float().clone() for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


class _NoSchedule:
    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [0.0]


def adamw_applied_fraction(model32: Any, grads32: list, dtype: Any, lr: float) -> tuple[float, float]:
    """One step of the trainer's optimizer (``make_optimizer``: AdamW at ``lr``, no decay) with the same
    gradients on fp32 weights and on ``dtype`` weights (what ``model.dtype`` loads): the share of the
    entries each changes. Returns (fp32 changed fraction, dtype changed / fp32 changed)."""
    import torch

    from salt.train.update import make_optimizer

    cfg = run_config(model32.name_or_path, train={"optimizer": "adamw", "lr": lr, "weight_decay": 0.0})
    fracs, changed = [], []
    for dt in (torch.float32, dtype):
        m = copy.deepcopy(model32).to(dt)
        params = [p for p in m.parameters() if p.requires_grad]
        for p, g in zip(params, grads32):
            p.grad = g.to(dt)
        before = [p.detach().clone() for p in params]
        opt, _sched = make_optimizer(m, cfg, 1)  # the scheduler holds the optimizer by a weak reference
        opt.step()
        n = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
        changed.append(n)
        fracs.append(n / sum(p.numel() for p in params))
    return fracs[0], changed[1] / max(changed[0], 1)


def check_bf16_step(work: str | Path, device: str = "cuda", n_prompts: int = 8, n: int = 4,
                    probe_lr: float = 1e-6, model_dir: str | Path | None = None) -> dict:
    """bf16 vs fp32: one ``update_minibatch`` on the same rollouts; AdamW updates lost to bf16 rounding."""
    import torch

    from salt.rollout.hf import HFBackend
    from salt.tasks.toy import toy_reward
    from salt.train.batch import to_tensors
    from salt.train.forward import compute_logprobs
    from salt.train.strategy import master_dtype
    from salt.train.update import UpdateSettings, update_minibatch

    dev = require_device(device)
    path = Path(model_dir) if model_dir is not None else toy_path(work)
    m32, tok = load_model(path, torch.float32, dev)
    rows, prompts = toy_prompts(tok, n_prompts, split="train")
    out = HFBackend(m32, tok).generate(prompts, n, 8, 1.0, 1.0, seed=0)
    # the toy verifier's reward plus 0.01 per token: groups are never constant, so the advantages
    # (and the gradients compared) are not zero even for an untrained model
    rewards = [toy_reward(rows[g]["answer"], t) + 0.01 * len(ids)
               for g, t, ids in zip(out.group_ids, out.texts, out.completion_ids)]
    cfg = run_config(path, train={"max_grad_norm": 0.0})  # no clipping: the raw gradients are compared
    spec = UpdateSettings.from_config(cfg)
    # the trainer's bf16 path: master weights in model.dtype (auto = fp32) and bf16 autocast compute
    param_dtype = master_dtype(cfg.model.dtype)
    res: dict[str, dict] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", param_dtype)):
        model = copy.deepcopy(m32).to(dtype)
        tb = to_tensors(rollout_batch(out, rows, rewards), pad_id_of(tok))
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
        with ctx:
            tb.old_logp = compute_logprobs(model, tb.to(dev), cfg.rollout.temperature, 64).float().cpu()
            rec = _GradRecorder([p for p in model.parameters() if p.requires_grad])
            metrics = update_minibatch(model, rec, _NoSchedule(), tb, spec, seed=0)
        res[name] = {"metrics": metrics, "grad": torch.cat([g.reshape(-1) for g in rec.grads]),
                     "grads": rec.grads, "old_logp": tb.old_logp, "mask": tb.mask}
    a, b = res["fp32"], res["bf16"]
    mask = a["mask"] > 0
    logp_gap = float((a["old_logp"] - b["old_logp"])[mask].abs().mean())
    loss32, loss16 = a["metrics"]["train/loss"], b["metrics"]["train/loss"]
    norm32, norm16 = a["metrics"]["train/update_norm"], b["metrics"]["train/update_norm"]
    frac32, applied = adamw_applied_fraction(m32, a["grads"], param_dtype, probe_lr)
    comps = [judge("bf16_step", k, x) for k, x in (
        ("loss_abs_diff", abs(loss32 - loss16)), ("grad_norm_rel_diff", rel_diff(norm32, norm16)),
        ("grad_cosine", cosine(a["grad"], b["grad"])), ("bf16_applied_frac", applied))]
    numbers = {"device": str(dev), "param_dtype": str(param_dtype), "loss_fp32": loss32, "loss_bf16": loss16, "grad_norm_fp32": norm32,
               "grad_norm_bf16": norm16, "old_logp_mean_abs_diff": logp_gap,
               "fp32_changed_frac": frac32, "probe_lr": probe_lr, "reward_mean": sum(rewards) / len(rewards),
               "salt_n_eff_fp32": a["metrics"].get("salt/n_eff", float("nan")),
               "salt_n_eff_bf16": b["metrics"].get("salt/n_eff", float("nan"))}
    return make_result("bf16_step", comps, numbers)


def _full_params(trainer: Any) -> dict[str, Any]:
    """Full float32 weights of a prepared model: DeepSpeed's fp32 master copy, else the state dict."""
    if trainer.strategy.kind == "deepspeed":
        from deepspeed.utils import safe_get_full_fp32_param

        return {n: safe_get_full_fp32_param(p).detach().float().cpu()
                for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
    return {k: v.detach().float().cpu() for k, v in trainer.accelerator.get_state_dict(trainer.model).items()}


SHARDED_KIND = {"fsdp": "fsdp", "zero2": "deepspeed"}  # check -> salt.train.strategy kind


def check_sharded(name: str, work: str | Path, device: str = "cuda") -> dict:
    """``fsdp`` / ``zero2``: the prepared update equals plain training; checkpoint save and resume."""
    require_device(device)
    if name == "zero2":
        require_package("deepspeed")
    return sharded_vs_plain(name, toy_path(work), Path(work) / name, SHARDED_KIND[name])


def check_fsdp(work: str | Path, device: str = "cuda") -> dict:
    return check_sharded("fsdp", work, device)


def check_zero2(work: str | Path, device: str = "cuda") -> dict:
    return check_sharded("zero2", work, device)


def plain_twin(trainer: Any, model: Any) -> Any:
    """The trainer's own stages on ``model`` as one plain process (no wrapping, no sharding): the
    reference of the sharded checks. The twin shares the trainer's config, settings, tokenizer and
    timer; it has its own model, optimizer, scheduler (``make_optimizer``) and rollout-engine handle,
    so its weight push leaves the trainer's engine alone."""
    from salt.train.strategy import Single
    from salt.train.update import make_optimizer

    twin = copy.copy(trainer)
    twin.model, twin.strategy, twin.backend = model, Single(), copy.copy(trainer.backend)
    twin.optimizer, twin.scheduler = make_optimizer(model, trainer.cfg, trainer.cfg.train.steps)
    return twin


def sharded_vs_plain(name: str, path: Path, root: Path, expected: str) -> dict:
    """The body of :func:`check_sharded` for a trainer that must run as ``expected`` (``GradientStrategy.kind``):
    the trainer's update stage on the prepared model against the same stage of a plain twin
    (:func:`plain_twin`) on the same rollout batch, then a 3-step run
    against a copy resumed from its step-2 checkpoint. With ``expected="none"`` it runs on CPU."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from salt.train.trainer import Trainer

    shutil.rmtree(root, ignore_errors=True)
    # 8 prompts x 8 rollouts: some group has reward variance (non-zero advantages) on the warm toy model
    cfg = run_config(path, rollout={"prompts_per_step": 8, "group_size": 8}, train={"checkpoint_every": 2, "steps": 3})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, root / "update")
    trainer.setup()
    if trainer.strategy.kind != expected:
        return make_result(name, status="error", reason=f"the trainer runs as {trainer.strategy.kind!r}, not {expected!r}: "
                           "start this check with `accelerate launch --config_file config/accelerate/...`")
    # the first stages of Trainer.step, then its update stage on both: the prepared trainer and a plain twin
    batch, _ = trainer.collect(0)
    batch = trainer.coefficients(trainer.select(batch, 0))
    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(trainer.device)
    twin = plain_twin(trainer, plain)
    p_before, s_before = flat_state(plain.state_dict()), flat_state(_full_params(trainer))
    m_plain = twin.update(batch, 0)
    m_shard = trainer.update(batch, 0)
    d_plain = flat_state(plain.state_dict()) - p_before
    d_shard = flat_state(_full_params(trainer)) - s_before
    numbers: dict[str, Any] = {"update_s": time.perf_counter() - t0, "update_norm_plain": float(d_plain.norm()),
                               "update_norm_sharded": float(d_shard.norm()), "loss_plain": m_plain["train/loss"],
                               "loss_sharded": m_shard["train/loss"],
                               "start_weights_max_abs_diff": float((p_before - s_before).abs().max())}
    comps = [judge(name, k, x) for k, x in (
        ("update_rel_diff", rel_err(d_shard, d_plain)), ("update_cosine", cosine(d_shard, d_plain)),
        ("loss_abs_diff", abs(m_plain["train/loss"] - m_shard["train/loss"])))]
    # checkpoint at step 2 of 3, then resume a copy of the run from it
    t0 = time.perf_counter()
    straight, resumed = root / "straight", root / "resumed"
    Trainer(cfg, straight).run()
    shutil.copytree(straight, resumed)
    straight_files, resumed_files = run_files(straight), run_files(resumed)
    resumed_files["done"].unlink()
    shutil.rmtree(resumed_files["final"])
    rt = Trainer(cfg, resumed)
    rt.run()
    w0 = flat_state(load_file(str(path / "model.safetensors")))
    wa = flat_state(load_file(str(straight_files["final"] / "model.safetensors")))
    wb = flat_state(load_file(str(resumed_files["final"] / "model.safetensors")))
    numbers.update({"resume_s": time.perf_counter() - t0, "run_weight_change": float((wa - w0).norm()),
                    "resume_max_abs_diff": float((wb - wa).abs().max())})
    comps += [judge(name, "resume_started_at", rt.start_step),
              judge(name, "resume_rel_diff", float((wb - wa).norm() / (wa - w0).norm().clamp_min(1e-30)))]
    return make_result(name, comps, numbers)


def check_gram_gpu(work: str | Path, device: str = "cuda", B: int = 16, T: int = 128, V: int = 151936,
                   H: int = 896, repeats: int = 3, dtype: str = "bfloat16", chunk_size: int = 512,
                   sketch_dim: int = 1024) -> dict:
    """LM-head Gram at a Qwen2.5-0.5B head: time vs the head's forward, error vs float64 exact
    (exact in token blocks of ``chunk_size``, the count sketch with ``sketch_dim`` buckets: the
    sizes its budget and tolerance were set for)."""
    import torch

    from salt.algo.gram import lm_head_gram

    dev = require_device(device)
    dt = getattr(torch, dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(B, T, H, generator=gen, device=dev).to(dt)  # (B, T, H)
    W = (torch.randn(V, H, generator=gen, device=dev) * (4.0 / math.sqrt(H))).to(dt)  # (V, H)
    t_fwd, logits = timed(lambda: hidden @ W.T, dev, repeats)  # (B, T, V)
    tokens = torch.empty(B * T, dtype=torch.long, device=dev)
    flat = logits.view(B * T, V)
    for s in range(0, B * T, 256):
        tokens[s:s + 256] = torch.multinomial(torch.softmax(flat[s:s + 256].float(), -1), 1, generator=gen).squeeze(1)
    tokens = tokens.view(B, T)
    mask = torch.ones(B, T, device=dev)
    kw = dict(chunk_size=chunk_size, sketch_dim=sketch_dim)
    t_exact, K_exact = timed(lambda: lm_head_gram(hidden, logits, tokens, mask, 1.0, "exact", **kw), dev, repeats)
    t_sketch, K_sketch = timed(lambda: lm_head_gram(hidden, logits, tokens, mask, 1.0, "sketch", seed=0, **kw), dev,
                               repeats)
    del flat
    ref = lm_head_gram(hidden.double(), logits.double(), tokens, mask, 1.0, "exact", **kw)
    numbers = {"device": str(dev), "B": B, "T": T, "V": V, "H": H, "dtype": dtype, "forward_s": t_fwd,
               "gram_exact_s": t_exact, "gram_sketch_s": t_sketch,
               "gram_exact_vs_forward": t_exact / t_fwd, "gram_sketch_vs_forward": t_sketch / t_fwd}
    if dev.type == "cuda":
        numbers["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    comps = [judge("gram_gpu", "exact_rel_err", rel_err(K_exact.double(), ref)),
             judge("gram_gpu", "sketch_rel_err", rel_err(K_sketch.double(), ref))]
    return make_result("gram_gpu", comps, numbers)


def run_check(name: str, work: str | Path, device: str = "cuda") -> dict:
    """Run check ``name`` (its function in :data:`salt.gpucheck.plan.CHECKS`, the one registry); a
    SkipCheck becomes ``skip``, any other exception ``error`` with its traceback tail."""
    from salt.gpucheck.plan import check_spec
    from salt.utils import resolve_ref

    function = check_spec(name).function
    try:
        return resolve_ref(function)(work, device)
    except SkipCheck as exc:
        return skipped(name, str(exc))
    except Exception as exc:  # the report must say what broke, then the next check runs
        tb = traceback.format_exc().strip().splitlines()
        return make_result(name, status="error", reason=f"{type(exc).__name__}: {exc} | " + " | ".join(tb[-6:]))


def main(argv: list[str] | None = None) -> int:
    from salt.gpucheck.plan import CHECK_NAMES
    from salt.utils import atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m salt.gpucheck.checks", description="run one gpu-check")
    ap.add_argument("name", choices=CHECK_NAMES)
    ap.add_argument("--work", required=True, help="work dir (the toy model lives in WORK/toy_model)")
    ap.add_argument("--result", required=True, help="where the result JSON is written")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu only for bf16_step / gram_gpu / toy_model in tests; never reported as a GPU result")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = run_check(args.name, args.work, args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(args.result, json.dumps(res, indent=1, default=str) + "\n")
    print(json.dumps({k: res[k] for k in ("name", "status", "reason")}), file=sys.stderr)
    return 0 if res["status"] in ("pass", "fail", "skip") else 1


if __name__ == "__main__":
    sys.exit(main())
