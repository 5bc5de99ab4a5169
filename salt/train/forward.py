"""The policy forward: per-token log-probs, entropies and (for the Gram) the final hidden states
and logits of one pass; the no-grad, micro-batched log-probs of a whole batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from salt.train.batch import TensorBatch


@dataclass
class ForwardOut:
    logp: torch.Tensor  # (b, T) log-probs of the sampled tokens at temperature T
    entropy: torch.Tensor  # (b, T)
    hidden: torch.Tensor | None  # (b, T, H) final hidden state (LM-head input), detached
    logits: torch.Tensor | None  # (b, T, V) detached


def micro_slices(n: int, micro: int) -> list[slice]:
    """Consecutive slices of at most ``micro`` rows covering ``n`` rows."""
    return [slice(i, min(i + micro, n)) for i in range(0, n, micro)]


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
