"""Gram geometry of per-rollout LM-head gradients (methods.md 3.1, 3.2, 3.5).

Per rollout i the feature is the LM-head gradient of the unweighted loss
L_i = -sum_t m_it log softmax(z_it / T)[y_it]:

    g_i = sum_t d_it h_it^T  in R^{V x H},   d_it = m_it (softmax(z_it / T) - e_{y_it})

and the Gram is K = G G^T / B, i.e.

    K_ij = (1/B) sum_{t,s} (d_it . d_js) (h_it . h_js).

Backends of :func:`lm_head_gram`:

* ``dense``  forms every g_i (V*H numbers each). Reference only.
* ``exact``  token-pair factorisation over the valid (mask != 0) tokens only, in blocks of
  ``chunk_size`` tokens. It holds one block of d (chunk_size x V), one streamed block of
  chunk_size/4 x V and chunk_size^2 pair products, never B x V x H. d is formed by writing
  the softmax into a reused block buffer and subtracting 1 at y (the e_y part is one indexed
  write per token); the mask weight multiplies h instead of the V-wide d.
* ``sketch`` unbiased random projection of the vocabulary side, optionally of the hidden side:
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
* ``auto``   exact when :func:`gram_cost` says it is cheaper than the sketch, else sketch.

All functions are pure: no global RNG (sketches use a ``torch.Generator`` seeded by ``seed``),
no logging. Inputs are never modified; gradients never flow (h and z are detached).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

GRAM_METHODS = ("dense", "exact", "sketch", "auto")
FEATURE_METHODS = ("dense", "sketch")

DEFAULT_CHUNK_SIZE = 512
DEFAULT_SKETCH_DIM = 1024

# Cost model of `gram_cost`: one elementwise pass over a (tokens x V) block (max, exp, sum,
# gather) costs about as much wall time on CPU as this many matmul flops per element
# (measured 30-45 on a 2-thread AVX-512 Xeon: softmax of 1024 x 32000 vs a 512 x 512 x 32000
# matmul).
ELEMENTWISE_FLOP_WEIGHT = 40.0
# Elementwise passes over the logits per softmax (scale, max, exp, sum, normalise).
_SOFTMAX_PASSES = 5
# Extra passes of the sketch: multiply by signs, rotated bucket sums.
_SKETCH_PASSES = 2
# The sketch streams blocks of about this many bytes (at least 16 tokens): its bucket sums
# are ceil(V / m) pairs of slice additions per block, so blocks must not be too small.
_SKETCH_BLOCK_BYTES = 16 << 20


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_inputs(hidden, logits, tokens, mask, temperature) -> None:
    if hidden.dim() != 3 or logits.dim() != 3:
        raise ValueError(
            f"hidden must be (B, T, H) and logits (B, T, V); got hidden {tuple(hidden.shape)} "
            f"and logits {tuple(logits.shape)}"
        )
    B, T, _ = hidden.shape
    if logits.shape[:2] != (B, T):
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and logits {tuple(logits.shape)} disagree on (B, T)"
        )
    if tuple(tokens.shape) != (B, T) or tuple(mask.shape) != (B, T):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must both be (B, T) = {(B, T)}"
        )
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be an integer tensor (torch.long), got {tokens.dtype}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    V = logits.shape[-1]
    valid = mask != 0
    if valid.any():
        y = tokens[valid]
        if int(y.min()) < 0 or int(y.max()) >= V:
            raise ValueError(
                f"tokens of valid (mask != 0) positions must lie in [0, V={V}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ValueError(f"unknown gram method '{method}': choose one of {', '.join(allowed)}")


class _Tokens:
    """The valid tokens of a batch, compressed to N rows (row-major order over (B, T)).

    hw (N, H) mask-weighted hidden states w_t h_t (folding the mask weight into h gives
    d_t = w_t (p_t - e_y) on the other side for free), y (N,), r (N,) rollout index of each
    token (sorted), flat (N,) position in the flattened (B*T). The logits are not copied:
    :meth:`d_block` writes one block of valid rows at a time into a caller-owned buffer.
    """

    def __init__(self, hidden, logits, tokens, mask, dtype):
        B, T, H = hidden.shape
        flat_mask = mask.reshape(B * T)  # (B*T,)
        self.flat = torch.nonzero(flat_mask != 0, as_tuple=False).squeeze(1)  # (N,)
        self.B, self.T, self.H, self.V = B, T, H, logits.shape[-1]
        self.N = int(self.flat.numel())
        self.r = torch.div(self.flat, T, rounding_mode="floor")  # (N,)
        self.z_flat = logits.detach().reshape(B * T, self.V)  # (B*T, V), a view when contiguous
        w = flat_mask.index_select(0, self.flat).to(dtype)  # (N,)
        h = hidden.detach().reshape(B * T, H).index_select(0, self.flat).to(dtype)  # (N, H)
        self.hw = h * w.unsqueeze(1)  # (N, H)
        self.y = tokens.reshape(B * T).index_select(0, self.flat).long()  # (N,)
        self.dtype = dtype
        self.counts = torch.bincount(self.r, minlength=B).tolist()  # valid tokens per rollout

    def softmax_block(self, out: torch.Tensor, a0: int, a1: int, inv_t: float) -> torch.Tensor:
        """Write softmax(z_t * inv_t) of valid tokens a0..a1-1 into ``out`` (a1 - a0, V)."""
        r0, r1 = int(self.flat[a0]), int(self.flat[a1 - 1]) + 1
        if r1 - r0 == a1 - a0 and inv_t == 1.0 and self.z_flat.dtype == out.dtype:
            return torch.softmax(self.z_flat[r0:r1], dim=1, out=out)  # contiguous rows: no copy
        if r1 - r0 == a1 - a0 and self.z_flat.dtype == out.dtype:
            torch.mul(self.z_flat[r0:r1], inv_t, out=out)  # one pass: scale into the buffer
            return torch.softmax(out, dim=1, out=out)
        if r1 - r0 == a1 - a0:
            out.copy_(self.z_flat[r0:r1])  # upcasts bf16/fp16 logits one block at a time
        elif self.z_flat.dtype == out.dtype:
            torch.index_select(self.z_flat, 0, self.flat[a0:a1], out=out)
        else:
            out.copy_(self.z_flat.index_select(0, self.flat[a0:a1]))
        if inv_t != 1.0:
            out.mul_(inv_t)
        return torch.softmax(out, dim=1, out=out)

    def d_block(self, out: torch.Tensor, a0: int, a1: int, inv_t: float) -> torch.Tensor:
        """Write p_t - e_{y_t} for valid tokens a0..a1-1 into ``out``; the mask weight w_t is
        carried by ``hw``. The e_y part is one indexed write per token."""
        self.softmax_block(out, a0, a1, inv_t)
        rows = torch.arange(a1 - a0, device=out.device)
        out[rows, self.y[a0:a1]] -= 1.0
        return out


def _normalise(K: torch.Tensor, B: int, normalizer: float | None, out_dtype) -> torch.Tensor:
    denom = float(B if normalizer is None else normalizer)
    if not denom > 0:
        raise ValueError(f"normalizer must be > 0 (the global number of rollouts), got {normalizer}")
    K = (K + K.T) / (2.0 * denom)
    return K.to(out_dtype)


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------


def _dense_features(tok: _Tokens, inv_t: float) -> torch.Tensor:
    """(B, V*H): every g_i = sum_t d_it h_it^T flattened. Memory B*V*H: reference only."""
    G = torch.zeros(tok.B, tok.V, tok.H, dtype=tok.dtype, device=tok.hw.device)  # (B, V, H)
    a0 = 0
    for i, n_i in enumerate(tok.counts):  # valid tokens are sorted by rollout
        if n_i == 0:
            continue
        d = torch.empty(n_i, tok.V, dtype=tok.dtype, device=tok.hw.device)  # (n_i, V)
        tok.d_block(d, a0, a0 + n_i, inv_t)
        G[i] = d.T @ tok.hw[a0 : a0 + n_i]  # (V, n_i) @ (n_i, H) -> (V, H)
        a0 += n_i
    return G.reshape(tok.B, tok.V * tok.H)  # (B, V*H)


class _PairAccumulator:
    """K[i, j] += sum over token pairs (t in i, s in j) of (d_t . d_s)(w_t h_t . w_s h_s)."""

    def __init__(self, tok: _Tokens):
        self.tok = tok
        self.K = torch.zeros(tok.B, tok.B, dtype=torch.float64, device=tok.hw.device)
        # (B, N) one-hot rollout membership: per-rollout sums of a token-pair block are two
        # tiny matmuls (index_add over rows is far slower on CPU)
        self.onehot = torch.zeros(tok.B, tok.N, dtype=torch.float64, device=tok.hw.device)
        self.onehot[tok.r, torch.arange(tok.N, device=tok.hw.device)] = 1.0

    def add(self, Da: torch.Tensor, a0: int, Db: torch.Tensor, b0: int, symmetric: bool) -> None:
        """Da (ca, V) holds tokens a0.., Db (cb, V) tokens b0..; adds the (a, b) pair block and,
        if ``symmetric`` (disjoint token ranges), its mirror (b, a)."""
        tok, ca, cb = self.tok, Da.shape[0], Db.shape[0]
        M = (Da @ Db.T) * (tok.hw[a0 : a0 + ca] @ tok.hw[b0 : b0 + cb].T)  # (ca, cb)
        blk = self.onehot[:, a0 : a0 + ca] @ M.to(torch.float64) @ self.onehot[:, b0 : b0 + cb].T  # (B, B)
        self.K += blk + blk.T if symmetric else blk


def _exact_gram(tok: _Tokens, inv_t: float, chunk_size: int) -> torch.Tensor:
    """Unnormalised sum_{t,s} (d_t . d_s)(h_t . h_s) per rollout pair, (B, B) float64.

    Outer blocks of c = chunk_size valid tokens are computed once into one (c, V) buffer;
    inside a block only sub-block pairs i <= j of size c/4 are multiplied (the block is
    symmetric); the tokens after the block are streamed through a second (c/4, V) buffer.
    Memory: (c + c/4) V numbers. Softmax work: about N + N (N - c) / (2c) rows.
    """
    N, V = tok.N, tok.V
    acc = _PairAccumulator(tok)
    if N == 0:
        return acc.K
    c = max(1, min(chunk_size, N))
    cs = max(1, c // 4)
    buf_a = torch.empty(c, V, dtype=tok.dtype, device=tok.hw.device)  # (c, V)
    buf_b = torch.empty(cs, V, dtype=tok.dtype, device=tok.hw.device) if N > c else None  # (c/4, V)
    for a0 in range(0, N, c):
        a1 = min(a0 + c, N)
        Da = tok.d_block(buf_a[: a1 - a0], a0, a1, inv_t)  # (ca, V)
        subs = list(range(0, a1 - a0, cs))
        for i, s0 in enumerate(subs):
            for s1 in subs[i:]:
                Xa, Xb = Da[s0 : s0 + cs], Da[s1 : s1 + cs]
                acc.add(Xa, a0 + s0, Xb, a0 + s1, symmetric=s1 != s0)
        for b0 in range(a1, N, cs):
            b1 = min(b0 + cs, N)
            Db = tok.d_block(buf_b[: b1 - b0], b0, b1, inv_t)  # (cb, V)
            acc.add(Da, a0, Db, b0, symmetric=True)
    return acc.K


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
    tok: _Tokens, inv_t: float, sketch_dim: int, sketch_hidden_dim: int | None, seed: int, chunk_size: int
) -> torch.Tensor:
    """(B, m*q) sketched features f_i = sum_t (S d_t)(R w_t h_t)^T flattened (q = H without R)."""
    if sketch_dim < 1:
        raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
    if sketch_hidden_dim is not None and sketch_hidden_dim < 1:
        raise ValueError(f"sketch_hidden_dim must be >= 1 or None, got {sketch_hidden_dim}")
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
    block_rows = max(16, _SKETCH_BLOCK_BYTES // (tok.V * _element_size(dtype)))
    c = max(1, min(chunk_size, max(tok.N, 1), block_rows))
    buf = torch.empty(c, tok.V, dtype=dtype, device=device)  # (c, V)
    for a0 in range(0, tok.N, c):
        a1 = min(a0 + c, tok.N)
        p = tok.softmax_block(buf[: a1 - a0], a0, a1, inv_t)  # (n, V)
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


def gram_cost(
    n_tokens: int, vocab: int, hidden: int, batch: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
    sketch_dim: int = DEFAULT_SKETCH_DIM, sketch_hidden_dim: int | None = None,
) -> dict[str, float]:
    """Flop-equivalent cost estimates of the ``exact`` and ``sketch`` backends.

    exact : N^2 (V + H) matmul flops over the token-block pairs a <= b (half of
            2 N^2 (V + H)) plus the softmax work on N + N^2 / (2 chunk_size) rows;
    sketch: one softmax + two passes (signs, bucket sums) over N x V, the hidden projection
            2 N H q, the contraction 2 N m q and the feature Gram 2 B^2 m q.
    Elementwise work is weighted by ``ELEMENTWISE_FLOP_WEIGHT`` flops per element.
    """
    N, V, H, B = float(n_tokens), float(vocab), float(hidden), float(batch)
    ew = ELEMENTWISE_FLOP_WEIGHT
    softmax_rows = N + N * max(N - chunk_size, 0.0) / (2.0 * max(1, chunk_size))
    exact = N * N * (V + H) + ew * _SOFTMAX_PASSES * softmax_rows * V
    m = min(float(sketch_dim), V)
    q = H if sketch_hidden_dim is None else float(sketch_hidden_dim)
    proj = 0.0 if sketch_hidden_dim is None else 2 * N * H * q
    sketch = ew * (_SOFTMAX_PASSES + _SKETCH_PASSES) * N * V + proj + 2 * N * m * q + 2 * B * B * m * q
    return {"exact": exact, "sketch": sketch}


def choose_method(n_tokens: int, vocab: int, hidden: int, batch: int, **kw) -> str:
    """``auto``'s rule: 'exact' when its :func:`gram_cost` is below the sketch's, else 'sketch'."""
    cost = gram_cost(n_tokens, vocab, hidden, batch, **kw)
    return "exact" if cost["exact"] <= cost["sketch"] else "sketch"


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def gram_from_features(features: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """K = F F^T / normalizer, symmetrised. features (B, F); normalizer defaults to B. -> (B, B)."""
    if features.dim() != 2:
        raise ValueError(f"features must be (B, F), got shape {tuple(features.shape)}")
    dtype = _compute_dtype(features)
    F = features.to(dtype)
    return _normalise(F @ F.T, F.shape[0], normalizer, dtype)


def lm_head_gram(
    hidden: torch.Tensor,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    method: str = "exact",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    sketch_hidden_dim: int | None = None,
    seed: int = 0,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Gram of per-rollout LM-head gradients, K = G G^T / B (methods.md 3.2).

    Args:
        hidden: (B, T, H) final hidden states (input of the LM head); detached here.
        logits: (B, T, V) logits of the same forward pass (not yet divided by T).
        tokens: (B, T) long, the sampled response tokens y.
        mask: (B, T) response mask m (bool or numbers; only mask != 0 positions count and the
            value multiplies d_it).
        temperature: sampling temperature T (> 0); the softmax is of z / T.
        method: "dense" | "exact" | "sketch" | "auto" (see the module docstring).
        chunk_size: tokens per block of ``exact`` (peak extra memory about
            1.25 * chunk_size * V numbers); the sketch streams cache-sized blocks of at most
            chunk_size tokens.
        sketch_dim: m, vocabulary buckets of the count sketch (clamped to V: exact at m >= V).
        sketch_hidden_dim: q, Gaussian projection of the hidden side; None keeps all H.
        seed: seeds the sketch; the same seed gives the same projection on every rank.
        normalizer: divide by this instead of B (e.g. the global batch size).

    Returns:
        (B, B) symmetric, float64 if hidden or logits are float64, else float32.
    """
    _check_method(method, GRAM_METHODS)
    _check_inputs(hidden, logits, tokens, mask, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(hidden, logits)
    tok = _Tokens(hidden, logits, tokens, mask, dtype)
    inv_t = 1.0 / float(temperature)
    if method == "auto":
        method = choose_method(
            tok.N, tok.V, tok.H, tok.B, chunk_size=chunk_size, sketch_dim=sketch_dim,
            sketch_hidden_dim=sketch_hidden_dim,
        )
    if method == "exact":
        K = _exact_gram(tok, inv_t, chunk_size)
    elif method == "dense":
        G = _dense_features(tok, inv_t)
        K = G @ G.T
    else:
        F = _sketch_features(tok, inv_t, sketch_dim, sketch_hidden_dim, seed, chunk_size)
        K = F @ F.T
    return _normalise(K, tok.B, normalizer, dtype)


def rollout_features(
    hidden: torch.Tensor,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    method: str = "sketch",
    *,
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    sketch_hidden_dim: int | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Per-rollout feature rows F (B, F) with K = F F^T / B_total.

    ``sketch``: F = m*q (m*H without a hidden sketch) numbers per rollout, the features whose
    Gram is ``lm_head_gram(..., method="sketch")`` with the same arguments and seed; the
    trainer all-gathers them across ranks (scope=global) and calls :func:`gram_from_features`.
    ``dense``: the full flattened g_i (V*H each); small models only.
    """
    _check_method(method, FEATURE_METHODS)
    _check_inputs(hidden, logits, tokens, mask, temperature)
    dtype = _compute_dtype(hidden, logits)
    tok = _Tokens(hidden, logits, tokens, mask, dtype)
    inv_t = 1.0 / float(temperature)
    if method == "dense":
        return _dense_features(tok, inv_t)
    return _sketch_features(tok, inv_t, sketch_dim, sketch_hidden_dim, seed, chunk_size)


# --------------------------------------------------------------------------------------
# scalar geometry (methods.md 3.4 steps 1 and 4, 3.5)
# --------------------------------------------------------------------------------------


def _as_square(K: torch.Tensor) -> torch.Tensor:
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"Gram must be a square (B, B) matrix, got shape {tuple(K.shape)}")
    return K.to(torch.float64)


def participation_ratio(K: torch.Tensor) -> float:
    """PR = tr(K)^2 / (||K||_F^2 + 1e-10); in [1, B] for a nonzero PSD K, 0 for K = 0."""
    K = _as_square(K)
    return float(torch.trace(K) ** 2 / (torch.sum(K * K) + 1e-10))


def effective_sample_size(K: torch.Tensor, advantages: torch.Tensor) -> float:
    """Signed-update ESS n_eff = B A^T K A / (B sum_i A_i^2 K_ii + 1e-9), B = K.shape[0].

    With K = G G^T / B and u_i = A_i g_i this is ||sum_i u_i||^2 / (sum_i ||u_i||^2 + 1e-9):
    0 = total cancellation, 1 = orthogonal updates, B = all aligned.
    """
    K = _as_square(K)
    A = advantages.to(torch.float64).reshape(-1)
    if A.numel() != K.shape[0]:
        raise ValueError(f"advantages has {A.numel()} entries but the Gram is {tuple(K.shape)}")
    B = K.shape[0]
    num = B * (A @ K @ A)
    den = B * torch.sum(A * A * torch.diagonal(K)) + 1e-9
    return float(num / den)


def cosine_gram(K: torch.Tensor) -> torch.Tensor:
    """C = D^-1/2 K D^-1/2 with D = diag(K); rows/columns with K_ii <= 0 are set to 0. (B, B)."""
    K64 = _as_square(K)
    d = torch.diagonal(K64).clamp_min(0.0)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    C = inv[:, None] * K64 * inv[None, :]
    return C.to(K.dtype if K.dtype.is_floating_point else torch.float64)


def _mean_positive_offdiag(C: torch.Tensor) -> float:
    """Mean of max(C_ij, 0) over the off-diagonal pairs i != j of a square matrix (0 if n < 2)."""
    n = C.shape[0]
    if n < 2:
        return 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=C.device)
    return float(C[off].clamp_min(0.0).mean())


def group_geometry(K: torch.Tensor, group_ids: torch.Tensor, advantages: torch.Tensor) -> dict[str, float]:
    """Within- and across-group geometry of one Gram (methods.md 3.5). K (B, B), ids/adv (B,).

    Definitions (C = cosine_gram(K); groups of size >= 2 only for the "in" terms):
      geom/r_in     mean over groups of the mean positive part max(C_ij, 0) over the pairs
                    i != j inside the group;
      geom/n_eff_in mean over groups with nonzero update energy (sum A_i^2 K_ii > 0) of
                    effective_sample_size(K_gg, A_g) on the group's sub-Gram;
      geom/pr_in    mean over groups with tr(K_gg) > 0 of participation_ratio(K_gg);
      geom/r_out    mean positive off-diagonal cosine of the prompt-mean features, Gram
                    M K M^T (P, P), M the (P, B) group-averaging matrix (M_gi = 1/|g|);
      geom/n_eff_out ESS of the prompt-mean signed updates ubar_g = mean_{i in g} A_i g_i,
                    i.e. effective_sample_size(M diag(A) K diag(A) M^T, ones(P)).
    Means over an empty set are 0.
    """
    K = _as_square(K)
    A = advantages.to(torch.float64).reshape(-1)
    ids = group_ids.reshape(-1)
    if A.numel() != K.shape[0] or ids.numel() != K.shape[0]:
        raise ValueError(
            f"group_ids ({ids.numel()}) and advantages ({A.numel()}) must have one entry per "
            f"row of the Gram {tuple(K.shape)}"
        )
    if not torch.isfinite(K).all() or not torch.isfinite(A).all():
        return {k: 0.0 for k in ("geom/r_in", "geom/n_eff_in", "geom/pr_in", "geom/r_out", "geom/n_eff_out")}
    C = cosine_gram(K)
    uniq, inverse = torch.unique(ids, return_inverse=True)
    r_in, n_in, pr_in = [], [], []
    for g in range(uniq.numel()):
        sel = torch.nonzero(inverse == g, as_tuple=False).squeeze(1)
        if sel.numel() < 2:
            continue
        Kg = K[sel][:, sel]
        Ag = A[sel]
        r_in.append(_mean_positive_offdiag(C[sel][:, sel]))
        if float(torch.sum(Ag * Ag * torch.diagonal(Kg))) > 0:
            n_in.append(effective_sample_size(Kg, Ag))
        if float(torch.trace(Kg)) > 0:
            pr_in.append(participation_ratio(Kg))
    P = uniq.numel()
    M = torch.zeros(P, K.shape[0], dtype=torch.float64, device=K.device)  # (P, B)
    M[inverse, torch.arange(K.shape[0], device=K.device)] = 1.0
    M = M / M.sum(dim=1, keepdim=True)
    K_mean = M @ K @ M.T  # (P, P) prompt-mean features
    K_upd = M @ (A[:, None] * K * A[None, :]) @ M.T  # (P, P) prompt-mean signed updates
    ones = torch.ones(P, dtype=torch.float64, device=K.device)
    n_eff_out = effective_sample_size(K_upd, ones) if float(torch.trace(K_upd)) > 0 else 0.0
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else 0.0  # noqa: E731
    return {
        "geom/r_in": mean(r_in),
        "geom/n_eff_in": mean(n_in),
        "geom/pr_in": mean(pr_in),
        "geom/r_out": _mean_positive_offdiag(cosine_gram(K_mean)),
        "geom/n_eff_out": n_eff_out,
    }
