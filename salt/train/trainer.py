"""One RL training job: ``salt train --config RUN.yaml --out DIR [--set key.sub=value ...]``.

One step (``Trainer.step``) is a short sequence of doors (pipeline.md); every door has an
identity member, so a baseline and a SALT run execute the same code and log the same metrics:

1. ``allocate``      uniform | VIP: rollouts per prompt.
2. ``collect``       generate, score (``salt.tasks.rewards.score_batch``), overlong shaping,
                     DAPO dynamic sampling (each generation batch draws
                     ``ceil(gen_batch_factor * P)`` prompts; all-equal groups are dropped, the
                     others kept in order until P are filled, refilling from the next generation
                     batch, at most ``max_gen_batches``).
3. ``select``        keep all | PODS: keep ``group_size`` of ``selection.n`` per prompt.
4. ``coefficients``  group advantages, then F-GRPO focal weights (identity: weight 1).
5. ``update``        old log-probs (one no-grad forward), then for ``ppo_epochs`` x mini-batches
                     :func:`update_minibatch`: forward (logits + final hidden states), LM-head
                     Gram from that same forward, SALT decomposition (identity member: SALT off,
                     the original advantages go to the loss but the diagnostics are logged),
                     ``compute_policy_loss``, backward, gradient clipping, optimizer and
                     scheduler step.

Every random draw of step ``s`` is derived from ``(seed, s)`` (:func:`step_seed`), and the data
position, optimizer, scheduler and VIP predictor are checkpointed, so a resumed run repeats an
uninterrupted one number for number on CPU.

Data parallelism: ``accelerate launch --config_file config/accelerate/<ddp|fsdp|deepspeed_*>.yaml``
starts N processes; every rank generates its share of the prompts, the rollout batch is
all-gathered, and each optimizer mini-batch is split into contiguous per-rank slices. With more
than one process (or any Accelerate distributed type other than ``NO``) the model, optimizer and
scheduler go through ``accelerator.prepare`` (DDP, FSDP or DeepSpeed) and
:func:`update_minibatch` uses ``accelerator.backward`` / ``no_sync`` / ``clip_grad_norm_`` (the
DeepSpeed engine's own backward and step); the loss is pre-scaled by the global normaliser times
the world size, so the engines' gradient average equals the single-process update on the same
global batch. With ``algorithm.salt.scope: global`` the Gram is built from features gathered from
all ranks (identical for 1 or N processes). Generation and ``save_pretrained`` use the unwrapped
model; full weights for saving come from ``accelerator.get_state_dict`` and, for a colocated vLLM
engine on every rank under FSDP / ZeRO-3, from :func:`gather_full_state`. One process on CPU uses
the model as is (no wrapper). DDP is tested on CPU (gloo, ``tests/train/test_ddp.py``); Accelerate
enables FSDP and DeepSpeed on GPUs only, so those paths are not exercised by the CPU test-suite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from salt.train.batch import RolloutBatch, TensorBatch, to_tensors
from salt.train.config import ConfigError, RunConfig, flatten, load_run_config, save_resolved

TIMING_PREFIX = "time/"

# ----------------------------------------------------------------------------------- utilities


def step_seed(seed: int, step: int, purpose: str = "") -> int:
    """A 62-bit seed derived from (seed, step, purpose): the only source of randomness of a step."""
    digest = hashlib.sha256(f"salt|{int(seed)}|{int(step)}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group (1, 0 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_reduce_sum(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` over ranks in place (``op``: sum | max; no-op for one process); returns it.

    CPU tensors are moved to the current CUDA device for NCCL, which only reduces GPU tensors.
    """
    import torch.distributed as dist

    if world()[0] > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        buf = t.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf.to(t.device))
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors along dim 0 in rank order (row counts may differ)."""
    import torch.distributed as dist

    W, _ = world()
    if W == 1:
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(W)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    width = max(sizes_i)
    pad = t.new_zeros((width - t.shape[0],) + tuple(t.shape[1:]))
    buf = [t.new_zeros((width,) + tuple(t.shape[1:])) for _ in range(W)]
    dist.all_gather(buf, torch.cat([t, pad], dim=0).contiguous())
    return torch.cat([b[:s] for b, s in zip(buf, sizes_i)], dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    import torch.distributed as dist

    W, _ = world()
    if W == 1:
        return [obj]
    out: list[Any] = [None] * W
    dist.all_gather_object(out, obj)
    return out


def rank_slice(n: int, world_size: int, rank: int) -> slice:
    """Contiguous share of ``n`` rows for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def micro_slices(n: int, micro: int) -> list[slice]:
    return [slice(i, min(i + micro, n)) for i in range(0, n, micro)]


class Timer:
    """Accumulates wall time per key (``time/<key>``)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[TIMING_PREFIX + key] = self.t.get(TIMING_PREFIX + key, 0.0) + time.perf_counter() - t0


def mean_metrics(items: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in items for k in m})
    out = {}
    for k in keys:
        vals = [m[k] for m in items if k in m]
        out[k] = float(sum(vals) / len(vals))
    return out


# ------------------------------------------------------------------------------------- data


def load_rows(spec: str, cfg: RunConfig, n_toy: int | None = None) -> list[dict]:
    """Rows from a JSONL path or ``toy:<split>`` (``n_toy`` rows, default ``data.toy_rows``, of
    ``data.toy_levels``, generated in-process with data seed ``cfg.seed``; the held-out ``toy:test``
    split uses data seed 0 so that every run is scored on the same problems)."""
    if spec.startswith("toy:"):
        from salt.tasks.toy import generate_problems

        split = spec.split(":", 1)[1]
        return generate_problems(n_toy or cfg.data.toy_rows, split, seed=0 if split == "test" else cfg.seed,
                                 levels=tuple(cfg.data.toy_levels))
    from salt.utils import read_jsonl

    rows = read_jsonl(spec)
    if not rows:
        raise ValueError(f"{spec} holds no rows; regenerate it with `salt prepare-data`")
    for i, row in enumerate(rows):
        if "prompt" not in row or "task" not in row:
            raise ValueError(f"{spec} row {row.get('id', i)!r} lacks 'prompt' or 'task' (schema in ARCHITECTURE.md)")
    return rows


class PromptSampler:
    """Endless seeded stream of rows: pass e uses permutation(seed, e); state = position."""

    def __init__(self, rows: list[dict], seed: int, shuffle: bool = True) -> None:
        self.rows, self.seed, self.shuffle, self.position = rows, int(seed), shuffle, 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, "data"))
                self._perm = torch.randperm(len(self.rows), generator=g).tolist()
            else:
                self._perm = list(range(len(self.rows)))
            self._perm_epoch = epoch
        return self._perm

    def take(self, k: int) -> list[dict]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[i]])
            self.position += 1
        return out


# ---------------------------------------------------------------------------------- forward


@dataclass
class ForwardOut:
    logp: torch.Tensor  # (b, T) log-probs of the sampled tokens at temperature T
    entropy: torch.Tensor  # (b, T)
    hidden: torch.Tensor | None  # (b, T, H) final hidden state (LM-head input), detached
    logits: torch.Tensor | None  # (b, T, V) detached


def policy_forward(model: Any, tb: TensorBatch, temperature: float, with_features: bool = True,
                   entropy_grad: bool = False) -> ForwardOut:
    """One forward of the policy over ``tb`` (layout in :mod:`salt.train.batch`).

    The logits of the response positions come from the same pass as the final hidden states
    (``hidden_states[-1]``, after the last norm), so the Gram needs no second forward.
    """
    T = tb.tokens.shape[1]
    out = model(
        input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
        output_hidden_states=with_features, logits_to_keep=T + 1, use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # (b, T, V): position Lp-1+t predicts token t
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (b, T, V)
    logp = logp_all.gather(-1, tb.tokens.unsqueeze(-1)).squeeze(-1)  # (b, T)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (b, T)
    hidden = None
    if with_features:
        hidden = out.hidden_states[-1][:, -(T + 1):-1, :].detach()  # (b, T, H)
    return ForwardOut(logp=logp, entropy=entropy, hidden=hidden, logits=logits.detach() if with_features else None)


@torch.no_grad()
def compute_logprobs(model: Any, tb: TensorBatch, temperature: float, micro: int) -> torch.Tensor:
    """(N, T) log-probs of ``tb.tokens`` under ``model`` (no grad, micro-batched)."""
    parts = [policy_forward(model, tb.index(s), temperature, with_features=False).logp for s in micro_slices(len(tb), micro)]
    return torch.cat(parts, dim=0) if parts else tb.mask.new_zeros(tb.mask.shape)


# ------------------------------------------------------------------------ model-level coefficients


@dataclass
class UpdateSpec:
    """What :func:`update_minibatch` needs besides the model and the batch."""

    loss_cfg: Any  # salt.algo.losses.LossConfig
    temperature: float
    micro_batch_size: int
    max_grad_norm: float
    salt_enabled: bool
    salt_diagnostics: bool
    gram: str
    scope: str
    chunk_size: int
    sketch_dim: int
    salt_options: dict = field(default_factory=dict)
    gram_options: dict = field(default_factory=dict)  # tol, support_eps, tail_dim of the support Gram

    @staticmethod
    def from_config(cfg: RunConfig) -> "UpdateSpec":
        from salt.algo.losses import LossConfig

        loss = dict(cfg.algorithm.loss)
        loss_cfg = LossConfig(**loss)
        if loss_cfg.agg_mode == "seq-mean-token-sum-norm" and loss_cfg.norm_len is None:
            loss_cfg.norm_len = cfg.rollout.max_new_tokens  # Dr. GRPO: the generation budget
        s = cfg.algorithm.salt
        return UpdateSpec(
            loss_cfg=loss_cfg, temperature=cfg.rollout.temperature, micro_batch_size=cfg.train.micro_batch_size,
            max_grad_norm=cfg.train.max_grad_norm, salt_enabled=s.enabled, salt_diagnostics=s.diagnostics,
            gram=s.gram, scope=s.scope, chunk_size=s.chunk_size, sketch_dim=s.sketch_dim,
            salt_options=dict(s.options),
            gram_options=dict(tol=s.gram_tol, support_eps=s.support_eps, tail_dim=s.tail_dim),
        )


def _gram(hidden: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
          spec: UpdateSpec, seed: int, gather: bool, info: dict | None = None) -> torch.Tensor:
    """LM-head Gram (B, B) of the rows given, gathered over ranks when ``gather`` is set.
    ``info`` (a dict) receives the backend's ``err_bound`` (relative Frobenius error bound)."""
    from salt.algo.geometry import choose_method, gram_from_features, lm_head_gram, rollout_features

    W, _ = world()
    method = spec.gram
    if method == "auto":  # decided on global sizes so that every rank picks the same backend
        n = torch.tensor([float(mask.sum()), float(mask.shape[0])], dtype=torch.float64)
        if gather:
            all_reduce_sum(n)
        method = choose_method(int(n[0]), logits.shape[-1], hidden.shape[-1], int(n[1]),
                               chunk_size=spec.chunk_size, sketch_dim=spec.sketch_dim)
    kw = dict(chunk_size=spec.chunk_size, sketch_dim=spec.sketch_dim, seed=seed, **spec.gram_options)
    lm = "auto" if spec.gram == "auto" else method  # auto may still switch support -> exact on the batch
    if not gather or W == 1:
        return lm_head_gram(hidden, logits, tokens, mask, spec.temperature, lm, info=info, **kw)
    if method in ("exact", "support"):  # token-level inputs (support: one shared vocabulary set)
        return lm_head_gram(all_gather_rows(hidden), all_gather_rows(logits), all_gather_rows(tokens),
                            all_gather_rows(mask), spec.temperature, lm, info=info, **kw)
    if info is not None:
        info.update(method=method, err_bound=float("nan") if method == "sketch" else 0.0)
    kw = {k: kw[k] for k in ("chunk_size", "sketch_dim", "seed")}
    feats = rollout_features(hidden, logits, tokens, mask, spec.temperature, method, **kw)  # (b, F)
    feats = all_gather_rows(feats)  # (B, F)
    return gram_from_features(feats)


def _with_err_bound(gm: dict, info: dict) -> dict:
    """gm plus ``geom/gram_err_bound`` (the Gram backend's relative Frobenius error bound: 0 for
    exact/dense; the count sketch has no bound and logs none)."""
    b = info.get("err_bound", float("nan"))
    return {**gm, "geom/gram_err_bound": float(b)} if math.isfinite(b) else gm


def salt_coefficients(K: torch.Tensor | None, advantages: torch.Tensor, group_ids: torch.Tensor,
                      spec: UpdateSpec, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The model-level coefficient door: SALT's A_final, or A itself (identity) with diagnostics."""
    if K is None:
        return advantages, {}
    from salt.algo.decomposition import SaltConfig, decompose
    from salt.algo.geometry import group_geometry

    opts = {"seed": seed, **spec.salt_options}
    res = decompose(K, advantages, SaltConfig(**opts))
    metrics = dict(res.metrics)
    metrics.update(group_geometry(K, group_ids, advantages))
    coef = res.advantages.to(advantages.dtype) if spec.salt_enabled else advantages
    return coef, metrics


def _loss_weight(mask: torch.Tensor, agg_mode: str) -> float:
    """The share of the global loss normaliser a set of rows carries."""
    return float(mask.sum()) if agg_mode == "token-mean" else float(mask.shape[0])


def master_dtype(setting: str) -> torch.dtype:
    """``model.dtype`` -> the parameters' dtype: fp32 master weights unless asked otherwise (bf16 weights
    lose small AdamW updates to rounding; bf16 compute comes from ``model.mixed_precision``)."""
    return getattr(torch, "float32" if setting == "auto" else setting)


def resolve_mixed_precision(setting: str) -> str | None:
    """``model.mixed_precision`` -> Accelerator's argument (None: keep what ``accelerate launch`` set)."""
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    return "bf16" if torch.cuda.is_available() else "no"


def dist_kind(accelerator: Any) -> str:
    """How gradients meet across ranks for a model that went through ``accelerator.prepare``.

    ``none``: no accelerator, or Accelerate's ``DistributedType.NO`` (one process, the model is
    used as is); ``ddp``: ``MULTI_CPU`` / ``MULTI_GPU`` / ``MULTI_*`` (DistributedDataParallel);
    ``fsdp``: ``FSDP`` (v1 or v2); ``deepspeed``: ``DEEPSPEED`` (ZeRO 1-3).
    """
    if accelerator is None:
        return "none"
    from accelerate.utils import DistributedType

    dt = accelerator.distributed_type
    if dt == DistributedType.NO:
        return "none"
    if dt == DistributedType.FSDP:
        return "fsdp"
    if dt == DistributedType.DEEPSPEED:
        return "deepspeed"
    if str(getattr(dt, "value", dt)).startswith("MULTI_"):
        return "ddp"
    raise ValueError(f"accelerate distributed_type {dt} is not supported by `salt train`; launch with one of "
                     "config/accelerate/{cpu,ddp,fsdp,deepspeed_zero2,deepspeed_zero3}.yaml")


def _average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every parameter's gradient over ranks (one flat buffer; DDP's own reduction, by hand)."""
    W, _ = world()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
    all_reduce_sum(flat)
    flat /= W
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off: off + n].view_as(p).clone()
        off += n


def update_minibatch(model: Any, optimizer: Any, scheduler: Any, mb: TensorBatch, spec: UpdateSpec,
                     seed: int, timer: Timer | None = None, coef_out: list | None = None,
                     accelerator: Any = None, gram_out: dict | None = None) -> dict[str, float]:
    """One optimizer step on the GLOBAL mini-batch ``mb`` (every rank passes the same ``mb``).

    Each rank forwards its contiguous slice in micro-batches, builds the Gram (scope ``global``:
    from features of all ranks; ``micro``: per micro-batch), turns advantages into coefficients,
    and backpropagates the loss scaled by its share of the global normaliser. The result equals
    the single-process step on ``mb``.

    How the gradients of the ranks meet depends on ``accelerator`` (see :func:`dist_kind`):

    * ``none`` (no accelerator / one process): plain ``backward``; with an initialised process
      group (a raw, unprepared model) the pre-scaled gradients are summed by hand.
    * ``ddp`` / ``fsdp`` / ``deepspeed``: ``model``, ``optimizer`` and ``scheduler`` must be the
      objects returned by ``accelerator.prepare``. These engines AVERAGE gradients over ranks, so
      the loss is also multiplied by the world size. Every rank runs the same number of
      forwards and backwards (ranks with fewer micro-batches add zero-weight one-row passes:
      FSDP all-gathers, ZeRO-3 fetches and DDP buffer broadcasts are collectives). All but the
      last backward run under ``accelerator.no_sync`` (DDP, FSDP) or outside a DeepSpeed
      accumulation boundary, then ``accelerator.clip_grad_norm_`` and the optimizer step
      (DeepSpeed: ``engine.step()``, clipping from the DeepSpeed config's ``gradient_clipping``,
      which the trainer sets to ``train.max_grad_norm``). DDP arms its reducer in the forward, so
      with scope ``global`` and several micro-batches per rank (all forwards precede the first
      backward) the passes run under ``no_sync`` and the gradients are averaged explicitly
      (:func:`_average_gradients`), which is DDP's reduction done once by hand.

    ``coef_out``, when given, receives the coefficients that went to the loss: for scope
    ``global`` one (len(mb),) tensor for the whole mini-batch, for ``micro`` one per micro-batch.

    ``gram_out``, when given (an empty dict) and the Gram is built (SALT on or diagnostics), is
    filled with the first Gram of this call, on CPU: ``gram`` (B, B) float64, ``positions`` (B,)
    the rows of ``mb`` it covers, ``advantages`` (B,), ``advantages_final`` (B,) the coefficients
    that went to the loss, ``group_ids`` (B,). Scope ``global``: the whole mini-batch (B =
    len(mb)); ``micro``: this rank's first micro-batch. It only copies tensors (no RNG is used).

    Returns:
        metrics: loss metrics (``train/*``, weighted means over the mini-batch), ``salt/*`` and
        ``geom/*`` (means over Grams), ``train/update_norm`` (pre-clip gradient norm).
    """
    timer = timer or Timer()
    kind = dist_kind(accelerator)
    W, rank = world()
    device = next(model.parameters()).device
    agg = spec.loss_cfg.agg_mode
    total_weight = _loss_weight(mb.mask, agg)
    local = mb.index(rank_slice(len(mb), W, rank)).to(device)
    if len(local) == 0:
        raise ValueError(f"mini-batch of {len(mb)} rollouts cannot feed {W} ranks; raise prompts per mini-batch")
    micros = micro_slices(len(local), spec.micro_batch_size)
    n_pad = 0
    grad_scale = 1.0
    if kind != "none":
        first = rank_slice(len(mb), W, 0)  # rank 0 holds the largest slice
        n_pad = len(micro_slices(first.stop - first.start, spec.micro_batch_size)) - len(micros)
        grad_scale = float(W)  # DDP / FSDP / DeepSpeed average over ranks: undo the 1/W
    n_passes = len(micros) + n_pad
    ddp_by_hand = kind == "ddp" and spec.scope == "global" and n_passes > 1
    diagnostics = spec.salt_enabled or spec.salt_diagnostics
    want_entropy_grad = spec.loss_cfg.entropy_coef > 0
    model.train()
    loss_metrics: list[tuple[float, float, dict[str, float]]] = []  # (loss weight, tokens, metrics)
    geo_metrics: list[dict[str, float]] = []

    def no_sync(i: int) -> Any:
        """Context of pass ``i``: gradients are synchronised only by the last pass."""
        if kind in ("ddp", "fsdp") and (ddp_by_hand or i < n_passes - 1):
            return accelerator.no_sync(model)
        return contextlib.nullcontext()

    def backward(loss: torch.Tensor, i: int) -> None:
        if kind == "none":
            loss.backward()
        elif kind == "deepspeed":  # the engine owns backward; the last pass closes the accumulation
            model.set_gradient_accumulation_boundary(i == n_passes - 1)
            model.backward(loss)
        else:
            accelerator.backward(loss)

    def loss_backward(part: TensorBatch, fwd: ForwardOut, coef: torch.Tensor, i: int) -> None:
        from salt.algo.losses import compute_policy_loss

        # old_logp None: one on-policy pass (see Trainer.update), the sampling policy is this one
        old = part.old_logp if part.old_logp is not None else fwd.logp.detach()
        loss, m = compute_policy_loss(
            spec.loss_cfg, fwd.logp, old, coef, part.mask,
            ref_logp=part.ref_logp, entropy=fwd.entropy,
        )
        w = _loss_weight(part.mask, agg)
        m["loss"] = float(loss.detach())
        loss_metrics.append((w, float(part.mask.sum()), m))
        with timer("backward"):
            if kind == "none":
                (loss * (w / total_weight)).backward()
            else:
                backward(loss * (w / total_weight * grad_scale), i)

    def pad_pass(i: int, fwd: ForwardOut | None = None) -> None:
        """A zero-weight pass over one local row: keeps the ranks' collectives in step."""
        from salt.algo.losses import compute_policy_loss

        part = local.index(slice(0, 1))
        if fwd is None:
            with timer("forward"):
                fwd = policy_forward(model, part, spec.temperature, False, want_entropy_grad)
        old = part.old_logp if part.old_logp is not None else fwd.logp.detach()
        loss, _ = compute_policy_loss(spec.loss_cfg, fwd.logp, old, part.advantages, part.mask,
                                      ref_logp=part.ref_logp, entropy=fwd.entropy)
        with timer("backward"):
            backward(loss * 0.0, i)

    if spec.scope == "global":
        outs = []
        pads = []
        with timer("forward"):
            for k in range(n_passes):  # DDP by hand: no pass may arm the reducer (see the docstring)
                part = local.index(micros[k]) if k < len(micros) else local.index(slice(0, 1))
                with (accelerator.no_sync(model) if ddp_by_hand else contextlib.nullcontext()):
                    o = policy_forward(model, part, spec.temperature, diagnostics and k < len(micros), want_entropy_grad)
                (outs if k < len(micros) else pads).append(o)
        coef = local.advantages
        if diagnostics:
            with timer("gram"):
                K = _gram(torch.cat([o.hidden for o in outs]), torch.cat([o.logits for o in outs]),
                          local.tokens, local.mask, spec, seed, gather=True, info=(ginfo := {}))
            with timer("decompose"):
                coef_all, gm = salt_coefficients(K, mb.advantages.to(K.device), mb.group_ids.to(K.device), spec, seed)
            geo_metrics.append(_with_err_bound(gm, ginfo))
            coef = coef_all[rank_slice(len(mb), W, rank)].to(local.advantages.dtype)
            if coef_out is not None:
                coef_out.append(coef_all.detach().cpu())
            if gram_out is not None and not gram_out:
                gram_out.update(_gram_record(K, torch.arange(len(mb)), mb.advantages, coef_all, mb.group_ids))
        for i, (s, o) in enumerate(zip(micros, outs)):
            with no_sync(i):
                loss_backward(local.index(s), o, coef[s], i)
        for j, o in enumerate(pads):
            with no_sync(len(micros) + j):
                pad_pass(len(micros) + j, o)
        del outs, pads
    else:  # micro: one Gram per micro-batch per rank, memory bounded by the micro-batch
        for i, s in enumerate(micros):
            part = local.index(s)
            with no_sync(i):
                with timer("forward"):
                    o = policy_forward(model, part, spec.temperature, diagnostics, want_entropy_grad)
                coef = part.advantages
                if diagnostics:
                    with timer("gram"):
                        K = _gram(o.hidden, o.logits, part.tokens, part.mask, spec, seed, gather=False,
                                  info=(ginfo := {}))
                    with timer("decompose"):
                        coef, gm = salt_coefficients(K, part.advantages, part.group_ids, spec, seed)
                    geo_metrics.append(_with_err_bound(gm, ginfo))
                    if coef_out is not None:
                        coef_out.append(coef.detach().cpu())
                    if gram_out is not None and not gram_out:
                        start = rank_slice(len(mb), W, rank).start
                        pos = torch.arange(s.start, s.stop) + start  # (b,) rows of mb
                        gram_out.update(_gram_record(K, pos, part.advantages, coef, part.group_ids))
                loss_backward(part, o, coef, i)
        for j in range(n_pad):
            with no_sync(len(micros) + j):
                pad_pass(len(micros) + j)

    with timer("optimizer"):
        max_norm = spec.max_grad_norm if spec.max_grad_norm > 0 else float("inf")
        if kind == "none":
            params = [p for p in model.parameters() if p.requires_grad]
            if W > 1:  # a raw model in a process group: sum the pre-scaled gradients, one flat buffer
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                all_reduce_sum(flat)
                off = 0
                for p in params:
                    n = p.numel()
                    p.grad = flat[off: off + n].view_as(p).clone()
                    off += n
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        elif kind == "deepspeed":  # clipping, optimizer step and zero_grad inside the engine
            model.step()
            gn = model.get_global_grad_norm()
            norm = torch.tensor(float("nan") if gn is None else float(gn))
            scheduler.step()  # our LambdaLR is not a DeepSpeed scheduler: Accelerate leaves it to us
        else:
            params = list(model.parameters())  # FSDP's clip_grad_norm_ matches the model's full list
            if ddp_by_hand:
                _average_gradients([p for p in params if p.requires_grad])
            norm = accelerator.clip_grad_norm_(params, max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    # loss metrics over micro-batches and ranks: the loss values weighted by their share of the
    # loss normaliser, every other metric (a masked token mean) by its token count
    keys = sorted({k for _, _, m in loss_metrics for k in m})
    by_loss_weight = {"loss", "pg_loss"}
    buf = torch.zeros(len(keys) + 2, dtype=torch.float64)
    for w, ntok, m in loss_metrics:
        buf[-2] += w
        buf[-1] += ntok
        for j, k in enumerate(keys):
            buf[j] += (w if k in by_loss_weight else ntok) * m.get(k, 0.0)
    all_reduce_sum(buf)
    metrics = {f"train/{k}": float(buf[j] / (buf[-2] if k in by_loss_weight else buf[-1]).clamp_min(1e-12))
               for j, k in enumerate(keys)}
    for k in [k for k in keys if k.endswith("_max")]:  # maxima are reduced with max, not averaged
        mx = torch.tensor([max(m.get(k, float("-inf")) for _, _, m in loss_metrics)], dtype=torch.float64)
        metrics[f"train/{k}"] = float(all_reduce_sum(mx, op="max"))
    if spec.scope == "micro" and W > 1 and geo_metrics:
        gkeys = sorted(geo_metrics[0])
        g = torch.tensor([sum(m[k] for m in geo_metrics) for k in gkeys] + [len(geo_metrics)], dtype=torch.float64)
        all_reduce_sum(g)
        metrics.update({k: float(g[j] / g[-1]) for j, k in enumerate(gkeys)})
    else:
        metrics.update(mean_metrics(geo_metrics))
    metrics["train/update_norm"] = float(norm)
    metrics["train/lr"] = float(scheduler.get_last_lr()[0])
    return metrics


def _gram_record(K: torch.Tensor, positions: torch.Tensor, advantages: torch.Tensor, coef: torch.Tensor,
                 group_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached CPU copies of one Gram (B, B) and its (B,) row data (for ``train.dump_gram_steps``)."""
    return {
        "gram": K.detach().to("cpu", torch.float64).clone(),
        "positions": positions.detach().cpu().long().clone(),
        "advantages": advantages.detach().to("cpu", torch.float64).clone(),
        "advantages_final": coef.detach().to("cpu", torch.float64).clone(),
        "group_ids": group_ids.detach().cpu().long().clone(),
    }


def write_gram_dump(path: str | os.PathLike, record: dict[str, torch.Tensor], rewards: torch.Tensor | None) -> Path:
    """Write ``record`` (from :func:`update_minibatch`'s ``gram_out``) as an ``.npz`` atomically.

    Arrays: ``gram`` (B, B) float64, ``advantages`` (B,), ``advantages_final`` (B,) float64,
    ``group_ids`` (B,) int64 and, when given, ``rewards`` (B,) float64.
    """
    import io

    import numpy as np

    from salt.utils import atomic_write_bytes

    arrays = {k: record[k].numpy() for k in ("gram", "advantages", "advantages_final", "group_ids")}
    if rewards is not None:
        arrays["rewards"] = rewards.detach().to("cpu", torch.float64).numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _zero_stage(accelerator: Any) -> int:
    """DeepSpeed ZeRO stage of the accelerator's plugin (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0) or 0)


def gather_full_state(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of a prepared ``model`` on EVERY rank (a collective).

    FSDP v2: each ``DTensor`` entry of the state dict is materialised with ``full_tensor()``
    (one all-gather per tensor, in the same order on every rank); FSDP v1: a ``FULL_STATE_DICT``
    with ``rank0_only=False``; DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters`` per
    parameter; anything else (DDP, ZeRO-1/2, one process): the unwrapped model's ``state_dict``.
    Unlike ``accelerator.get_state_dict`` (full weights on rank 0 only under FSDP v2 / ZeRO-3),
    this feeds a colocated vLLM engine on every rank. Runs on GPU clusters only: it is not
    exercised by the CPU test-suite.
    """
    kind = dist_kind(accelerator)
    bare = accelerator.unwrap_model(model)
    if kind == "fsdp":
        if getattr(accelerator, "is_fsdp2", False):
            from torch.distributed.tensor import DTensor

            return {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in model.state_dict().items()}
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType

        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
            return model.state_dict()
    if kind == "deepspeed" and _zero_stage(accelerator) == 3:
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, p in bare.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                out[name] = p.data.detach().clone()
        for name, b in bare.named_buffers():
            out[name] = b.detach()
        return out
    return bare.state_dict()


class _StateView:
    """An object whose ``state_dict()`` is a given dict (hands gathered weights to a backend, or
    a pointer to the sharded Accelerate state to the checkpoint writer)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def make_optimizer(model: Any, cfg: RunConfig, total_updates: int) -> tuple[Any, Any]:
    """AdamW (or SGD) and a LambdaLR: linear warm-up, then constant / cosine / linear decay."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

    def factor(i: int) -> float:
        if t.warmup_steps and i < t.warmup_steps:
            return (i + 1) / t.warmup_steps
        if t.scheduler == "constant":
            return 1.0
        span = max(1, total_updates - t.warmup_steps)
        frac = min(1.0, (i - t.warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * frac)) if t.scheduler == "cosine" else 1.0 - frac

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------------------------- trainer


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def ensure_model(cfg: RunConfig) -> None:
    """Build the warm-up model when ``model.path`` is missing and ``model.warmup_if_missing`` is set."""
    path = Path(cfg.model.path)
    if (path / "config.json").is_file():
        return
    if cfg.model.warmup_if_missing is None:
        raise ConfigError(f"model.path = '{path}' does not exist; build it with `salt sft` or set model.warmup_if_missing")
    if int(os.environ.get("RANK", "0")) != 0:  # data parallel: rank 0 builds it, the others wait
        deadline = time.time() + 6 * 3600
        while not (path / "config.json").is_file():
            if time.time() > deadline:
                raise TimeoutError(f"rank {os.environ['RANK']}: '{path}' did not appear; did rank 0's warm-up fail?")
            time.sleep(2.0)
        return
    from salt.train import sft

    out_dir = path.parent if path.name == "final" else path
    sft.run_sft(dict(cfg.model.warmup_if_missing), out_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.warmup_if_missing ran sft into '{out_dir}' but '{path}' still has no config.json; "
            "set model.path to the sft output's final/ dir"
        )


def check_sandbox(cfg: RunConfig) -> dict | None:
    """Fail closed at start-up, before any model is loaded: code rows in data.train / data.eval
    need the code sandbox's isolation or ``sandbox.allow_unisolated: true`` (else
    :class:`salt.tasks.sandbox.SandboxIsolationError`)."""
    from salt.tasks.rewards import check_code_sandbox
    from salt.utils import read_jsonl

    specs = [s for s in (cfg.data.train, cfg.data.eval) if s and not str(s).startswith("toy:") and Path(s).is_file()]
    return check_code_sandbox([row for spec in specs for row in read_jsonl(spec)], cfg.sandbox.allow_unisolated)


def gen_batch_prompts(cfg: RunConfig) -> int:
    """Prompts drawn per generation batch: ``ceil(gen_batch_factor * P)`` with dynamic sampling
    (a 1e-9 tolerance keeps e.g. 1.1 * 10 at 11), else ``P``."""
    P = cfg.rollout.prompts_per_step
    ds = cfg.algorithm.dynamic_sampling
    if not ds.enabled:
        return P
    return max(P, math.ceil(ds.gen_batch_factor * P - 1e-9))


class Trainer:
    """Holds the run's state; :meth:`run` is the loop, :meth:`step` one policy iteration."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.timer = Timer()

    # -------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from salt.rollout import make_backend

        cfg = self.cfg
        # the scheduler is stepped once per optimizer step on every rank (no num_processes multiple)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False,
                                       mixed_precision=resolve_mixed_precision(cfg.model.mixed_precision))
        self.kind = dist_kind(self.accelerator)
        self.device = self.accelerator.device
        if self.device.type == "cpu" and cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.world, self.rank = world()
        self.is_main = self.rank == 0
        self.dtype = master_dtype(cfg.model.dtype)
        self.spec = UpdateSpec.from_config(cfg)
        if self.spec.loss_cfg.beta > 0 and self.sharded:
            raise ConfigError(
                "algorithm.loss.beta > 0 needs a reference model, which salt keeps replicated on every rank; "
                "under FSDP / DeepSpeed ZeRO-3 it would be loaded sharded (meta / partitioned weights). "
                "Set algorithm.loss.beta: 0, or launch with config/accelerate/ddp.yaml or deepspeed_zero2.yaml")
        if self.sharded and cfg.rollout.backend == "hf":
            self._check_sharded_hf_generation()
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=self.dtype)
        if not any(p.is_meta for p in self.model.parameters()):
            # FSDP's cpu_ram_efficient_loading leaves ranks > 0 on the meta device: prepare places them
            self.model = self.model.to(self.device)
        if cfg.model.gradient_checkpointing:  # non-reentrant: required by DDP's no_sync / FSDP
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.config.use_cache = False
        self.ref_model = None
        if self.spec.loss_cfg.beta > 0:  # the reference model exists only when it is used
            self.ref_model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=self.dtype).to(self.device)
            self.ref_model.eval().requires_grad_(False)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        total_updates = cfg.train.steps * cfg.train.ppo_epochs * cfg.num_mini_batches
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, total_updates)
        if self.kind != "none":  # DDP / FSDP / DeepSpeed: wrapped by Accelerate (see update_minibatch)
            self._prepare()
        elif self.accelerator.mixed_precision != "no":  # one process: only the autocast forward wrapper
            self.model = self.accelerator.prepare_model(self.model)
        if cfg.rollout.backend == "vllm" and self.sharded:
            # weights reach vLLM through gather_full_state (every rank), not get_state_dict (rank 0 only)
            self.backend = make_backend(cfg.rollout, self.accelerator.unwrap_model(self.model), self.tokenizer, None)
        else:
            self.backend = make_backend(cfg.rollout, self.model, self.tokenizer, self.accelerator)
        self.sampler = PromptSampler(load_rows(cfg.data.train, cfg), cfg.seed, cfg.data.shuffle)
        self.eval_rows = load_rows(cfg.data.eval, cfg, cfg.data.eval_limit)[: cfg.data.eval_limit] if cfg.data.eval else None
        self.predictor = None
        if cfg.algorithm.vip.enabled:
            from salt.algo.allocation import SuccessPredictor

            v = cfg.algorithm.vip
            self.predictor = SuccessPredictor(max_history=v.history, prior_mean=v.prior_mean, acc_clip=v.acc_clip,
                                              pin_observed=v.pin_observed)
        self.step_idx = 0
        self.rollouts_used = 0
        self.rollouts_generated = 0
        self.metrics_lines = 0

    @property
    def sharded(self) -> bool:
        """Parameters are sharded across ranks (FSDP, DeepSpeed ZeRO-3): full weights need a gather."""
        return self.kind == "fsdp" or (self.kind == "deepspeed" and _zero_stage(self.accelerator) == 3)

    def _check_sharded_hf_generation(self) -> None:
        """Under FSDP / ZeRO-3 every forward is a collective, so with ``rollout.backend: hf`` all
        ranks must issue the same ``generate`` calls (HF's ``synced_gpus`` only evens out lengths)."""
        cfg, W = self.cfg, self.world
        problems = []
        if cfg.rollout.prompts_per_step % W:
            problems.append(f"rollout.prompts_per_step = {cfg.rollout.prompts_per_step} is not divisible by the "
                            f"{W} processes")
        elif gen_batch_prompts(cfg) % W:
            problems.append(f"ceil(algorithm.dynamic_sampling.gen_batch_factor * prompts_per_step) = "
                            f"{gen_batch_prompts(cfg)} is not divisible by the {W} processes")
        if cfg.algorithm.vip.enabled:
            problems.append("algorithm.vip.enabled gives the ranks different rollout counts")
        if cfg.data.eval and cfg.train.eval_every and cfg.data.eval_limit % W:
            problems.append(f"data.eval_limit = {cfg.data.eval_limit} is not divisible by the {W} processes")
        if problems:
            raise ConfigError("rollout.backend: hf under FSDP / DeepSpeed ZeRO-3 needs the same generate calls on "
                              "every rank: " + "; ".join(problems) + ". Fix those keys or use rollout.backend: vllm")

    def _prepare(self) -> None:
        """``accelerator.prepare(model, optimizer, scheduler)`` for DDP, FSDP and DeepSpeed.

        DeepSpeed takes its micro-batch size and its gradient clipping from its own config: they
        are set from ``train.micro_batch_size`` and ``train.max_grad_norm`` here (0 = no clipping).
        """
        acc = self.accelerator
        if self.kind == "deepspeed":
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = int(self.cfg.train.micro_batch_size)
            ds["gradient_clipping"] = float(self.cfg.train.max_grad_norm)
        self.model, self.optimizer, self.scheduler = acc.prepare(self.model, self.optimizer, self.scheduler)

    def unwrapped(self) -> Any:
        """The bare ``PreTrainedModel`` (generation, ``save_pretrained``)."""
        return self.accelerator.unwrap_model(self.model) if self.kind != "none" else self.model

    def sync_rollout_weights(self) -> None:
        """Push the current weights to the rollout engine (vLLM; a no-op reference update for hf).

        Under FSDP / ZeRO-3 every rank's colocated vLLM engine needs the FULL weights, while
        ``accelerator.get_state_dict`` returns them on rank 0 only: they are gathered on every rank
        by :func:`gather_full_state` and handed over as a plain state dict.
        """
        if self.cfg.rollout.backend == "vllm" and self.sharded:
            self.backend.sync_weights(_StateView(gather_full_state(self.accelerator, self.model)))
        else:
            self.backend.sync_weights(self.model)

    # --------------------------------------------------------------------------- doors
    def allocate(self, rows: list[dict]) -> list[int]:
        """Allocation door: rollouts per prompt (uniform, or VIP from predicted success)."""
        cfg = self.cfg
        if self.predictor is None:
            return [cfg.generate_n] * len(rows)
        from salt.algo.allocation import allocate_rollouts, embed_prompts, published_allocation

        v = cfg.algorithm.vip
        emb = embed_prompts([r["prompt"] for r in rows], backend=v.embedding)
        p = self.predictor.predict(emb)
        if v.allocation == "published":
            n = published_allocation(p, cfg.vip_budget(), lower=v.lower, upper=v.upper, rule=v.rule, gamma=v.gamma)
        else:
            n = allocate_rollouts(p, cfg.vip_budget(), lower=v.lower, upper=v.upper, rule=v.rule)
        self._vip_cache = (emb, p)
        return [int(x) for x in n.tolist()]

    def generate(self, rows: list[dict], counts: list[int], seed: int) -> RolloutBatch:
        """Generate ``counts[j]`` rollouts for ``rows[j]`` and score them (this rank's share, then gathered)."""
        from salt.tasks.prompts import build_prompt
        from salt.tasks.rewards import score_batch

        cfg = self.cfg
        mine = list(range(len(rows)))[self.rank:: self.world] if self.world > 1 else list(range(len(rows)))
        recs: list[dict] = []
        with self.timer("generate"):
            by_n: dict[int, list[int]] = {}
            for j in mine:
                if counts[j] > 0:
                    by_n.setdefault(counts[j], []).append(j)
            for n, js in sorted(by_n.items()):
                prompts = [build_prompt(rows[j], self.tokenizer, cfg.data.system_prompt) for j in js]
                out = self.backend.generate(prompts, n, cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                                            cfg.rollout.top_p, seed=step_seed(seed, n, "generate") + self.rank)
                for k, j in enumerate(js):
                    for i in range(k * n, (k + 1) * n):
                        recs.append(dict(j=j, prompt=prompts[k], prompt_ids=out.prompt_ids[k],
                                         ids=out.completion_ids[i], lp=out.logprobs[i],
                                         finish=out.finish_reasons[i], text=out.texts[i]))
        with self.timer("reward"):
            results = score_batch([rows[r["j"]] for r in recs], [r["text"] for r in recs]) if recs else []
            for r, res in zip(recs, results):
                r["score"] = float(res.reward)
        if self.world > 1:
            recs = [r for part in all_gather_objects(recs) for r in part]
        recs.sort(key=lambda r: r["j"])  # stable: keeps each prompt's rollouts in order
        prompt_of = {r["j"]: (r["prompt"], r["prompt_ids"]) for r in recs}
        js = sorted(prompt_of)
        gid = {j: g for g, j in enumerate(js)}
        scores = torch.tensor([r["score"] for r in recs], dtype=torch.float32)
        return RolloutBatch(
            rows=[rows[j] for j in js], prompts=[prompt_of[j][0] for j in js],
            prompt_ids=[prompt_of[j][1] for j in js],
            group_ids=torch.tensor([gid[r["j"]] for r in recs], dtype=torch.long),
            completion_ids=[r["ids"] for r in recs], sample_logprobs=[r["lp"] for r in recs],
            finish_reasons=[r["finish"] for r in recs], texts=[r["text"] for r in recs],
            scores=scores, rewards=scores.clone(),
        )

    def shape_rewards(self, batch: RolloutBatch) -> RolloutBatch:
        """DAPO overlong shaping (identity when off)."""
        o = self.cfg.algorithm.overlong
        if o.enabled:
            from salt.algo.dapo import overlong_penalty

            batch.rewards = batch.scores + overlong_penalty(batch.lengths, self.cfg.rollout.max_new_tokens, o.buffer, o.factor)
        return batch

    def collect(self, step: int, seed: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Allocation + generation + rewards, with DAPO dynamic sampling refills.

        With dynamic sampling each round draws :func:`gen_batch_prompts` prompts; groups with
        non-constant rewards are kept in draw order until ``prompts_per_step`` (P) are filled (the
        first P are trained on, the rest discarded), for at most ``max_gen_batches`` rounds. When
        no round yields an informative group, the first round's first P groups are trained on.
        Metrics: ``data/gen_batches`` (rounds), ``data/prompts`` (groups trained on),
        ``data/prompts_generated`` (prompts drawn), ``train/accuracy_generated``."""
        cfg = self.cfg
        P = cfg.rollout.prompts_per_step
        ds = cfg.algorithm.dynamic_sampling
        n_draw = gen_batch_prompts(cfg)
        kept: list[RolloutBatch] = []
        n_kept = 0
        first: RolloutBatch | None = None
        gen_batches = 0
        generated_scores: list[torch.Tensor] = []
        while True:
            rows = self.sampler.take(n_draw)
            counts = self.allocate(rows)
            batch = self.shape_rewards(self.generate(rows, counts, step_seed(seed, gen_batches, "gen-batch")))
            gen_batches += 1
            self.rollouts_generated += len(batch)
            generated_scores.append(batch.scores)
            if self.predictor is not None:
                self._update_predictor(batch)
            if first is None:
                first = batch
            if not ds.enabled:
                kept.append(batch)
                break
            from salt.algo.dapo import dynamic_sampling_keep

            keep = dynamic_sampling_keep(batch.rewards, batch.group_ids)
            sub = batch.select(torch.nonzero(keep).flatten()).compact_groups()
            if len(sub):
                kept.append(sub)
                n_kept += len(sub.rows)
            if n_kept >= P or gen_batches >= ds.max_gen_batches:
                break
        if ds.enabled:
            if n_kept == 0:  # nothing informative: train on the first batch (all advantages 0)
                kept = [first]
            batch = RolloutBatch.concat(kept)
            if len(batch.rows) > P:
                batch = batch.select(torch.nonzero(batch.group_ids < P).flatten()).compact_groups()
        else:
            batch = kept[0]
        all_scores = torch.cat(generated_scores)
        metrics = {
            "data/gen_batches": float(gen_batches),
            "data/prompts": float(len(batch.rows)),
            "data/prompts_generated": float(gen_batches * n_draw),
            "train/accuracy_generated": float((all_scores >= 1.0).float().mean()) if all_scores.numel() else 0.0,
        }
        return batch, metrics

    def _update_predictor(self, batch: RolloutBatch) -> None:
        from salt.algo.allocation import embed_prompts

        acc = torch.zeros(len(batch.rows), dtype=torch.float64)
        cnt = torch.zeros(len(batch.rows), dtype=torch.float64)
        acc.index_add_(0, batch.group_ids, (batch.scores >= 1.0).double())
        cnt.index_add_(0, batch.group_ids, torch.ones(len(batch), dtype=torch.float64))
        seen = cnt > 0
        emb = embed_prompts([r["prompt"] for r in batch.rows], backend=self.cfg.algorithm.vip.embedding)
        self.predictor.update(emb[seen], (acc[seen] / cnt[seen]))

    def select(self, batch: RolloutBatch, seed: int) -> RolloutBatch:
        """Selection door: keep all (identity) or PODS keep ``group_size`` of ``n`` per prompt."""
        sel = self.cfg.algorithm.selection
        if sel.rule == "none":
            return batch
        from salt.algo.selection import select_per_group

        g = torch.Generator().manual_seed(step_seed(seed, 0, "select"))
        idx = select_per_group(sel.rule, batch.rewards, batch.group_ids, self.cfg.rollout.group_size, generator=g,
                               ties=sel.ties)
        return batch.select(idx)

    def coefficients(self, batch: RolloutBatch) -> RolloutBatch:
        """Batch-level coefficient door: group advantages, then F-GRPO focal weights (identity: 1)."""
        from salt.algo.advantages import compute_advantages

        a = self.cfg.algorithm
        eps = a.advantage_eps if a.advantage_eps is not None else (1e-4 if a.selection.rule != "none" else 1e-6)
        adv = compute_advantages(batch.rewards, batch.group_ids, a.advantage, eps)
        if a.focal.enabled:
            from salt.algo.focal import focal_weights

            adv = adv * focal_weights(batch.scores, batch.group_ids, a.focal.gamma, a.focal.success_threshold)
        batch.advantages = adv
        return batch

    def mini_batches(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """Row indices of each optimizer mini-batch: the prompts split into equal chunks."""
        n_groups = len(batch.rows)
        k = min(self.cfg.num_mini_batches, n_groups)
        chunks = [c for c in torch.arange(n_groups).tensor_split(k) if c.numel()]
        return [torch.nonzero(torch.isin(batch.group_ids, c)).flatten() for c in chunks]

    def update(self, batch: RolloutBatch, seed: int, step: int | None = None) -> dict[str, float]:
        """Old log-probs, then ``ppo_epochs`` x mini-batches of :func:`update_minibatch`.

        When ``step + 1`` is in ``train.dump_gram_steps``, the first mini-batch's Gram is written
        to ``OUT/gram_step_NNNN.npz`` (:func:`write_gram_dump`, rank 0)."""
        cfg = self.cfg
        tb = to_tensors(batch, self.pad_id)
        self.backend.sleep()  # vllm: free the KV cache for the training phase (no-op for hf)
        minis = self.mini_batches(batch)
        # One epoch, one mini-batch, one process: the policy that sampled the batch is the one
        # being updated, so its old log-probs are the training forward's own (detached); the
        # separate no-grad forward would recompute the same numbers (tested in test_trainer.py).
        on_policy = cfg.train.ppo_epochs == 1 and len(minis) == 1 and self.kind == "none"
        with self.timer("old_logprobs"):
            if not on_policy:
                tb.old_logp = compute_logprobs(self.model, tb.to(self.device), cfg.rollout.temperature,
                                               cfg.train.micro_batch_size).cpu()
            if self.ref_model is not None:
                tb.ref_logp = compute_logprobs(self.ref_model, tb.to(self.device), cfg.rollout.temperature,
                                               cfg.train.micro_batch_size).cpu()
        metrics = []
        dump = step is not None and (step + 1) in cfg.train.dump_gram_steps
        for epoch in range(cfg.train.ppo_epochs):
            for i, idx in enumerate(minis):
                gram_out: dict | None = {} if (dump and epoch == 0 and i == 0) else None
                metrics.append(update_minibatch(self.model, self.optimizer, self.scheduler, tb.index(idx), self.spec,
                                                step_seed(seed, epoch * 1000 + i, "gram"), self.timer,
                                                accelerator=self.accelerator, gram_out=gram_out))
                if gram_out and self.is_main:  # empty when the Gram is off (no SALT, no diagnostics)
                    rows = idx[gram_out["positions"]]  # (B,) rows of the rollout batch
                    write_gram_dump(self.out / f"gram_step_{step + 1:04d}.npz", gram_out, batch.rewards[rows])
        self.backend.wake_up()
        self.sync_rollout_weights()  # vllm: push the new weights; hf: no-op
        return mean_metrics(metrics)

    # ---------------------------------------------------------------------------- step
    def step(self, step: int) -> dict[str, Any]:
        """One policy iteration; returns the metrics line of this step."""
        from salt.utils import seed_everything

        seed = step_seed(self.cfg.seed, step)
        seed_everything(seed % (2**31))
        self.timer = Timer()
        t0 = time.perf_counter()
        batch, data_metrics = self.collect(step, seed)
        batch = self.select(batch, seed)
        batch = self.coefficients(batch)
        self.rollouts_used += len(batch)
        train_metrics = self.update(batch, seed, step)
        self.timer.t["time/step"] = time.perf_counter() - t0
        lengths = batch.lengths.float()
        metrics: dict[str, Any] = {
            "step": step + 1,
            "reward/mean": float(batch.rewards.mean()),
            "reward/std": float(batch.rewards.std()) if len(batch) > 1 else 0.0,
            "train/accuracy": float((batch.scores >= 1.0).float().mean()),
            "train/response_length": float(lengths.mean()),
            "train/response_length_max": float(lengths.max()),
            "train/truncated_frac": float(sum(r == "length" for r in batch.finish_reasons) / len(batch)),
            "train/advantage_abs_mean": float(batch.advantages.abs().mean()),
            "train/rollouts": float(self.rollouts_used),
            "train/rollouts_generated": float(self.rollouts_generated),
            "train/group_size_mean": float(len(batch) / max(1, len(batch.rows))),
            **data_metrics,
            **train_metrics,
        }
        if self.eval_rows and self.cfg.train.eval_every and (step + 1) % self.cfg.train.eval_every == 0:
            metrics.update(self.evaluate(seed))
        metrics.update(self.timer.t)
        if self.cfg.train.log_samples_every and (step + 1) % self.cfg.train.log_samples_every == 0 and self.is_main:
            self.write_samples(step + 1, batch)
        return metrics

    @torch.no_grad()
    def evaluate(self, seed: int) -> dict[str, float]:
        """Greedy accuracy on ``data.eval`` (this rank's share, summed)."""
        from salt.tasks.prompts import build_prompt
        from salt.tasks.rewards import score_batch

        with self.timer("eval"):
            rows = self.eval_rows[self.rank:: self.world]
            prompts = [build_prompt(r, self.tokenizer, self.cfg.data.system_prompt) for r in rows]
            out = self.backend.generate(prompts, 1, self.cfg.rollout.max_new_tokens, 0.0, 1.0, seed=seed)
            res = score_batch(rows, out.texts)
            t = torch.tensor([sum(float(r.reward >= 1.0) for r in res), len(res)], dtype=torch.float64)
            all_reduce_sum(t)
        return {"eval/accuracy": float(t[0] / max(t[1], 1.0))}

    def write_samples(self, step: int, batch: RolloutBatch) -> None:
        from salt.utils import write_jsonl_atomic

        rows = []
        for i in range(len(batch)):
            g = int(batch.group_ids[i])
            rows.append({
                "step": step, "id": batch.rows[g].get("id"), "group": g, "prompt": batch.prompts[g],
                "completion": batch.texts[i], "answer": batch.rows[g].get("answer"),
                "score": float(batch.scores[i]), "reward": float(batch.rewards[i]),
                "advantage": float(batch.advantages[i]), "finish_reason": batch.finish_reasons[i],
            })
        write_jsonl_atomic(self.out / "samples" / f"step_{step:04d}.jsonl", rows)

    # ---------------------------------------------------------------------- checkpoints
    def save(self, step: int) -> None:
        """Checkpoint ``step``. One process and DDP: the single-process format (full model,
        optimizer and scheduler state dicts). FSDP / DeepSpeed: the full model (gathered with
        ``accelerator.get_state_dict``) in ``model.pt`` plus the sharded optimizer / scheduler state
        through ``accelerator.save_state`` in ``checkpoints/accelerate/step_NNNNNN``, named in
        ``state.json`` (``accelerate_state``) and restored by :meth:`maybe_resume`."""
        from salt.train.checkpoint import checkpoint_name, list_checkpoints, save_checkpoint

        root = self.out / "checkpoints"
        state = {"data_position": self.sampler.position, "rollouts_used": self.rollouts_used,
                 "rollouts_generated": self.rollouts_generated, "metrics_lines": self.metrics_lines}
        optimizer, scheduler = self.optimizer, self.scheduler
        if self.kind in ("fsdp", "deepspeed"):
            rel = f"accelerate/{checkpoint_name(step)}"
            self.accelerator.save_state(str(root / rel))  # collective: every rank writes its shards
            model_state = self.accelerator.get_state_dict(self.model)  # collective: full on rank 0
            state["accelerate_state"] = rel
            optimizer = scheduler = _StateView({"accelerate_state": rel})
        else:
            model_state = self.unwrapped().state_dict()
        if self.is_main:
            save_checkpoint(
                root, step, model_state=model_state, optimizer=optimizer, scheduler=scheduler, state=state,
                extra={"predictor": self.predictor.state_dict() if self.predictor is not None else None},
                keep=self.cfg.train.keep_checkpoints,
            )
            if (root / "accelerate").is_dir():  # drop the sharded states of pruned checkpoints
                kept = {p.name for p in list_checkpoints(root)}
                for d in (root / "accelerate").iterdir():
                    if d.name not in kept:
                        shutil.rmtree(d, ignore_errors=True)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def maybe_resume(self) -> int:
        """Restore the newest complete checkpoint; returns the number of completed steps."""
        from salt.train.checkpoint import latest_checkpoint, load_checkpoint, set_rng_state, truncate_jsonl

        path = latest_checkpoint(self.out / "checkpoints")
        metrics_path = self.out / "metrics.jsonl"
        if path is None:
            if self.is_main and metrics_path.exists():
                metrics_path.unlink()  # a run killed before its first checkpoint restarts from 0
            return 0
        ck = load_checkpoint(path)
        st = ck["state"]
        if st.get("accelerate_state"):  # FSDP / DeepSpeed: sharded model, optimizer and scheduler
            if self.kind not in ("fsdp", "deepspeed"):
                raise RuntimeError(f"checkpoint {path} holds an FSDP/DeepSpeed state ({st['accelerate_state']}); "
                                   "resume it with the same `accelerate launch --config_file` it was written with")
            self.accelerator.load_state(str(path.parent / st["accelerate_state"]))
        else:
            self.unwrapped().load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        self.sampler.position = int(st["data_position"])
        self.rollouts_used = int(st["rollouts_used"])
        self.rollouts_generated = int(st["rollouts_generated"])
        self.metrics_lines = int(st["metrics_lines"])
        if self.predictor is not None and ck["extra"].get("predictor") is not None:
            self.predictor.load_state_dict(ck["extra"]["predictor"])
        if self.is_main:
            truncate_jsonl(metrics_path, self.metrics_lines)
            print(f"salt train: resuming from checkpoint {path.name} ({st['step']} steps done)", file=sys.stderr)
        self.sync_rollout_weights()
        return int(st["step"])

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        done = self.out / "DONE"
        if done.is_file():
            return json.loads(done.read_text() or "{}")
        check_sandbox(cfg)
        self.setup()
        if self.is_main:
            save_resolved(cfg, self.out)
        start = self.maybe_resume()
        tracker = _Tracking(cfg, self.out) if (cfg.tracking.enabled and self.is_main) else None
        if tracker is not None:
            tracker.start()
        bar = self._progress(start)
        metrics_path = self.out / "metrics.jsonl"
        last: dict[str, Any] = {}
        t_run = time.perf_counter()
        from salt.utils import append_jsonl

        failed = True
        try:
            for step in range(start, cfg.train.steps):
                last = self.step(step)
                if self.is_main:
                    append_jsonl(metrics_path, last)
                    self.metrics_lines += 1
                    log_now = (step + 1) % cfg.tracking.log_every == 0 or step + 1 == cfg.train.steps
                    if tracker is not None and log_now:
                        tracker.log_metrics(last, step + 1)
                if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < cfg.train.steps:
                    self.save(step + 1)
                if bar is not None:
                    bar.set_postfix(reward=f"{last['reward/mean']:.3f}", acc=f"{last['train/accuracy']:.3f}",
                                    step_s=f"{last['time/step']:.2f}")
                    bar.update(1)
            failed = False
        finally:
            if bar is not None:
                bar.close()
            if failed and tracker is not None:
                tracker.fail()
        summary = {"steps": cfg.train.steps, "out_dir": str(self.out), "wall_time_s": time.perf_counter() - t_run,
                   **{k: v for k, v in last.items() if not k.startswith(TIMING_PREFIX)}}
        # full weights: gathered by Accelerate under FSDP / ZeRO-3 (a collective: every rank calls it)
        state_dict = self.accelerator.get_state_dict(self.model) if self.kind != "none" else None
        if self.is_main:
            final = self.out / "final"
            tmp = self.out / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if state_dict is None:
                self.model.save_pretrained(tmp)
            else:
                self.unwrapped().save_pretrained(tmp, state_dict=state_dict)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if tracker is not None:
                tracker.finish(summary)
            from salt.utils import atomic_write_text

            atomic_write_text(done, json.dumps(summary, indent=1, default=float))
        self.backend.close()
        return summary

    def _progress(self, start: int):
        if not (self.cfg.train.progress and self.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=start, file=sys.stderr, desc="salt train", unit="step")


class _Tracking:
    """MLflow logging of one training run through :mod:`salt.tracking` (imported lazily)."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg, self.out, self.run = cfg, out, None

    def start(self) -> None:
        from salt import tracking

        cfg = self.cfg
        tags = {"method": cfg.method_name, "G": str(cfg.rollout.group_size), "seed": str(cfg.seed),
                "git_commit": _git_commit() or "unknown", "out_dir": str(self.out.resolve())}
        self.run = tracking.start_run(
            cfg.tracking, run_name=cfg.tracking.run_name or self.out.name, out_dir=self.out,
            params=flatten(cfg.to_dict()), tags=tags, parent_run_id=cfg.tracking.parent_run_id,
        )

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from salt import tracking

        tracking.log_metrics(self.run, {k: v for k, v in metrics.items() if k != "step"}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        from salt import tracking

        tracking.log_artifacts(self.run, self.out / "config.resolved.yaml")
        if (self.out / "samples").is_dir():
            tracking.log_artifacts(self.run, self.out / "samples", "samples")
        tracking.set_tags(self.run, {"final_dir": str((self.out / "final").resolve())})
        tracking.end_run(self.run)

    def fail(self) -> None:
        from salt import tracking

        tracking.end_run(self.run, "FAILED")


def train(cfg: RunConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume, or skip when ``DIR/DONE`` exists) one training job; returns its summary."""
    cfg.validate(check_paths=True)  # a missing model.path passes only with model.warmup_if_missing
    check_sandbox(cfg)
    ensure_model(cfg)
    return Trainer(cfg, out_dir).run()


def cli_main(argv: list[str]) -> int:
    from salt.train.config import describe

    ap = argparse.ArgumentParser(prog="salt train", description="One RL training run from a run config.")
    ap.add_argument("--config", help="run config YAML (see config/examples/)")
    ap.add_argument("--out", help="output dir (metrics.jsonl, samples/, checkpoints/, final/, DONE); "
                                  "default results/runs/<config file name>")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set rollout.group_size=16 (repeatable)")
    ap.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = ap.parse_args(argv)
    if args.help_config:
        print(describe())
        return 0
    if not args.config:
        ap.error("--config is required (see config/examples/)")
    out = args.out or str(Path("results") / "runs" / Path(args.config).stem)
    from salt.tasks.sandbox import SandboxIsolationError

    try:
        cfg = load_run_config(args.config, args.overrides)
        check_sandbox(cfg)
        ensure_model(cfg)
    except ConfigError as exc:
        print(f"salt train: config error: {exc}", file=sys.stderr)
        return 2
    except SandboxIsolationError as exc:
        print(f"salt train: {exc}", file=sys.stderr)
        return 2
    summary = Trainer(cfg, out).run()
    print(json.dumps({k: summary[k] for k in ("steps", "out_dir", "wall_time_s") if k in summary}))
    return 0
