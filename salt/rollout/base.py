"""The rollout interface: what every backend returns and the methods the trainer calls.

Conventions shared by all backends (the trainer's loss mask relies on them):

* rollouts are grouped by prompt: ``n`` samples of prompt ``j`` are rows ``j*n .. j*n+n-1``;
* ``completion_ids[i]`` holds the generated tokens up to and INCLUDING the first end-of-sequence
  token when the rollout stopped (``finish_reasons[i] == "stop"``), so the loss mask covers the
  decision to stop; a rollout cut by the token budget (``"length"``) has no EOS. Nothing after the
  first EOS (padding) is kept;
* ``logprobs[i][t]`` is the log-probability of ``completion_ids[i][t]`` under the policy's
  temperature-scaled distribution ``log_softmax(logits / T)`` (before top-p truncation; with
  ``T == 0`` (greedy) the unscaled ``log_softmax(logits)``), so ``len(logprobs[i]) ==
  len(completion_ids[i])``;
* ``texts[i]`` is the completion decoded with special tokens skipped.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class RolloutOutput:
    """Rollouts of ``len(prompt_ids)`` prompts, ``n`` per prompt (see the module docstring).

    Attributes:
        prompt_ids: per PROMPT, its token ids (no padding); length P.
        completion_ids: per rollout, generated ids; length P * n, grouped by prompt.
        logprobs: per rollout, sampling log-probs of ``completion_ids`` (same lengths).
        finish_reasons: per rollout, ``"stop"`` (ended with EOS) or ``"length"`` (budget hit).
        texts: per rollout, decoded completion (special tokens skipped).
        n: samples per prompt.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    texts: list[str]
    n: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        total = len(self.prompt_ids) * self.n
        for name in ("completion_ids", "logprobs", "finish_reasons", "texts"):
            if len(getattr(self, name)) != total:
                raise ValueError(
                    f"RolloutOutput.{name} has {len(getattr(self, name))} entries, expected "
                    f"len(prompt_ids) * n = {len(self.prompt_ids)} * {self.n} = {total}"
                )
        for i, (ids, lps) in enumerate(zip(self.completion_ids, self.logprobs)):
            if len(ids) != len(lps):
                raise ValueError(f"RolloutOutput rollout {i}: {len(ids)} completion ids but {len(lps)} log-probs")
        bad = sorted({r for r in self.finish_reasons if r not in ("stop", "length")})
        if bad:
            raise ValueError(f"RolloutOutput.finish_reasons must be 'stop' or 'length', got {bad}")

    @property
    def group_ids(self) -> list[int]:
        """Prompt index of every rollout: ``[0]*n + [1]*n + ...``."""
        return [j for j in range(len(self.prompt_ids)) for _ in range(self.n)]

    @property
    def completion_lengths(self) -> list[int]:
        return [len(ids) for ids in self.completion_ids]


def cut_at_eos(token_ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], str]:
    """Keep tokens up to and including the first EOS: ``(ids, "stop")``; else ``(ids, "length")``."""
    out = []
    for tok in token_ids:
        out.append(int(tok))
        if int(tok) in eos_ids:
            return out, "stop"
    return out, "length"


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dataclass-like object or a mapping (the run config or a plain dict)."""
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


class RolloutBackend(abc.ABC):
    """Generates grouped rollouts; see :class:`RolloutOutput` for the conventions.

    The trainer calls ``generate`` once per rollout batch, ``sync_weights(model)`` after every
    optimizer step, and ``sleep()`` / ``wake_up()`` around the training phase (no-ops unless the
    backend holds its own copy of the weights).
    """

    name: str = "base"

    @abc.abstractmethod
    def generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> RolloutOutput:
        """``n`` completions for every prompt, grouped by prompt."""

    def sync_weights(self, model: Any) -> None:
        """Make the next ``generate`` use ``model``'s current weights."""

    def sleep(self) -> None:
        """Free generation memory before the training phase."""

    def wake_up(self) -> None:
        """Restore generation memory after the training phase."""

    def close(self) -> None:
        """Release resources held by the backend."""


def check_generate_args(prompts: Sequence[str], n: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Shared argument validation for every backend (errors name the config key to fix)."""
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("generate(prompts=...) expects a list of strings")
    if int(n) < 1:
        raise ValueError(f"n (rollout.group_size) must be >= 1, got {n}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens (rollout.max_new_tokens) must be >= 1, got {max_new_tokens}")
    if float(temperature) < 0:
        raise ValueError(f"temperature (rollout.temperature) must be >= 0, got {temperature}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p (rollout.top_p) must be in (0, 1], got {top_p}")
