"""The rollout-batch record that flows forward through one training step.

:class:`RolloutBatch` holds python-side data (rows, texts, token id lists) plus per-rollout
tensors (group ids, rewards, advantages); :func:`to_tensors` pads it once into a
:class:`TensorBatch`, the model-side view every forward of the step uses:

    input_ids       (N, Lp + T)  prompt left-padded to Lp, completion right-padded to T
    attention_mask  (N, Lp + T)
    position_ids    (N, Lp + T)  cumsum(attention_mask) - 1, so left padding does not shift
    tokens          (N, T)       completion tokens (pad id where masked)
    mask            (N, T)       1.0 on completion tokens (EOS included when the rollout stopped)

The logits that predict ``tokens[:, t]`` sit at position ``Lp - 1 + t``: the last ``T + 1``
positions of the sequence minus the very last one (``logits_to_keep = T + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch


@dataclass
class RolloutBatch:
    """Rollouts of one step (N rollouts over the prompts in ``rows``).

    ``group_ids[i]`` indexes ``rows`` / ``prompts`` / ``prompt_ids`` (per prompt); everything
    else is per rollout.
    """

    rows: list[dict]
    prompts: list[str]
    prompt_ids: list[list[int]]
    group_ids: torch.Tensor  # (N,) long
    completion_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str]
    scores: torch.Tensor  # (N,) task reward from the verifier
    rewards: torch.Tensor  # (N,) reward used for advantages (scores + shaping)
    advantages: torch.Tensor | None = None  # (N,)

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(c) for c in self.completion_ids], dtype=torch.long)

    def select(self, idx: Sequence[int] | torch.Tensor) -> "RolloutBatch":
        """The rollouts ``idx`` (in that order); prompts are kept, so group ids stay valid."""
        idx_t = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        ids = idx_t.tolist()
        return replace(
            self,
            group_ids=self.group_ids[idx_t],
            completion_ids=[self.completion_ids[i] for i in ids],
            finish_reasons=[self.finish_reasons[i] for i in ids],
            texts=[self.texts[i] for i in ids],
            scores=self.scores[idx_t],
            rewards=self.rewards[idx_t],
            advantages=None if self.advantages is None else self.advantages[idx_t],
        )

    @staticmethod
    def concat(batches: Sequence["RolloutBatch"]) -> "RolloutBatch":
        """Concatenate batches of different prompts (group ids are offset)."""
        if len(batches) == 1:
            return batches[0]
        rows, prompts, prompt_ids, gids = [], [], [], []
        for b in batches:
            gids.append(b.group_ids + len(rows))
            rows += b.rows
            prompts += b.prompts
            prompt_ids += b.prompt_ids
        cat = lambda name: [x for b in batches for x in getattr(b, name)]  # noqa: E731
        return RolloutBatch(
            rows=rows, prompts=prompts, prompt_ids=prompt_ids, group_ids=torch.cat(gids),
            completion_ids=cat("completion_ids"),
            finish_reasons=cat("finish_reasons"), texts=cat("texts"),
            scores=torch.cat([b.scores for b in batches]), rewards=torch.cat([b.rewards for b in batches]),
            advantages=None if any(b.advantages is None for b in batches) else torch.cat([b.advantages for b in batches]),
        )

    def compact_groups(self) -> "RolloutBatch":
        """Drop prompts without rollouts and renumber groups 0..P'-1 in order of first use."""
        order: dict[int, int] = {}
        for g in self.group_ids.tolist():
            order.setdefault(g, len(order))
        keep = list(order)
        return replace(
            self,
            rows=[self.rows[g] for g in keep],
            prompts=[self.prompts[g] for g in keep],
            prompt_ids=[self.prompt_ids[g] for g in keep],
            group_ids=torch.tensor([order[g] for g in self.group_ids.tolist()], dtype=torch.long),
        )


@dataclass
class TensorBatch:
    """Padded model inputs of N rollouts (layout in the module docstring); row-indexable."""

    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor  # (N, L)
    position_ids: torch.Tensor  # (N, L)
    tokens: torch.Tensor  # (N, T)
    mask: torch.Tensor  # (N, T) float
    group_ids: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)
    old_logp: torch.Tensor | None = None  # (N, T)
    ref_logp: torch.Tensor | None = None  # (N, T)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def index(self, idx: torch.Tensor | slice) -> "TensorBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v[idx]
        return TensorBatch(**out)

    def to(self, device: torch.device | str) -> "TensorBatch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else v.to(device)
        return TensorBatch(**out)


def to_tensors(batch: RolloutBatch, pad_id: int) -> TensorBatch:
    """Pad a :class:`RolloutBatch` into a :class:`TensorBatch` (advantages must be set)."""
    if batch.advantages is None:
        raise ValueError("to_tensors: the batch has no advantages yet; compute them first")
    N = len(batch)
    prompt_of = [batch.prompt_ids[g] for g in batch.group_ids.tolist()]
    Lp = max(len(p) for p in prompt_of)
    T = max(1, max(len(c) for c in batch.completion_ids))
    input_ids = torch.full((N, Lp + T), pad_id, dtype=torch.long)
    attn = torch.zeros((N, Lp + T), dtype=torch.long)
    tokens = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros((N, T), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_of, batch.completion_ids)):
        input_ids[i, Lp - len(p): Lp] = torch.tensor(p, dtype=torch.long)
        attn[i, Lp - len(p): Lp] = 1
        if c:
            input_ids[i, Lp: Lp + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, Lp: Lp + len(c)] = 1
            tokens[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, : len(c)] = 1.0
    position_ids = (attn.cumsum(dim=1) - 1).clamp_min(0)  # (N, L)
    return TensorBatch(
        input_ids=input_ids, attention_mask=attn, position_ids=position_ids, tokens=tokens, mask=mask,
        group_ids=batch.group_ids.clone(), advantages=batch.advantages.to(torch.float32),
    )
