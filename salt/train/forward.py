"""The policy forward: per-token log-probs and entropies of the sampled tokens (the LM head in
token chunks, :mod:`salt.train.head`: the (tokens x vocabulary) logits never exist whole) and, for
the Gram, the final hidden states of the same pass; the no-grad, micro-batched log-probs of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from salt.train.batch import TensorBatch
from salt.train.head import DEFAULT_HEAD_CHUNK, chunked_head


@dataclass
class ForwardOut:
    logp: torch.Tensor  # (b, T) log-probs of the sampled tokens at temperature T (0 where mask == 0)
    entropy: torch.Tensor  # (b, T) (0 where mask == 0)
    hidden: torch.Tensor | None  # (b, T, H) final hidden state (LM-head input), detached


def micro_slices(n: int, micro: int) -> list[slice]:
    """Consecutive slices of at most ``micro`` rows covering ``n`` rows."""
    return [slice(i, min(i + micro, n)) for i in range(0, n, micro)]


def policy_forward(model: Any, tb: TensorBatch, temperature: float, with_features: bool = True,
                   entropy_grad: bool = False, head_chunk: int = DEFAULT_HEAD_CHUNK,
                   head: bool = True) -> ForwardOut:
    """One forward of the policy over ``tb`` (layout in :mod:`salt.train.batch`).

    The LM head runs in chunks of ``head_chunk`` valid tokens inside the model's forward
    (:func:`salt.train.head.chunked_head`); the hidden states it reads (after the last norm) are
    the Gram's, so the Gram needs no second forward. ``head=False``: the decoder only (the
    hidden states for the Gram; ``logp`` and ``entropy`` are zeros).
    """
    T = tb.tokens.shape[1]
    with chunked_head(model, tb.tokens, tb.mask, temperature, head_chunk, entropy_grad, with_features,
                      compute=head) as out:
        model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
              logits_to_keep=T + 1, use_cache=False)
    return ForwardOut(logp=out.logp, entropy=out.entropy, hidden=out.hidden)


@torch.no_grad()
def compute_logprobs(model: Any, tb: TensorBatch, temperature: float, micro: int,
                     head_chunk: int = DEFAULT_HEAD_CHUNK) -> torch.Tensor:
    """(N, T) log-probs of ``tb.tokens`` under ``model`` (no grad, micro-batched; 0 where mask == 0)."""
    parts = [policy_forward(model, tb.index(s), temperature, with_features=False, head_chunk=head_chunk).logp
             for s in micro_slices(len(tb), micro)]
    return torch.cat(parts, dim=0) if parts else tb.mask.new_zeros(tb.mask.shape)
