"""``sketch``: an unbiased random projection of the vocabulary side, optionally of the hidden side:
K_hat_ij = (1/B) <S G_i R^T, S G_j R^T>_F with

  - S (m x V) a count sketch: every vocabulary entry v gets a bucket b(v) in [0, m) and a
    Rademacher sign s_v, (S x)_k = sum_{v: b(v)=k} s_v x_v. Buckets by random shifts: the
    vocabulary is cut into rows of m consecutive ids and row l is rotated by a uniform
    random shift, b(v) = (v mod m + shift_{v // m}) mod m. Ids of one row never collide,
    ids of different rows collide with probability exactly 1/m; with m >= V there is one
    row and the sketch is exact. E[S^T S] = I because the signs are independent with mean
    zero, whatever the buckets. S d_it is computed without forming S and without any
    gather over V: the softmax block is multiplied by the signs and each vocabulary row is
    added, rotated, with two slice additions; the e_y part is s_y subtracted at b(y).
  - R (q x H) Gaussian with entries N(0, 1/q), E[R^T R] = I (only if
    ``sketch_hidden_dim`` is given; otherwise R = I).

Unbiasedness: E[K_hat] = K since S and R are independent and both satisfy E[X^T X] = I.
Variance (vocabulary sketch alone, averaged over the bucket draw): for rows A = G_i,
C = G_j the error of B K_hat_ij is sum_{v != w, b(v)=b(w)} s_v s_w <A_v, C_w>, whose
variance is sum over colliding pairs {v, w} of (<A_v, C_w> + <A_w, C_v>)^2; a pair collides
with probability <= 1/m, so Var[K_hat_ij] <= (2/m) K_ii K_jj: the error of an entry
relative to sqrt(K_ii K_jj) falls like sqrt(2/m). The Gaussian hidden sketch adds a
term of the same form with 1/q. The projection depends only on (seed, V, H, m, q), never
on the batch, so every data-parallel rank draws the same S and R.

The count sketch's error has no bound: its Gram reports ``err_bound`` NaN and ``err_kind`` "none".
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from salt.algo.gram.base import register_features
from salt.algo.gram.options import GramOptions
from salt.algo.gram.tokens import _LogitSource, _stream_rows


@lru_cache(maxsize=8)
def _count_sketch(seed: int, V: int, m: int):
    """Count sketch of the vocabulary with random-shift hashing.

    The vocabulary is cut into L = ceil(V / m) rows of m consecutive ids; row l is rotated by
    a uniform random shift s_l: b(v) = (v mod m + s_{v // m}) mod m. Two ids of the same row
    never collide, two ids of different rows collide with probability exactly 1/m (over the
    shifts); every bucket gets at most L entries. Returns shifts (python ints, length L),
    bucket (V,) long and sign (V,) long Rademacher.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    L = -(-V // m)
    shifts = torch.randint(0, m, (L,), generator=gen)  # (L,)
    sign = torch.randint(0, 2, (V,), generator=gen).mul_(2).sub_(1)  # (V,) Rademacher
    v = torch.arange(V)
    bucket = (v % m + shifts[v // m]) % m  # (V,)
    return tuple(int(x) for x in shifts), bucket, sign


def _bucket_sums(out: torch.Tensor, x: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """out (n, m) = per-bucket sums of x (n, V): row l of the vocabulary, rotated by s_l, is
    added with two slice additions (no gather over V)."""
    m, V = out.shape[1], x.shape[1]
    out.zero_()
    for row, s in enumerate(shifts):
        lo = row * m
        w = min(m, V - lo)  # width of this vocabulary row (the last one may be short)
        head = min(w, m - s)  # ids lo .. lo+head-1 land in buckets s .. s+head-1
        out[:, s : s + head] += x[:, lo : lo + head]
        if w > head:  # the rest wraps around to buckets 0 .. w-head-1
            out[:, : w - head] += x[:, lo + head : lo + w]
    return out


@lru_cache(maxsize=8)
def _hidden_projection(seed: int, H: int, q: int) -> torch.Tensor:
    """(q, H) Gaussian with N(0, 1/q) entries (float64, CPU), from its own generator seeded by
    seed + 0x5A17 so that it is independent of the count sketch."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 0x5A17)
    return torch.randn(q, H, generator=gen, dtype=torch.float64) / math.sqrt(q)


def _sketch_features(
    src: _LogitSource, sketch_dim: int, sketch_hidden_dim: int | None, seed: int, chunk_size: int
) -> torch.Tensor:
    """(B, m*q) sketched features f_i = sum_t (S d_t)(R w_t h_t)^T flattened (q = H without R).
    The dimensions are checked by :class:`~salt.algo.gram.options.GramOptions`."""
    tok = src.tok
    device, dtype = tok.hw.device, tok.dtype
    m = min(int(sketch_dim), tok.V)
    shifts, bucket, sign = _count_sketch(seed, tok.V, m)
    bucket, sign = bucket.to(device), sign.to(device=device, dtype=dtype)
    hs = tok.hw  # (N, H)
    if sketch_hidden_dim is not None:
        R = _hidden_projection(seed, tok.H, int(sketch_hidden_dim)).to(device=device, dtype=dtype)
        hs = tok.hw @ R.T  # (N, q)
    q = hs.shape[1]
    A = torch.empty(tok.N, m, dtype=dtype, device=device)  # (N, m) rows S d_t
    c = _stream_rows(tok, chunk_size)
    buf = torch.empty(c, tok.V, dtype=dtype, device=device)  # (c, V)
    for a0 in range(0, tok.N, c):
        a1 = min(a0 + c, tok.N)
        p = src.block(buf[: a1 - a0], a0, a1)  # (n, V)
        p.mul_(sign)
        _bucket_sums(A[a0:a1], p, shifts)  # (n, m) = S p_t
        y = tok.y[a0:a1]
        A[a0 + torch.arange(a1 - a0, device=device), bucket[y]] -= sign[y]  # the e_y part
    F = torch.empty(tok.B, m, q, dtype=dtype, device=device)  # (B, m, q)
    a0 = 0
    for i, n_i in enumerate(tok.counts):  # valid tokens are sorted by rollout
        if n_i:
            F[i] = A[a0 : a0 + n_i].T @ hs[a0 : a0 + n_i]  # (m, n_i) @ (n_i, q)
        else:
            F[i].zero_()
        a0 += n_i
    return F.reshape(tok.B, m * q)  # (B, m*q)


@register_features("sketch", err_bound=float("nan"), err_kind="none")
def sketch_features(src: _LogitSource, opts: GramOptions) -> torch.Tensor:
    """``sketch``: the count-sketched features, (B, m*q)."""
    return _sketch_features(src, opts.sketch_dim, opts.sketch_hidden_dim, opts.seed, opts.chunk_size)
