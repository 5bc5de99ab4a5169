"""How the gradients of the ranks meet: one class per distributed setup, chosen once from the
Accelerator (:func:`strategy_for`), behind one small interface:

* ``prepare``        wrap model, optimizer and scheduler (``accelerator.prepare``);
* ``no_sync`` / ``backward`` / ``step``  one pass's gradient sync, the backward, the optimizer step;
* ``full_state`` / ``full_state_every_rank``  full weights for ``save_pretrained`` (rank 0) and for
  a colocated vLLM engine (every rank);
* ``head_weight``    the LM head's full weight on every rank (the streaming Gram's input);
* ``checkpoint_state`` / ``load_checkpoint``  what a checkpoint holds and how it comes back.

``Single`` (``none``): no accelerator, or Accelerate's ``DistributedType.NO``: the model is used
as is (one process; a raw model inside a process group gets its pre-scaled gradients summed by
hand). ``DDP`` (``ddp``): ``MULTI_CPU`` / ``MULTI_GPU`` / ``MULTI_*``. ``FSDP`` (``fsdp``): FSDP v1
or v2. ``DeepSpeed`` (``deepspeed``): ZeRO 1-3. The wrapped engines AVERAGE gradients over ranks,
so the update pre-scales the loss by :attr:`GradientStrategy.grad_scale` (the world size), and
every rank runs the same number of passes (:attr:`even_passes`: FSDP all-gathers, ZeRO-3 fetches
and DDP buffer broadcasts are collectives).

FSDP runs on CPU too (gloo): Accelerate turns its FSDP plugin on only for accelerator devices, so
:func:`make_accelerator` turns it back on when ``accelerate launch`` asked for FSDP on a CPU-only
machine (``tests/train/test_fsdp.py``). DeepSpeed is not exercised by the CPU test-suite.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from salt.train.collectives import reduce_gradients, world
from salt.train.head import output_head


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


def fsdp_requested() -> bool:
    """``accelerate launch`` was given an FSDP config (it sets ``ACCELERATE_USE_FSDP`` for its workers)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(mixed_precision: str | None) -> Accelerator:
    """The run's Accelerator (CPU when there is no GPU; the scheduler is stepped by the trainer).

    Accelerate (1.16) enables FSDP only for accelerator devices: launched with
    ``config/accelerate/fsdp.yaml`` on a CPU-only machine it does not fail, it silently falls back
    to ``MULTI_CPU`` (DDP, full replicas) and drops the FSDP plugin. ``fully_shard`` runs on CPU
    over gloo, so the plugin (read from the launcher's ``FSDP_*`` variables, as Accelerate does) is
    switched back on here exactly as Accelerate does for a GPU: same state fields, same
    ``accelerator.prepare`` path (``fsdp2_prepare_model``)."""
    acc = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False,
                      mixed_precision=mixed_precision)
    if acc.distributed_type == DistributedType.MULTI_CPU and fsdp_requested():
        plugin = FullyShardedDataParallelPlugin()
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def zero_stage(accelerator: Any) -> int:
    """DeepSpeed ZeRO stage of the accelerator's plugin (0 without DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0) or 0)


class GradientStrategy:
    """One process, the model used as is (base class: the defaults of every strategy)."""

    kind = "none"
    wrapped = False  # model, optimizer and scheduler went through accelerator.prepare

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator

    @property
    def sharded(self) -> bool:
        """Parameters are sharded across ranks (FSDP, DeepSpeed ZeRO-3): full weights need a gather."""
        return False

    @property
    def grad_scale(self) -> float:
        """Loss pre-scale that undoes the engine's 1/W gradient average."""
        return float(world()[0]) if self.wrapped else 1.0

    @property
    def even_passes(self) -> bool:
        """Every rank must run the same number of forward/backward passes (engine collectives)."""
        return self.wrapped

    def prepare(self, model: Any, optimizer: Any, scheduler: Any, train_cfg: Any) -> tuple[Any, Any, Any]:
        if self.accelerator is not None and self.accelerator.mixed_precision != "no":
            model = self.accelerator.prepare_model(model)  # only the autocast forward wrapper
        return model, optimizer, scheduler

    def unwrap(self, model: Any) -> Any:
        """The bare ``PreTrainedModel`` (generation, ``save_pretrained``)."""
        return model

    def no_sync(self, model: Any, last: bool) -> Any:
        """Context of one pass: only the last pass synchronises gradients."""
        return contextlib.nullcontext()

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self, model: Any, optimizer: Any, scheduler: Any, max_norm: float) -> torch.Tensor:
        """Gradient clipping, optimizer and scheduler step; returns the pre-clip gradient norm."""
        params = [p for p in model.parameters() if p.requires_grad]
        if world()[0] > 1:  # a raw model in a process group: sum the pre-scaled gradients
            reduce_gradients(params, mean=False)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def full_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        """Full weights for ``save_pretrained`` on rank 0 (a collective); None: the model saves itself."""
        return None

    def head_weight(self, model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's full weight (V, H) and bias (V,) or None, detached, on EVERY rank (a collective
        for sharded strategies, where it is a copy; else a view of the parameter): the streaming Gram's input."""
        head = output_head(model)
        return head.weight.detach(), None if head.bias is None else head.bias.detach()

    def full_state_every_rank(self, model: Any) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on EVERY rank (a collective for sharded strategies)."""
        return self.unwrap(model).state_dict()

    def checkpoint_state(self, root: Path, name: str, model: Any, optimizer: Any,
                         scheduler: Any) -> tuple[dict, dict, dict, str | None]:
        """(model, optimizer, scheduler state dicts, sharded-state dir relative to ``root`` or None)."""
        return self.unwrap(model).state_dict(), optimizer.state_dict(), scheduler.state_dict(), None

    def load_checkpoint(self, ck: dict, path: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        rel = ck["state"].get("accelerate_state")
        if rel:
            raise RuntimeError(f"checkpoint {path} holds an FSDP/DeepSpeed state ({rel}); "
                               "resume it with the same `accelerate launch --config_file` it was written with")
        self.unwrap(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])


class Single(GradientStrategy):
    """No accelerator, or Accelerate's ``DistributedType.NO``."""


class DDP(GradientStrategy):
    """DistributedDataParallel: every pass is a forward followed by its backward (both scopes; the
    global scope's Gram comes from a no-grad pass first), all but the last under ``no_sync``, so
    DDP's own reducer averages the gradients once, after the last backward."""

    kind = "ddp"
    wrapped = True

    def prepare(self, model: Any, optimizer: Any, scheduler: Any, train_cfg: Any) -> tuple[Any, Any, Any]:
        return self.accelerator.prepare(model, optimizer, scheduler)

    def unwrap(self, model: Any) -> Any:
        return self.accelerator.unwrap_model(model)

    def no_sync(self, model: Any, last: bool) -> Any:
        return self.accelerator.no_sync(model) if not last else contextlib.nullcontext()

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        self.accelerator.backward(loss)

    def step(self, model: Any, optimizer: Any, scheduler: Any, max_norm: float) -> torch.Tensor:
        params = list(model.parameters())  # FSDP's clip_grad_norm_ matches the model's full list
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def full_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        return self.accelerator.get_state_dict(model)


class _ShardedCheckpoint:
    """Checkpoints of FSDP / DeepSpeed: the full model (``accelerator.get_state_dict``) in
    ``model.pt`` plus the sharded optimizer / scheduler state through ``accelerator.save_state`` in
    ``checkpoints/accelerate/step_NNNNNN``, named in ``state.json`` (``accelerate_state``)."""

    accelerator: Any

    def checkpoint_state(self, root: Path, name: str, model: Any, optimizer: Any,
                         scheduler: Any) -> tuple[dict, dict, dict, str | None]:
        rel = f"accelerate/{name}"
        self.accelerator.save_state(str(root / rel))  # collective: every rank writes its shards
        model_state = self.accelerator.get_state_dict(model)  # collective: full on rank 0
        pointer = {"accelerate_state": rel}
        return model_state, pointer, pointer, rel

    def load_checkpoint(self, ck: dict, path: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
        rel = ck["state"].get("accelerate_state")
        if rel:
            self.accelerator.load_state(str(path.parent / rel))
        else:
            super().load_checkpoint(ck, path, model, optimizer, scheduler)  # type: ignore[misc]


class FSDP(_ShardedCheckpoint, DDP):
    """Fully sharded data parallel (v1 or v2)."""

    kind = "fsdp"

    @property
    def sharded(self) -> bool:
        return True

    def head_weight(self, model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """v2: the ``DTensor``s' ``full_tensor()``; v1: a copy made inside ``summon_full_params``."""
        if getattr(self.accelerator, "is_fsdp2", False):
            from torch.distributed.tensor import DTensor

            head = output_head(model)
            full = [None if t is None else (t.full_tensor() if isinstance(t, DTensor) else t).detach()
                    for t in (head.weight, head.bias)]
            return full[0], full[1]
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            w, b = super().head_weight(model)
            return w.clone(), None if b is None else b.clone()

    def full_state_every_rank(self, model: Any) -> dict[str, torch.Tensor]:
        """FSDP v2: each ``DTensor`` is materialised with ``full_tensor()`` (one all-gather per
        tensor, in the same order on every rank); v1: a ``FULL_STATE_DICT`` with ``rank0_only=False``."""
        if getattr(self.accelerator, "is_fsdp2", False):
            from torch.distributed.tensor import DTensor

            return {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in model.state_dict().items()}
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                                      FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
            return model.state_dict()


class DeepSpeed(_ShardedCheckpoint, DDP):
    """DeepSpeed ZeRO 1-3: the engine owns backward, clipping (its config's ``gradient_clipping``,
    set from ``train.max_grad_norm``), the optimizer step and zero_grad."""

    kind = "deepspeed"

    @property
    def sharded(self) -> bool:
        return zero_stage(self.accelerator) == 3

    def prepare(self, model: Any, optimizer: Any, scheduler: Any, train_cfg: Any) -> tuple[Any, Any, Any]:
        """DeepSpeed takes its micro-batch size and clipping from its own config: set them here."""
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = int(train_cfg.micro_batch_size)
        ds["gradient_clipping"] = float(train_cfg.max_grad_norm)
        return self.accelerator.prepare(model, optimizer, scheduler)

    def no_sync(self, model: Any, last: bool) -> Any:
        return contextlib.nullcontext()

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        model.set_gradient_accumulation_boundary(last)  # the last pass closes the accumulation
        model.backward(loss)

    def step(self, model: Any, optimizer: Any, scheduler: Any, max_norm: float) -> torch.Tensor:
        model.step()
        gn = model.get_global_grad_norm()
        scheduler.step()  # our LambdaLR is not a DeepSpeed scheduler: Accelerate leaves it to us
        return torch.tensor(float("nan") if gn is None else float(gn))

    def head_weight(self, model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ZeRO-3: a copy inside ``deepspeed.zero.GatheredParameters``; ZeRO-1/2: a view."""
        if not self.sharded:
            return super().head_weight(model)
        import deepspeed

        head = output_head(model)
        params = [t for t in (head.weight, head.bias) if t is not None]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone()

    def full_state_every_rank(self, model: Any) -> dict[str, torch.Tensor]:
        """ZeRO-3: ``deepspeed.zero.GatheredParameters`` per parameter; ZeRO-1/2: the state dict."""
        bare = self.unwrap(model)
        if not self.sharded:
            return bare.state_dict()
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, p in bare.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                out[name] = p.data.detach().clone()
        for name, b in bare.named_buffers():
            out[name] = b.detach()
        return out


def strategy_for(accelerator: Any) -> GradientStrategy:
    """The strategy of a model that goes (or went) through ``accelerator.prepare``."""
    if accelerator is None:
        return Single(None)
    dt = accelerator.distributed_type
    if dt == DistributedType.NO:
        return Single(accelerator)
    if dt == DistributedType.FSDP:
        return FSDP(accelerator)
    if dt == DistributedType.DEEPSPEED:
        return DeepSpeed(accelerator)
    if str(getattr(dt, "value", dt)).startswith("MULTI_"):
        return DDP(accelerator)
    raise ValueError(f"accelerate distributed_type {dt} is not supported by `salt train`; launch with one of "
                     "config/accelerate/{cpu,ddp,fsdp,deepspeed_zero2,deepspeed_zero3}.yaml")
