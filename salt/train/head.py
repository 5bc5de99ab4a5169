"""The LM head in token chunks: log-probs and entropies of the sampled tokens, and their
gradients, from the final hidden states and the head weight, without the (tokens x vocabulary)
logits ever existing whole.

:class:`ChunkedHead` is an autograd function over the valid tokens' hidden states h (n, H), the
head weight W (V, H) (and bias), the sampled tokens y (n,). It works in tiles of ``chunk`` tokens x
``vocab_block`` vocabulary ids. The forward forms each tile's logits z = h W^T (+ b) in the
weight's dtype (as ``nn.Linear`` does, autocast included), s = float(z) / T, and folds them into
an online log-sum-exp over the vocabulary blocks: per token the running max m, Z = sum_v e^(s_v - m)
and S = sum_v e^(s_v - m) (s_v - m), rescaled when m grows; it keeps log p_y = s_y - lse,
lse = m + log Z and the entropy H = log Z - S / Z, and frees the tile. The backward recomputes
each tile's logits and applies the chain rule of ``log_softmax``, ``gather`` and the entropy in
one pass, since sum_v G_v is known from the forward's entropy:

    G = g_lp e_y - g_H p (log p + 1),   sum_v G_v = g_lp - g_H (1 - H),
    grad_s = G - p sum_v G_v = p (-g_H (log p + H) - g_lp) + g_lp e_y,   grad_z = grad_s / T,
    grad_h += grad_z W[blk],   grad_W[blk] += grad_z^T h,   grad_b[blk] += sum_t grad_z.

Peak head memory: two float32 (chunk x vocab_block) tiles (16 MB each at 512 x 8192) plus the
(V, H) weight gradient and a few (n,) and (n, H) vectors, instead of four float32 (tokens x V)
tensors. (Before, the tiles were whole (chunk x V) rows: 0.6 GB at 512 x 151,936.) Extra compute:
the logits matmul once more in the backward (2 n V H flops, a third of the head's forward +
backward).

When the whole vocabulary fits one block (V <= vocab_block: every model whose vocabulary is at most
8,192 ids, the toy model among them) a tile is a whole row and the head runs the plain form instead:
log p = log_softmax(s) per chunk, the entropy -sum_v p_v log p_v, and in the backward autograd's own
chain rule through ``log_softmax`` (sum_v G_v summed, not taken from the entropy). That is round 1 of
this head, bit for bit, so small-vocabulary runs keep their numbers; the tiled form is tested against
it (tests/train/test_head.py) and equals it within float32 rounding.

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
DEFAULT_VOCAB_BLOCK = 8192


def _tile(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, v0: int, v1: int,
          temperature: float, zdtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.dtype]:
    """(c, v1 - v0) float(h W[v0:v1]^T + b[v0:v1]) / T (float32, float64 for a float64 head) and the
    logits' dtype (the head's, autocast's in the forward, or ``zdtype`` when given: the backward)."""
    w = weight[v0:v1]
    b = None if bias is None else bias[v0:v1]
    if zdtype is not None:
        w, b = w.to(zdtype), None if b is None else b.to(zdtype)
    z = torch.nn.functional.linear(h, w, b)  # (c, vb)
    s = z.to(torch.promote_types(z.dtype, torch.float32))  # z itself when it is float32 / float64
    return s.div_(temperature), z.dtype  # in place: z (or its upcast) is a fresh buffer


def _add_matmul(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, summed in out's dtype (in place with addmm when the operands share it)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out += (a @ b).to(out.dtype)


def _rows_forward(h, weight, bias, y, temperature: float, chunk: int):
    """The whole-row form (V <= vocab_block): log p = log_softmax(s) of each (c, V) chunk."""
    n = h.shape[0]
    logp, ent = [], []
    zdtype = torch.promote_types(h.dtype, weight.dtype)
    for a in range(0, max(n, 1), chunk):
        b = min(a + chunk, n)
        s, zdtype = _tile(h[a:b], weight, bias, 0, weight.shape[0], temperature)
        lp = torch.log_softmax(s, dim=-1)
        del s
        logp.append(lp.gather(1, y[a:b, None]).squeeze(1))
        ent.append(-(lp.exp().mul_(lp)).sum(-1))
        del lp
    return torch.cat(logp), torch.cat(ent), zdtype


def _rows_backward(h, weight, bias, y, g_lp, g_ent, T: float, chunk: int, zd, need):
    """The whole-row form's backward: autograd's chain rule through ``log_softmax``, ``gather`` and
    the entropy on each recomputed (c, V) chunk (sum_v G_v summed over the row)."""
    need_h, need_w, need_b = need
    n = h.shape[0]
    Wz = weight.to(zd)  # (V, H) in the logits' dtype (no copy without autocast)
    bz = None if bias is None else bias.to(zd)
    grad_h = torch.empty(h.shape, dtype=zd, device=h.device) if need_h else None
    acc = torch.promote_types(zd, torch.float32)  # the weight gradient sums over chunks in this dtype
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        hc = h[a:b].to(zd)
        s, _ = _tile(hc, Wz, bz, 0, Wz.shape[0], T)
        G = torch.log_softmax(s, dim=-1)  # (c, V) log p recomputed; G becomes d loss / d log p
        del s
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
            _add_matmul(grad_w, gz.T, hc)
        if need_b:
            grad_b += gz.sum(0, dtype=acc)
        del gz
    return grad_h, grad_w, grad_b


class ChunkedHead(torch.autograd.Function):
    """(log p_y (n,), entropy (n,)) of the head over the valid tokens, in tiles of ``chunk`` tokens x
    ``vocab_block`` ids (float32; float64 for a float64 head).

    Inputs: h (n, H), weight (V, H), bias (V,) or None, y (n,) long, temperature, chunk[, vocab_block].
    The forward keeps per token only log Z and the entropy (an online log-sum-exp over the vocabulary
    blocks); the backward recomputes each tile's logits in the dtype the forward formed them in
    (autocast's, if on) and needs no second pass over the vocabulary, since sum_v G_v is known from
    the entropy (module docstring). When V <= vocab_block it runs the whole-row form instead.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, temperature: float, chunk: int, *vocab_block: int):  # noqa: D102
        vb = vocab_block[0] if vocab_block else DEFAULT_VOCAB_BLOCK
        n, V = h.shape[0], weight.shape[0]
        ctx.nargs, ctx.rows = 6 + len(vocab_block), V <= vb
        if ctx.rows:  # one block holds the whole vocabulary: the plain whole-row form
            lp, ent, ctx.zdtype = _rows_forward(h, weight, bias, y, temperature, chunk)
            ctx.save_for_backward(h, weight, bias, y)
            ctx.temperature, ctx.chunk = temperature, chunk
            return lp, ent
        zdtype = torch.promote_types(h.dtype, weight.dtype)
        odt = torch.promote_types(zdtype, torch.float32)
        mx = torch.empty(n, dtype=odt, device=h.device)  # max_v s_v
        lz = torch.empty(n, dtype=odt, device=h.device)  # log sum_v e^(s_v - max): log p = (s - max) - lz
        ent = torch.empty(n, dtype=odt, device=h.device)
        sy = torch.zeros(n, dtype=odt, device=h.device)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            hc, yc = h[a:b], y[a:b]
            m = Z = S = None  # running max, sum_v e^(s_v - m), sum_v e^(s_v - m) (s_v - m)
            for v0 in range(0, V, vb):
                v1 = min(v0 + vb, V)
                s, zdtype = _tile(hc, weight, bias, v0, v1, temperature)  # (c, vb)
                inb = (yc >= v0) & (yc < v1)  # the tokens whose sampled id is in this block (no host sync)
                got = s.gather(1, (yc - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
                sy[a:b] = torch.where(inb, got, sy[a:b])
                mb = s.amax(-1)
                mn = mb if m is None else torch.maximum(m, mb)
                s.sub_(mn[:, None])  # s - m_new <= 0
                e = s.exp()
                zb = e.sum(-1)
                sb = e.mul_(s).sum(-1)
                del e, s
                if m is None:
                    Z, S = zb, sb
                else:  # rescale the running sums from m to mn: e^(m - mn) (S + (m - mn) Z)
                    d = m - mn
                    r = d.exp()
                    S = r * (S + d * Z) + sb
                    Z = r * Z + zb
                m = mn
            logZ = Z.log()
            mx[a:b], lz[a:b] = m, logZ
            ent[a:b] = logZ - S / Z  # -sum p log p = log Z - sum p (s - m)
        # log p_y as log_softmax forms it: (s - max) - log Z (not s - (max + log Z), whose rounding
        # at |s| >> 1 would make sum_v p_v != 1 in the backward by more than float32's epsilon)
        ctx.save_for_backward(h, weight, bias, y, mx, lz, ent)
        ctx.temperature, ctx.chunk, ctx.vb, ctx.zdtype = temperature, chunk, vb, zdtype
        return (sy - mx) - lz, ent.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):  # noqa: D102
        if ctx.rows:
            h, weight, bias, y = ctx.saved_tensors
            with torch.autocast(h.device.type, enabled=False):
                grad_h, grad_w, grad_b = _rows_backward(h, weight, bias, y, g_lp, g_ent, ctx.temperature, ctx.chunk,
                                                        ctx.zdtype, ctx.needs_input_grad[:3])
            return ChunkedHead._grads(ctx, h, weight, bias, grad_h, grad_w, grad_b)
        # grad_s_v = G_v - p_v sum_u G_u with G = -g_H p (log p + 1) + g_lp e_y and sum_u G_u =
        # g_lp - g_H (1 - H): grad_s = p (-g_H (log p + H) - g_lp) + g_lp e_y, one pass per tile
        h, weight, bias, y, mx, lz, ent = ctx.saved_tensors
        T, chunk, vb, zd = ctx.temperature, ctx.chunk, ctx.vb, ctx.zdtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, V = h.shape[0], weight.shape[0]
        acc = torch.promote_types(zd, torch.float32)  # gradients sum over tiles in this dtype
        with torch.autocast(h.device.type, enabled=False):
            grad_h = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            a_lp = (torch.zeros_like(lz) if g_lp is None else g_lp.to(lz.dtype)) / T  # (n,) coefficients of the tile, / T
            a_ent = None if g_ent is None else g_ent.to(lz.dtype) / T
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                hc, yc = h[a:b].to(zd), y[a:b]
                gl = a_lp[a:b, None]
                for v0 in range(0, V, vb):
                    v1 = min(v0 + vb, V)
                    s, _ = _tile(hc, weight, bias, v0, v1, T, zd)
                    s.sub_(mx[a:b, None]).sub_(lz[a:b, None])  # log p
                    p = s.exp()
                    if a_ent is not None:  # (-g_H (log p + H) - g_lp) p / T
                        gz = s.add_(ent[a:b, None]).mul_(-a_ent[a:b, None]).sub_(gl).mul_(p)
                        del p
                    else:
                        gz = p.mul_(-gl)
                    del s
                    inb = (yc >= v0) & (yc < v1)  # + g_lp / T at the sampled id, if in this block
                    gz.scatter_add_(1, (yc - v0).clamp(0, v1 - v0 - 1)[:, None], (gl.squeeze(1) * inb)[:, None])
                    gzz = gz.to(zd)
                    if need_h:
                        _add_matmul(grad_h[a:b], gzz, weight[v0:v1].to(zd))
                    if need_w:
                        _add_matmul(grad_w[v0:v1], gzz.T, hc)
                    if need_b:
                        grad_b[v0:v1] += gz.sum(0, dtype=acc)
                    del gz, gzz
        return ChunkedHead._grads(ctx, h, weight, bias, grad_h, grad_w, grad_b)

    @staticmethod
    def _grads(ctx, h, weight, bias, grad_h, grad_w, grad_b) -> tuple:
        """The backward's return: the gradients in their inputs' dtypes, None for the other arguments."""
        out = (None if grad_h is None else grad_h.to(h.dtype), None if grad_w is None else grad_w.to(weight.dtype),
               None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)
        return out[:ctx.nargs]


def head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                  temperature: float, chunk: int, vocab_block: int = DEFAULT_VOCAB_BLOCK
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`ChunkedHead` with its arguments checked: h (n, H), weight (V, H), y (n,)."""
    if chunk < 1:
        raise ValueError(f"head chunk must be >= 1 (train.head_chunk_size), got {chunk}")
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or y.shape != h.shape[:1]:
        raise ValueError(f"need h (n, H), weight (V, H), y (n,); got {tuple(h.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(y.shape)}")
    if vocab_block < 1:
        raise ValueError(f"head vocabulary block must be >= 1, got {vocab_block}")
    return ChunkedHead.apply(h, weight, bias, y.long(), float(temperature), int(chunk), int(vocab_block))


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
