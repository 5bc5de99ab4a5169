"""Rollout backends behind one interface (see :mod:`salt.rollout.base` for the conventions).

``make_backend(cfg.rollout, model, tokenizer, accelerator)`` returns an :class:`HFBackend`
(``rollout.backend: hf``, the CPU default) or a :class:`~salt.rollout.vllm.VLLMBackend`
(``rollout.backend: vllm``, on the device the installed vLLM supports, vLLM imported lazily).
"""

from __future__ import annotations

from typing import Any

from salt.rollout.base import RolloutBackend, RolloutOutput, cfg_get
from salt.rollout.hf import HFBackend

BACKENDS = ("hf", "vllm")

__all__ = ["BACKENDS", "HFBackend", "RolloutBackend", "RolloutOutput", "make_backend"]


def make_backend(rollout_cfg: Any, model: Any, tokenizer: Any, accelerator: Any = None) -> RolloutBackend:
    """The backend named by ``rollout_cfg.backend`` (dataclass or dict; default ``hf``).

    Keys read: ``backend``; for hf ``batch_size`` (optional); for vllm the ``vllm`` sub-section
    (see :func:`salt.rollout.vllm.engine_kwargs`) and ``max_new_tokens``.
    """
    name = cfg_get(rollout_cfg, "backend", "hf")
    if name == "hf":
        return HFBackend(model, tokenizer, accelerator=accelerator, batch_size=cfg_get(rollout_cfg, "batch_size"))
    if name == "vllm":
        from salt.rollout.vllm import VLLMBackend

        return VLLMBackend.from_config(rollout_cfg, model, tokenizer, accelerator=accelerator)
    raise ValueError(f"rollout.backend: unknown backend {name!r}; choose one of {BACKENDS}")
