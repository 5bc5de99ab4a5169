"""The LM head in token chunks: log-probs and entropies of the sampled tokens, and their
gradients, from the final hidden states and the head weight, without the (tokens x vocabulary)
logits ever existing whole.

:class:`ChunkedHead` is an autograd function over the valid tokens' hidden states h (n, H), the
head weight W (V, H) (and bias), the sampled tokens y (n,). Per chunk of ``chunk`` tokens the
forward forms the logits z = h W^T (+ b) in the weight's dtype (as ``nn.Linear`` does, autocast
included), s = float(z) / T, log p = log_softmax(s), and keeps only log p_y, the entropy
-sum_v p_v log p_v and the chunk is freed; the backward recomputes each chunk's logits and
applies the same chain rule as autograd through ``log_softmax``, ``gather`` and the entropy:

    G = g_lp e_y - g_H p (log p + 1),   grad_s = G - p sum_v G_v,   grad_z = grad_s / T,
    grad_h = grad_z W,   grad_W += grad_z^T h,   grad_b += sum_t grad_z.

Peak head memory: about two float32 (chunk x V) blocks plus the (V, H) weight gradient, instead
of four float32 (tokens x V) tensors. Extra compute: the logits matmul once more in the backward
(2 n V H flops, a third of the head's forward + backward).

:func:`chunked_head` runs it inside the model's own forward: it replaces the forward of the
model's output embedding for one call (so wrappers that gather sharded weights in the forward,
FSDP and DeepSpeed ZeRO-3, hand it the full weight, and tied embeddings share the gradient).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

DEFAULT_HEAD_CHUNK = 512


def _chunk_log_softmax(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       temperature: float) -> tuple[torch.Tensor, torch.dtype]:
    """(c, V) log_softmax(float(h W^T + b) / T) of one chunk (float32, float64 for a float64 head)
    and the logits' dtype (the head's, or autocast's); one (c, V) buffer besides the result."""
    z = torch.nn.functional.linear(h, weight, bias)  # (c, V)
    s = z.to(torch.promote_types(z.dtype, torch.float32))  # z itself when it is float32 / float64
    s.div_(temperature)  # in place: z is a fresh buffer
    return torch.log_softmax(s, dim=-1), z.dtype


class ChunkedHead(torch.autograd.Function):
    """(log p_y (n,), entropy (n,)) of the head over the valid tokens, chunk by chunk (float32; float64
    for a float64 head).

    Inputs: h (n, H), weight (V, H), bias (V,) or None, y (n,) long, temperature, chunk. The
    backward recomputes the logits in the dtype the forward formed them in (autocast's, if on).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, temperature: float, chunk: int):  # noqa: D102
        n = h.shape[0]
        logp, ent = [], []
        zdtype = torch.promote_types(h.dtype, weight.dtype)
        for a in range(0, max(n, 1), chunk):
            b = min(a + chunk, n)
            lp, zdtype = _chunk_log_softmax(h[a:b], weight, bias, temperature)  # (c, V)
            logp.append(lp.gather(1, y[a:b, None]).squeeze(1))
            ent.append(-(lp.exp().mul_(lp)).sum(-1))
            del lp
        ctx.save_for_backward(h, weight, bias, y)
        ctx.temperature, ctx.chunk, ctx.zdtype = temperature, chunk, zdtype
        return torch.cat(logp), torch.cat(ent)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):  # noqa: D102
        h, weight, bias, y = ctx.saved_tensors
        T, chunk, zd = ctx.temperature, ctx.chunk, ctx.zdtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            Wz = weight.to(zd)  # (V, H) in the logits' dtype (no copy without autocast)
            bz = None if bias is None else bias.to(zd)
            grad_h = torch.empty(h.shape, dtype=zd, device=h.device) if need_h else None
            acc = torch.promote_types(zd, torch.float32)  # the weight gradient sums over chunks in this dtype
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                hc = h[a:b].to(zd)
                G, _ = _chunk_log_softmax(hc, Wz, bz, T)  # (c, V) log p recomputed; G: d loss / d log p
                p = G.exp()
                if g_ent is not None:
                    G.add_(1.0).mul_(p).mul_(-g_ent[a:b, None])  # d(-sum p log p) / d log p
                else:
                    G.zero_()
                if g_lp is not None:
                    G[torch.arange(b - a, device=G.device), y[a:b]] += g_lp[a:b]
                G.sub_(p.mul_(G.sum(-1, keepdim=True)))  # log_softmax's backward
                del p
                gz = G.div_(T).to(zd)  # (c, V) gradient of the logits (float(z) / T)
                del G
                if need_h:
                    torch.matmul(gz, Wz, out=grad_h[a:b])
                if need_w:
                    if zd == acc:
                        grad_w.addmm_(gz.T, hc)
                    else:
                        grad_w += (gz.T @ hc).to(acc)
                if need_b:
                    grad_b += gz.sum(0, dtype=acc)
                del gz
        return (None if grad_h is None else grad_h.to(h.dtype), None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                  temperature: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`ChunkedHead` with its arguments checked: h (n, H), weight (V, H), y (n,)."""
    if chunk < 1:
        raise ValueError(f"head chunk must be >= 1 (train.head_chunk_size), got {chunk}")
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or y.shape != h.shape[:1]:
        raise ValueError(f"need h (n, H), weight (V, H), y (n,); got {tuple(h.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(y.shape)}")
    return ChunkedHead.apply(h, weight, bias, y.long(), float(temperature), int(chunk))


def unwrap_module(model: Any) -> Any:
    """The module inside DDP / FSDP v1 / DeepSpeed wrappers (their ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def output_head(model: Any) -> torch.nn.Module:
    """The model's LM head (``get_output_embeddings()``), a module with ``weight`` (V, H) and ``bias``."""
    inner = unwrap_module(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise TypeError(f"{type(inner).__name__} has no output embedding with a weight (get_output_embeddings()): "
                        "the chunked LM head needs a causal LM whose head is a linear layer")
    return head


@dataclass
class HeadOut:
    """What one chunked-head call leaves: log-probs, entropies (b, T), the head's input (b, T, H)."""

    logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


@contextlib.contextmanager
def chunked_head(model: Any, tokens: torch.Tensor, mask: torch.Tensor, temperature: float, chunk: int,
                 entropy_grad: bool, keep_hidden: bool, compute: bool = True) -> Iterator[HeadOut]:
    """During one forward of ``model`` with ``logits_to_keep = T + 1``: the head computes, for the
    valid (mask != 0) positions of ``tokens`` (b, T), log p_y and the entropy with
    :class:`ChunkedHead` (zeros elsewhere) into the yielded :class:`HeadOut`, and keeps its input's
    response positions (detached) if ``keep_hidden``. ``compute=False`` skips the head's work (the
    no-grad pass that only collects the hidden states). The model's ``logits`` output becomes a
    (b, T + 1, 2) tensor of [log p_y, entropy] (it carries the autograd graph, so DDP sees the
    head's weight used)."""
    head = output_head(model)
    out = HeadOut()

    def forward(x: torch.Tensor) -> torch.Tensor:  # x (b, T + 1, H): position Lp-1+t predicts token t
        b, T = tokens.shape
        if x.shape[:2] != (b, T + 1):
            raise RuntimeError(f"chunked head expected (b, T + 1) = {(b, T + 1)} head inputs, got {tuple(x.shape[:2])}")
        xs = x[:, :-1, :]
        if keep_hidden:
            out.hidden = xs.detach()
        zeros = torch.zeros(b, T, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        if not compute:
            out.logp, out.entropy = zeros, zeros
            return zeros.new_zeros(b, T + 1, 2)
        idx = torch.nonzero(mask.reshape(-1) != 0, as_tuple=False).squeeze(1)  # (n,)
        h = xs.reshape(b * T, -1).index_select(0, idx)  # (n, H)
        lp, ent = head_logprobs(h, head.weight, head.bias, tokens.reshape(-1).index_select(0, idx), temperature, chunk)
        if not (entropy_grad and torch.is_grad_enabled()):
            ent = ent.detach()
        out.logp = zeros.reshape(-1).index_copy(0, idx, lp).reshape(b, T)
        out.entropy = zeros.reshape(-1).index_copy(0, idx, ent).reshape(b, T)
        packed = torch.stack([out.logp, out.entropy], -1)  # (b, T, 2)
        return torch.cat([packed, packed.new_zeros(b, 1, 2)], 1)  # (b, T + 1, 2)

    head.forward = forward  # this instance only, for this call
    try:
        yield out
    finally:
        del head.forward
