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
* ``support`` exact on the vocabulary ids that carry the probability mass (shared by the
  batch), an unbiased sample of the tail, and a deterministic bound on the relative error that
  it holds below ``tol`` (see the section "support" below).
* ``sparse`` exact entries on each token's own candidates, an unbiased importance-sampled
  correction for the rest, and a probabilistic error estimate (``info["err_kind"] =
  "probabilistic"``; see the section "sparse" below).
* ``auto``   exact when :func:`gram_cost` says it costs at most twice the support estimator;
  else sparse if its error estimate is at most ``tol``, else support. Never the count sketch
  (its error has no bound). ``info["err_kind"]`` says whether ``err_bound`` is a bound.

All functions are pure: no global RNG (sketches use a ``torch.Generator`` seeded by ``seed``),
no logging. Inputs are never modified; gradients never flow (h and z are detached).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch

from salt import metric_names as mn

GRAM_METHODS = ("dense", "exact", "sketch", "support", "sparse", "auto")
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


def _check_support_options(chunk_size, tol, support_eps, tail_dim) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol (algorithm.salt.gram_tol) must be a finite number >= 0, got {tol}")
    if not (0 < support_eps < 1):
        raise ValueError(f"support_eps (algorithm.salt.support_eps) must lie in (0, 1), got {support_eps}")
    if tail_dim < 0:
        raise ValueError(f"tail_dim (algorithm.salt.tail_dim) must be >= 0, got {tail_dim}")


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

    def runs(self):
        """[(r0, r1, a0)]: the valid positions as runs of consecutive rows r0..r1-1 of the flat
        logits (valid tokens a0..), or None if there are more than max(16, N / 16) runs."""
        if not hasattr(self, "_runs"):
            if self.N == 0:
                self._runs = []
            else:
                brk = (torch.nonzero(self.flat[1:] - self.flat[:-1] != 1).squeeze(1) + 1).tolist()
                starts = [0] + brk
                ends = brk + [self.N]
                fl = self.flat.tolist() if len(starts) <= max(16, self.N // 16) else None
                self._runs = None if fl is None else [(fl[a], fl[b - 1] + 1, a) for a, b in zip(starts, ends)]
        return self._runs

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


def _normalise(K: torch.Tensor, B: int, normalizer: float | None, out_dtype) -> torch.Tensor:
    denom = float(B if normalizer is None else normalizer)
    if not denom > 0:
        raise ValueError(f"normalizer must be > 0 (the global number of rollouts), got {normalizer}")
    K = (K + K.T) / (2.0 * denom)
    return K.to(out_dtype)


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------


def _dense_features(src: "_LogitSource") -> torch.Tensor:
    """(B, V*H): every g_i = sum_t d_it h_it^T flattened. Memory B*V*H: reference only."""
    tok = src.tok
    G = torch.zeros(tok.B, tok.V, tok.H, dtype=tok.dtype, device=tok.hw.device)  # (B, V, H)
    a0 = 0
    for i, n_i in enumerate(tok.counts):  # valid tokens are sorted by rollout
        if n_i == 0:
            continue
        d = torch.empty(n_i, tok.V, dtype=tok.dtype, device=tok.hw.device)  # (n_i, V)
        src.d_block(d, a0, a0 + n_i)
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


def _exact_gram(src: "_LogitSource", chunk_size: int) -> torch.Tensor:
    """Unnormalised sum_{t,s} (d_t . d_s)(h_t . h_s) per rollout pair, (B, B) float64.

    Outer blocks of c = chunk_size valid tokens are computed once into one (c, V) buffer;
    inside a block only sub-block pairs i <= j of size c/4 are multiplied (the block is
    symmetric); the tokens after the block are streamed through a second (c/4, V) buffer.
    Memory: (c + c/4) V numbers. Softmax work: about N + N (N - c) / (2c) rows.
    """
    tok = src.tok
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
        Da = src.d_block(buf_a[: a1 - a0], a0, a1)  # (ca, V)
        subs = list(range(0, a1 - a0, cs))
        for i, s0 in enumerate(subs):
            for s1 in subs[i:]:
                Xa, Xb = Da[s0 : s0 + cs], Da[s1 : s1 + cs]
                acc.add(Xa, a0 + s0, Xb, a0 + s1, symmetric=s1 != s0)
        for b0 in range(a1, N, cs):
            b1 = min(b0 + cs, N)
            Db = src.d_block(buf_b[: b1 - b0], b0, b1)  # (cb, V)
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
    src: "_LogitSource", sketch_dim: int, sketch_hidden_dim: int | None, seed: int, chunk_size: int
) -> torch.Tensor:
    """(B, m*q) sketched features f_i = sum_t (S d_t)(R w_t h_t)^T flattened (q = H without R)."""
    if sketch_dim < 1:
        raise ValueError(f"sketch_dim must be >= 1, got {sketch_dim}")
    if sketch_hidden_dim is not None and sketch_hidden_dim < 1:
        raise ValueError(f"sketch_hidden_dim must be >= 1 or None, got {sketch_hidden_dim}")
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
    block_rows = max(16, _SKETCH_BLOCK_BYTES // (tok.V * _element_size(dtype)))
    c = max(1, min(chunk_size, max(tok.N, 1), block_rows))
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


# --------------------------------------------------------------------------------------
# support: exact on the shared support that carries the probability mass, sketched tail
# --------------------------------------------------------------------------------------
#
# Every token's d_t = w_t (p_t - e_{y_t}) is split by one vocabulary set U shared by the whole
# batch: U holds every sampled token y_t and every id v that some position gives p_tv > eps_t
# (its top candidates). On U the features are exact for every token (p_tv of all N tokens on
# all of U, not only each position's own candidates), so the rest, the tail T_i = sum_t w_t
# p_t|_{V \ U} h_t^T, lives on rows disjoint from the exact part G^U_i: no cross terms, and
#
#     K = K^U + T T^T,   K^U_ij = <G^U_i, G^U_j>,   both PSD.
#
# The tail Gram is estimated from r rows R drawn uniformly without replacement from V \ U
# (the first r ids of a seeded permutation of V that are not in U), scaled by 1/sqrt(q),
# q = r / |V \ U|: every v outside U is in R with probability q, so E[K_hat] = K^U + T T^T.
# If r >= |V \ U| the tail is computed exactly (q = 1).
#
# Error bound (deterministic, every seed): with tau_t = 1 - sum_{v in U} p_tv the tail mass,
# mu_t >= max_{v not in U} p_tv (at most eps_t, at most the level of the first id left out, at
# most tau_t) and beta_t >= ||p_t restricted to V \ U||_2 (from the candidate pass: the sum of
# p^2 over the non-candidates, widened by its worst-case float rounding, plus the left-out
# candidates' p^2). With x_t = w_t h_t, X_i the rows of rollout i, b_i^2 = sum_{t in i} beta_t^2
# and P_v the column of tail probabilities of id v over the tokens, the tail Gram
# S = T T^T = sum_{v not in U} Y_v Y_v^T (Y_v,i = sum_{t in i} p_tv x_t) is PSD with
#     tr(S) <= sum_i lam_max(X_i X_i^T) b_i^2                      (per rollout),
#     lam_max(S) = max_{|c|=1} sum_v ||X^T (c_r o P_v)||^2 <= lam_max(X X^T) max_i b_i^2,
# (c_r: c spread to the tokens) and so ||S||_F <= sqrt(lam_max(S) tr(S)) (sum of squared
# eigenvalues <= the largest times their sum). This is what removes the sqrt(B) of the older
# Cauchy-Schwarz bound |S_ij| <= sqrt(S_ii S_jj): S's off-diagonal entries are small whenever
# the rollouts' hidden states are not aligned, and the spectral bound sees it without forming S.
# Where N^2 is affordable and the bound is close to the target, the pair refinement adds the
# entrywise bounds -sum ov Q^- <= S_ij <= sum ov Q^+ (Q_ts = <x_t, x_s>, 0 <= <p^tail_t, p^tail_s>
# <= ov_ts = min(beta_t beta_s, mu_t tau_s, tau_t mu_s)). Since K_hat - K = A - S with A the
# tail sketch's Gram (PSD, or 0 without a sketch), ||K_hat - K||_F <= sqrt(||A||_F^2 + tb^2)
# <= err_bound ||K^U||_F (||K||_F >= ||K^U||_F because K - K^U is PSD). ``err_bound`` is this
# relative bound; the brute-force tests check it against the exact S on random, shared and
# anisotropic inputs (bound / truth 1.0-17 there, 1.8-9 on the benchmark batches).
#
# Cost: one softmax pass over the N x V logits (block by block) plus a group max (groups of
# 64 ids) to find the candidates, then the N x (u + r) gathered columns, 2 N (u + r) H for the
# features and 2 B^2 (u + r) H for their Gram. With ``tol`` > 0 the ids of U enter in order of
# their largest probability over the batch, a block at a time (u / 8 ids per round), and the
# loop stops as soon as the bound is below ``tol`` (below tol / 1.25 with a tail sketch, which is
# then drawn once and always kept, so that E[K_hat] = K given U; its norm joins the reported
# bound, which can then exceed tol when the sketch is noisy): it spends only what the batch needs.
# When the candidates are used up first (flat rows at a tight tol), the remaining ids follow
# in a seeded random order, so the bound can always be met (at U = V the Gram is exact).

SUPPORT_METHODS = ("support",)
DEFAULT_GRAM_TOL = 1e-3
DEFAULT_SUPPORT_EPS = 1e-6
DEFAULT_TAIL_DIM = 256
_GROUP = 64  # vocabulary ids per group of the candidate search
_MAX_GROUPS_PER_TOKEN = 16  # a flat row is capped here: its threshold rises to the 17th group max
_PAIR_BOUND_NUMBERS = 1 << 22  # N^2 up to this: the pair refinement of the tail bound
_EIG_MAX_TOKENS = 2048  # rollouts up to this long get the exact top eigenvalue of their hidden Gram
_GLOBAL_EIG_MAX = 8192  # min(N, H) up to this: the exact top eigenvalue of the whole batch's hidden Gram
_COLUMN_BLOCK_NUMBERS = 1 << 25  # at most this many numbers in one (N, c) block of support columns
_GROWTH = 8  # U grows by max(256, u / _GROWTH) ids per round of the bound
_SKETCH_MARGIN = 1.25  # with a tail sketch the ids enter until the tail bound is below tol / this


class _LogitSource:
    """Scaled logits z / T of the valid tokens: given (B, T, V) logits or hidden @ weight^T."""

    def __init__(self, tok: "_Tokens", inv_t: float, weight=None, bias=None, h=None):
        self.tok, self.inv_t, self.weight, self.bias, self.h = tok, inv_t, weight, bias, h
        self.memo: dict = {}  # (eps, chunk) -> the last _candidates result (auto: sparse, then support)

    def block(self, out: torch.Tensor, a0: int, a1: int) -> torch.Tensor:
        """softmax(z_t / T) of valid tokens a0..a1-1 written into ``out`` (a1 - a0, V)."""
        if self.weight is None:
            return self.tok.softmax_block(out, a0, a1, self.inv_t)
        torch.matmul(self.h[a0:a1], self.weight.T, out=out)  # (n, V) logits of this chunk only
        if self.bias is not None:
            out += self.bias
        if self.inv_t != 1.0:
            out.mul_(self.inv_t)
        return torch.softmax(out, dim=1, out=out)

    def d_block(self, out: torch.Tensor, a0: int, a1: int) -> torch.Tensor:
        """Write p_t - e_{y_t} for valid tokens a0..a1-1 into ``out``; the mask weight w_t is
        carried by ``tok.hw``. The e_y part is one indexed write per token."""
        self.block(out, a0, a1)
        out[torch.arange(a1 - a0, device=out.device), self.tok.y[a0:a1]] -= 1.0
        return out

    def cols(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, len(ids)) scaled logits of every valid token at vocabulary ids ``ids``."""
        tok = self.tok
        if self.weight is None:
            runs = tok.runs()
            if runs is None:
                z = tok.z_flat.index_select(1, ids).index_select(0, tok.flat)
            else:  # only the valid rows are read, run by run of consecutive positions
                z = torch.empty(tok.N, ids.numel(), dtype=tok.z_flat.dtype, device=ids.device)
                for r0, r1, a0 in runs:
                    torch.index_select(tok.z_flat[r0:r1], 1, ids, out=z[a0 : a0 + r1 - r0])
            z = z.to(tok.dtype)
        else:
            z = self.h @ self.weight.index_select(0, ids).T
            if self.bias is not None:
                z += self.bias.index_select(0, ids)
        return z.mul_(self.inv_t) if self.inv_t != 1.0 else z

    def at(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(n,) scaled logits z_{rows[k], ids[k]}."""
        tok = self.tok
        if self.weight is None:
            z = tok.z_flat[tok.flat[rows], ids].to(tok.dtype)
        else:
            z = (self.h[rows] * self.weight[ids]).sum(1)
            if self.bias is not None:
                z += self.bias[ids]
        return z * self.inv_t


def _probs(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """p = exp(z - lse) in place. The exponent is floored where exp leaves the normal range
    (p < 1e-37 in float32, 1e-307 in float64 become that floor): denormal results make exp
    about 30x slower on x86 CPUs, and the change is far below rounding."""
    floor = math.log(torch.finfo(z.dtype).tiny) + 2.0
    return z.sub_(lse[:, None]).clamp_min_(floor).exp_()


def _candidates(src: _LogitSource, eps: float, chunk: int, group_weights: torch.Tensor | None = None):
    """:func:`_candidate_pass`, remembered on ``src``: when ``auto`` falls back from the sparse
    to the support estimator on the same logits, the pass is not repeated (its first six outputs
    do not depend on ``group_weights``)."""
    hit = src.memo.get((eps, chunk))
    if hit is not None and (group_weights is None or len(hit) == 7):
        return hit[:6] if group_weights is None else hit
    out = _candidate_pass(src, eps, chunk, group_weights)
    src.memo = {(eps, chunk): out}
    return out


def _candidate_pass(src: _LogitSource, eps: float, chunk: int, group_weights: torch.Tensor | None = None):
    """One pass over the logits in token blocks: every (t, v) with p_tv > eps_t.

    eps_t = eps unless position t has more than _MAX_GROUPS_PER_TOKEN groups of 64 ids whose
    max exceeds eps; then eps_t is the next group max (a flat row keeps its 16 largest
    groups). Every id left out of t's candidates has p_tv <= eps_t. Returns t (n,), v (n,),
    p (n,), eps_t (N,), lse (N,) (log normaliser of z_t / T: p_tv = exp(z_tv / T - lse_t)) and
    sq (N,) float64 >= the sum of p_tv^2 over the ids that are not t's candidates.
    With ``group_weights`` (N,) c_t also returns R (B, G) float64, R[i, g] = sum_{t in i} c_t
    min(eps_t, max_{v in group g} p_tv) (>= c_t p_tv summed over i's tokens for every non-candidate v).
    """
    tok = src.tok
    N, V, dev, dt = tok.N, tok.V, tok.hw.device, tok.dtype
    G, g = -(-V // _GROUP), _GROUP
    main = (V // g) * g
    c = max(1, min(chunk, N, max(16, _SKETCH_BLOCK_BYTES // (V * _element_size(dt)))))
    buf = torch.empty(c, V, dtype=dt, device=dev)
    offs = torch.arange(g, device=dev)
    ts, vs, ps, eps_t, lse = [], [], [], torch.empty(N, dtype=dt, device=dev), torch.empty(N, dtype=dt, device=dev)
    sq = torch.empty(N, dtype=torch.float64, device=dev)
    Rg = None if group_weights is None else torch.zeros(tok.B, G, dtype=torch.float64, device=dev)
    for a0 in range(0, N, c):
        a1 = min(a0 + c, N)
        n = a1 - a0
        p = src.block(buf[:n], a0, a1)  # (n, V)
        gm = torch.empty(n, G, dtype=dt, device=dev)  # (n, G) group maxima
        if main:
            torch.amax(p[:, :main].view(n, main // g, g), dim=2, out=gm[:, : main // g])
        if main < V:
            gm[:, -1] = p[:, main:].amax(1)
        thr = torch.full((n,), eps, dtype=dt, device=dev)
        many = (gm > eps).sum(1) > _MAX_GROUPS_PER_TOKEN
        if bool(many.any()):
            kth = gm[many].topk(_MAX_GROUPS_PER_TOKEN + 1, dim=1).values[:, -1]
            thr[many] = torch.maximum(thr[many], kth)
        eps_t[a0:a1] = thr
        if Rg is not None:  # per rollout and group: sum_t c_t min(eps_t, group max)
            gw = torch.minimum(gm, thr[:, None]).to(torch.float64).mul_(group_weights[a0:a1, None])
            Rg.index_add_(0, tok.r[a0:a1], gw)
        # log normaliser from the largest entry of each row (its group is the top group)
        top_g = gm.argmax(1)  # (n,)
        ids = (top_g[:, None] * g + offs).clamp_max(V - 1)  # (n, g)
        pv = p.gather(1, ids)
        j = pv.argmax(1)
        vstar = ids.gather(1, j[:, None]).squeeze(1)
        rows = torch.arange(a0, a1, device=dev)
        lse[a0:a1] = src.at(rows, vstar) - pv.gather(1, j[:, None]).squeeze(1).log()
        sel = torch.nonzero(gm > thr[:, None], as_tuple=False)  # (k, 2) (row, group)
        if sel.numel():
            ids = sel[:, 1:2] * g + offs  # (k, g)
            ok = ids < V
            ids = ids.clamp_max(V - 1)
            vals = p[sel[:, :1], ids]  # (k, g)
            keep = ok & (vals > thr[sel[:, 0]][:, None])
            r_, c_ = torch.nonzero(keep, as_tuple=True)
            ts.append(sel[r_, 0] + a0)
            vs.append(ids[r_, c_])
            ps.append(vals[r_, c_])
            cnt = torch.bincount(sel[r_, 0], minlength=n).to(dt)
        else:
            cnt = torch.zeros(n, dtype=dt, device=dev)
        # sum of p_tv^2 over the non-candidates: sum min(p, eps_t)^2 - eps_t^2 * #candidates
        # (only small numbers are summed: no cancellation against the head's p^2)
        p.clamp_(max=thr[:, None])
        sq[a0:a1] = (torch.linalg.vector_norm(p, dim=1).to(torch.float64) ** 2
                     - thr.to(torch.float64) ** 2 * cnt.to(torch.float64)).clamp_min(0.0)
    cat = lambda xs, d: torch.cat(xs) if xs else torch.empty(0, dtype=d, device=dev)  # noqa: E731
    out = (cat(ts, torch.long), cat(vs, torch.long), cat(ps, dt), eps_t, lse, sq)
    return out if Rg is None else out + (Rg,)


class _RolloutAcc:
    """K += F F^T for per-rollout features F_i = D_i^T (w h)_i over a block of vocabulary rows.

    Two equal forms, picked by cost: ``features`` builds F (B, c, H) (2 N c H + 2 B^2 c H
    flops, in small per-rollout matmuls) and ``pairs`` uses the token-pair identity
    K_ij = sum_{t in i, s in j} (D D^T)_ts <w h_t, w h_s> (2 N^2 c flops in one large matmul,
    with the N x N hidden Gram formed once). Measured on CPU the small matmuls run at about
    half the large one's speed, hence the factor 2 in the rule below.
    """

    COLS = 256
    PAIR_MAX_TOKENS = 4096

    def __init__(self, tok: "_Tokens", onehot: torch.Tensor | None = None):
        self.tok = tok
        self.K = torch.zeros(tok.B, tok.B, dtype=torch.float64, device=tok.hw.device)
        self.bounds = [0] + list(torch.tensor(tok.counts).cumsum(0).tolist())
        N, H, B = tok.N, tok.H, tok.B
        self.pairs = N <= self.PAIR_MAX_TOKENS and N * N <= 2 * (N * H + B * B * H)
        if self.pairs:
            self.hh = tok.hw @ tok.hw.T  # (N, N)
            self.onehot = onehot

    def add(self, D: torch.Tensor, accumulate: bool = True) -> torch.Tensor:
        """D (N, c) coefficients of the valid tokens on c vocabulary rows; returns the block's
        Gram (added to K if ``accumulate``)."""
        tok, b = self.tok, self.bounds
        if self.pairs:
            M = (D @ D.T).mul_(self.hh).to(torch.float64)  # (N, N)
            blk = self.onehot @ M @ self.onehot.T
            if accumulate:
                self.K += blk
            return blk
        blk = torch.zeros_like(self.K)
        for c0 in range(0, D.shape[1], self.COLS):  # bounds the (B, c, H) features
            Dc = D[:, c0 : c0 + self.COLS]
            F = torch.empty(tok.B, Dc.shape[1], tok.H, dtype=D.dtype, device=D.device)  # (B, c, H)
            for i in range(tok.B):
                if b[i + 1] > b[i]:
                    torch.matmul(Dc[b[i] : b[i + 1]].T, tok.hw[b[i] : b[i + 1]], out=F[i])
                else:
                    F[i].zero_()
            Fm = F.reshape(tok.B, -1)
            blk += (Fm @ Fm.T).to(torch.float64)
        if accumulate:
            self.K += blk
        return blk


class _HiddenSide:
    """What the tail bound needs of the hidden side x_t = w_t h_t; the costly parts are computed
    only when a bound first needs them.

    lam (B,) float64 >= the largest eigenvalue of X_i X_i^T (exact eigenvalues, batched over the
    rollouts padded with zero rows, for rollouts of at most _EIG_MAX_TOKENS tokens; else the
    trace ||X_i||_F^2); :meth:`Lam` >= the largest eigenvalue of X X^T over all N tokens (float64
    Gram of the smaller side, float32 eigenvalue widened by its rounding; the trace if
    min(N, H) > _GLOBAL_EIG_MAX); :meth:`pairs` the positive and negative parts of <x_t, x_s> as
    (N, N) upper bounds (from the accumulator's float32 Gram widened by its worst-case
    rounding, or in float64) if N^2 <= _PAIR_BOUND_NUMBERS, else None.
    """

    def __init__(self, tok: "_Tokens", hh: torch.Tensor | None = None):
        self.tok, self.hh, self._Lam, self._pairs = tok, hh, None, False
        X = self.X = tok.hw.to(torch.float64)
        B, counts = tok.B, tok.counts
        self.lam = torch.zeros(B, dtype=torch.float64, device=X.device)
        nmax = max(counts) if counts else 0
        if 0 < nmax <= _EIG_MAX_TOKENS and B * nmax * nmax <= _PAIR_BOUND_NUMBERS:
            pad = torch.zeros(B, nmax, X.shape[1], dtype=torch.float64, device=X.device)  # (B, n_max, H)
            col = torch.arange(tok.N, device=X.device) - torch.tensor([0] + counts[:-1], device=X.device).cumsum(0)[tok.r]
            pad[tok.r, col] = X
            ev = torch.linalg.eigvalsh(pad @ pad.transpose(1, 2))[:, -1]  # zero rows change no eigenvalue > 0
            self.lam = ev.clamp_min(0.0) * (1 + 1e-9) + 1e-300
        else:
            a0 = 0
            for i, n in enumerate(counts):
                Xi = X[a0 : a0 + n]
                if 0 < n <= _EIG_MAX_TOKENS:
                    self.lam[i] = torch.linalg.eigvalsh(Xi @ Xi.T)[-1].clamp_min(0.0) * (1 + 1e-9) + 1e-300
                else:
                    self.lam[i] = (Xi * Xi).sum()
                a0 += n

    def Lam(self) -> float:
        if self._Lam is None:
            tok, X = self.tok, self.X
            m = min(tok.N, tok.H)
            if 0 < m <= _GLOBAL_EIG_MAX:  # float64 Gram (a float32 one would need a slack of
                Q = X @ X.T if tok.N <= tok.H else X.T @ X  # N 2^-24 ||X||_F^2: 11% at case b)
                top = float(torch.linalg.eigvalsh(Q.float())[-1].clamp_min(0.0))  # float32 eigenvalue,
                self._Lam = top * (1.0 + 8.0 * m * 2.0**-24) + 2.0**-22 * float(Q.norm()) + 1e-300  # widened
            else:
                self._Lam = float((X * X).sum())
        return self._Lam

    def pairs(self):
        if self._pairs is False:
            tok, X, hh = self.tok, self.X, self.hh
            self._pairs = None
            if tok.N * tok.N <= _PAIR_BOUND_NUMBERS:
                if hh is not None and hh.dtype != torch.float64:  # widen by the worst-case rounding
                    nrm = X.norm(dim=1)  # of a length-H dot product in that dtype
                    slack = (nrm[:, None] * nrm[None, :]).mul_(tok.H * 2.0 * torch.finfo(hh.dtype).eps)
                    Q = hh.double()
                else:
                    Q, slack = (hh if hh is not None else X @ X.T), 0.0
                self._pairs = (Q.clamp_min(0.0).add_(slack), Q.neg().clamp_min_(0.0).add_(slack))
        return self._pairs


def _tail_bound(tok: "_Tokens", tau, mu, beta, hs: _HiddenSide, onehot, need: float = 0.0) -> float:
    """Upper bound on ||T T^T||_F, T_i = P_i^T X_i the tail features (see the section comment).
    tau, mu, beta (N,) float64 with beta_t >= ||p^tail_t||_2 and
    0 <= <p^tail_t, p^tail_s> <= ov_ts = min(beta_t beta_s, mu_t tau_s, tau_t mu_s).

    S = T T^T is PSD, so ||S||_F^2 = sum_k lambda_k^2 <= lambda_max(S) tr(S), and
      tr(S) <= sum_i d_i,  d_i = lam_i b_i^2 >= ||T_i||_F^2,  b_i^2 = sum_{t in i} beta_t^2;
      lambda_max(S) = max_{|c|=1} sum_v ||X^T (c_r o p_v)||^2 <= Lam max_i b_i^2
    (p_v the column of tail probabilities of vocabulary id v over the tokens, c_r c spread to
    the tokens). With the pair refinement (when the bound is within 4x of ``need``):
    S_ij = sum_{t in i, s in j} G_ts Q_ts with 0 <= G_ts <= ov_ts, so
    -sum ov Q^- <= S_ij <= sum ov Q^+, which tightens d_i and bounds |S_ij| directly; then
    ||S||_F <= min(sqrt(lambda_max tr), ||C||_F) with C the entrywise bounds. The costly parts
    are skipped when they are not needed or unlikely to decide: tr(S) alone when it is <= need
    or above 4 sqrt(B) need (sqrt(lambda_max tr) >= tr / sqrt(B) whatever Lam is; the pair
    refinement seldom gains 4x more). Every value returned is an upper bound.
    """
    b2 = onehot @ (beta * beta)  # (B,)
    d = hs.lam * b2  # (B,) >= S_ii
    tr = float(d.sum())
    if tr <= need or tr > 4.0 * need * math.sqrt(max(tok.B, 1)):
        return tr
    op = min(hs.Lam() * float(b2.max()), tr)
    bound = math.sqrt(op * tr)
    if bound <= need or bound > 4.0 * need or hs.pairs() is None:
        return bound
    qp, qn = hs.pairs()
    ov = torch.minimum(torch.minimum(beta[:, None] * beta[None, :], mu[:, None] * tau[None, :]),
                       tau[:, None] * mu[None, :])
    pos = onehot @ (ov * qp) @ onehot.T  # (B, B) >= S_ij
    neg = onehot @ ov.mul_(qn) @ onehot.T  # (B, B) >= -S_ij
    d = torch.minimum(d, pos.diagonal())
    C = torch.minimum(torch.sqrt(d[:, None] * d[None, :]), torch.maximum(pos, neg))
    C.diagonal().copy_(d)
    tr = float(d.sum())
    return min(math.sqrt(min(op, tr) * tr), float(C.norm()))


@lru_cache(maxsize=8)
def _vocab_permutation(seed: int, V: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
    return torch.randperm(V, generator=gen)


def _flushing_denormals(impl):
    """``impl(src, **kw)`` with denormal floats flushed to zero on CPU (a softmax of peaked
    logits is about 2x faster; the values flushed are below 1.2e-38, far below rounding). The
    caller's flush-to-zero state is restored afterwards."""

    def run(src: _LogitSource, **kw):
        if src.tok.hw.device.type != "cpu":
            return impl(src, **kw)
        was_on = float(torch.tensor([1e-39], dtype=torch.float32).mul(1.0)[0]) == 0.0
        torch.set_flush_denormal(True)
        try:
            return impl(src, **kw)
        finally:
            torch.set_flush_denormal(was_on)

    run.__doc__ = f":func:`{impl.__name__}` with denormals flushed on CPU (:func:`_flushing_denormals`)."
    return run


def _entry_order(level: torch.Tensor, seed: int):
    """The order in which ids enter U, from ``level`` (V,): the sampled ids (+inf) and the
    candidates by their largest probability, then (if the bound still asks for more) every other id
    in a seeded order. Returns (order, level in that order, number of sampled ids, the permutation)."""
    order = torch.argsort(level, descending=True, stable=True)
    n_cand = int((level > 0).sum())
    perm = _vocab_permutation(seed, level.numel()).to(level.device)
    order = torch.cat([order[:n_cand], perm[level[perm] == 0]])
    lev_sorted = level[order]
    return order, lev_sorted, int(torch.isinf(lev_sorted).sum()), perm


def _support_columns(src: _LogitSource, ids: torch.Tensor, lse: torch.Tensor, y_pos: torch.Tensor,
                     mass: torch.Tensor) -> torch.Tensor:
    """(N, c) p_tv - [v = y_t] of every valid token on the ascending ids ``ids``; adds sum_v p_tv to
    ``mass`` (N,). ``y_pos`` (V,) is a scratch index of -1s, left as found."""
    P = _probs(src.cols(ids), lse)  # (N, c) exact p on these ids, every token
    mass += P.sum(1, dtype=torch.float64)
    y_pos[ids] = torch.arange(ids.numel(), device=ids.device)
    hit = y_pos[src.tok.y]  # (N,) column of y_t in this block, -1 if y_t is not in it
    mine = hit >= 0
    P[torch.nonzero(mine).squeeze(1), hit[mine]] -= 1.0  # the e_y part (its id is in this block)
    y_pos[ids] = -1
    return P


def _support_gram_impl(src: _LogitSource, *, tol: float, eps: float, tail_dim: int, seed: int,
                       chunk_size: int, info: dict | None, max_support: int | None = None) -> torch.Tensor | None:
    """Unnormalised (B, B) float64 support Gram with the sketched tail (see the section above).
    With ``max_support``: None once U reaches that many ids before the bound meets ``tol``
    (``auto`` then runs ``exact``, which is cheaper from there on)."""
    tok = src.tok
    N, V, dev, dt = tok.N, tok.V, tok.hw.device, tok.dtype
    if N == 0:
        if info is not None:
            info.update(err_bound=0.0, support_size=0, tail_rows=0, tail_mass=0.0)
        return torch.zeros(tok.B, tok.B, dtype=torch.float64, device=dev)
    t_c, v_c, p_c, eps_t, lse, sq_non = _candidates(src, eps, chunk_size)
    sq_non = sq_non * (1.0 + V * torch.finfo(dt).eps)  # worst-case rounding of its float sums
    # order of entry into U: sampled tokens first, then ids by their largest probability
    level = torch.zeros(V, dtype=dt, device=dev).scatter_reduce_(0, v_c, p_c, "amax")
    level[tok.y] = float("inf")
    order, lev_sorted, n_y, perm = _entry_order(level, seed)
    onehot = torch.zeros(tok.B, N, dtype=torch.float64, device=dev)
    onehot[tok.r, torch.arange(N, device=dev)] = 1.0
    acc = _RolloutAcc(tok, onehot)
    hs = _HiddenSide(tok, acc.hh if acc.pairs and N * N <= _PAIR_BOUND_NUMBERS else None)
    inU = torch.zeros(V, dtype=torch.bool, device=dev)
    p_c2 = p_c.to(torch.float64) ** 2
    mass = torch.zeros(N, dtype=torch.float64, device=dev)
    y_pos = torch.full((V,), -1, dtype=torch.long, device=dev)
    # with a tail sketch the bound is sqrt(||A||_F^2 + tb^2): aim tb at tol / margin, then check
    margin = _SKETCH_MARGIN if tail_dim > 0 else 1.0
    col_cap = max(1, _COLUMN_BLOCK_NUMBERS // N)  # an (N, step) block of columns stays bounded
    u, step, KU_norm, tb, A, A_norm, r = 0, min(max(n_y, 1), col_cap), 0.0, float("inf"), None, 0.0, 0
    while u < V:
        ids = order[u : u + step].sort().values  # ascending ids: a cache-friendly gather
        P = _support_columns(src, ids, lse, y_pos, mass)  # (N, c) exact p - e_y on these ids, every token
        acc.add(P)
        del P
        inU[ids] = True
        u += ids.numel()
        step = min(max(256, u // _GROWTH), col_cap)  # blocks grow: a few rounds of the bound below
        nxt = float(lev_sorted[u]) if u < V else 0.0
        tau = (1.0 - mass).clamp_min(0.0)
        mu = torch.minimum(torch.maximum(eps_t.to(torch.float64), torch.tensor(nxt, dtype=torch.float64)), tau)
        out = torch.zeros(N, dtype=torch.float64, device=dev).index_add_(0, t_c, p_c2 * (~inU[v_c]))
        beta = torch.sqrt(sq_non + out)  # >= ||p_t restricted to V \ U||_2
        KU_norm = float(acc.K.norm())
        tb = _tail_bound(tok, tau, mu, beta, hs, onehot, need=tol * KU_norm / margin)
        if u >= n_y and tol > 0 and margin * tb <= tol * KU_norm and u < V:  # every e_y is in U
            if tail_dim == 0:
                break
            # drawn once and always kept (E[K_hat] = K given U); its norm joins the reported bound
            A, A_norm, r = _tail_sketch(src, acc, perm, inU, lse, tail_dim, V - u, col_cap)
            break
        if max_support is not None and u >= max_support and u < V:
            return None
    if u == V:  # U is the whole vocabulary: nothing left out
        tb = 0.0
    if A is not None:
        acc.K += A
        if r == V - u:  # the whole tail, exactly
            tb, A_norm = 0.0, 0.0
    err = math.sqrt(A_norm**2 + tb**2) / KU_norm if KU_norm > 0 else (0.0 if tb == 0 and A_norm == 0 else float("inf"))
    if info is not None:
        info.update(err_bound=err, support_size=u, tail_rows=r, tail_mass=float((1.0 - mass).clamp_min(0).mean()))
    return acc.K


_support_gram = _flushing_denormals(_support_gram_impl)


def _tail_sketch(src: _LogitSource, acc: _RolloutAcc, perm, inU, lse, tail_dim: int, rest: int, col_cap: int):
    """The tail Gram estimated from r = min(tail_dim, rest) ids drawn uniformly without
    replacement from V \\ U (the first r ids of the seeded permutation outside U), each column
    scaled by 1/sqrt(q), q = r / rest. Returns (A (B, B), ||A||_F, r); acc.K is not changed."""
    r = min(int(tail_dim), rest)
    R = perm[~inU[perm]][:r]
    q = r / rest
    A = torch.zeros_like(acc.K)
    for c0 in range(0, r, col_cap):
        P = _probs(src.cols(R[c0 : c0 + col_cap]), lse).mul_(1.0 / math.sqrt(q))  # (N, c)
        A += acc.add(P, accumulate=False)
    return A, float(A.norm()), r


# --------------------------------------------------------------------------------------
# sparse: exact entries on each token's own candidates, an importance-sampled correction
# --------------------------------------------------------------------------------------
#
# Every token's d_t = w_t (p_t - e_{y_t}) splits into D^S_t, its entries on S_t (the ids with
# p_tv > eps_t, plus y_t) and D^R_t, the rest (0 <= D^R_tv = p_tv <= eps_t). Per vocabulary id v,
# Y_v (B x H) with rows Y_v,i = sum_{t in i} d_tv x_t, so K = sum_v Y_v Y_v^T, and likewise
# K^S = sum_v Y^S_v Y^S_v^T from D^S alone. K^S is computed exactly and sparsely in the token-pair
# form K^S_ij = sum_{t in i, s in j} <D^S_t, D^S_s> <x_t, x_s> (a sparse N x V times V x N
# product and one N x N hidden Gram). The rest, Delta = K - K^S = sum_v Z_v with
# Z_v = Y_v Y_v^T - Y^S_v Y^S_v^T, is estimated by Poisson sampling of ids: v is kept with
# probability pi_v = min(1, c b_v) (c such that sum pi = r), independently, and
# Delta_hat = sum_{v kept} Z_v / pi_v, so E[K_hat] = K exactly (K_hat = K^S + Delta_hat).
# b_v >= ||Z_v||_F is a deterministic per-id bound: ||Y^S_v||_F <= a_v = sum_t |D^S_tv| ||x_t||,
# ||Y^R_v||_F <= R = (sum_i (sum_{t in i} eps_t ||x_t||)^2)^1/2 and Z_v = Y^R Y^S^T + Y^S Y^R^T +
# Y^R Y^R^T, so b_v = 2 a_v R + R^2. Ids whose bound is large are kept with certainty.
#
# Error estimate (probabilistic, not a bound): E||Delta_hat - Delta||_F^2 = sum_v (1 - pi_v) /
# pi_v ||Z_v||_F^2, estimated without bias by s^2 = sum_{v kept} (1 - pi_v) / pi_v^2 ||Z_v||_F^2;
# the reported value is err = (3 s + m) / ||K_hat||_F with m = max_{v kept, pi_v < 1} ||Z_v||_F /
# pi_v (the largest single term, a guard against a variance estimate from few terms). Its
# coverage (true error <= err) is measured in tests/algo/test_gram_sparse.py over many seeds and
# batch kinds; info["err_kind"] = "probabilistic".

DEFAULT_SPARSE_SAMPLES = 1024
# auto, when the sparse estimate misses tol by more than this factor and exact costs at most
# _EXACT_AFTER_SPARSE x the support estimator's nominal cost (gram_cost): exact directly. Measured
# at 3 nats (benchmarks/README.md): support grew toward its cap first and cost 180% (case a) and
# 149% (case b) of the LM-head forward; exact alone costs 65% and 102%. A cost rule only: every
# path auto can take reports an error figure <= tol (exact: 0).
_SPARSE_FAR = 2.0
_EXACT_AFTER_SPARSE = 16.0
STREAMING_METHODS = ("support", "sparse")
_SPARSE_Z = 3.0
# Allowance for the float rounding of the estimator's own arithmetic (float32 pair products and
# features), in units of the compute dtype's eps: measured 0.47-0.72 eps against the float64
# exact Gram of the same float32 logits on the case (a) 0.3-nat batches (benchmarks/README.md).
_SPARSE_ROUNDING = 4.0


def _sparse_entries(src: _LogitSource, t_c, v_c, p_c, lse):
    """COO entries (t, v, D^S_tv) sorted by (t, v): the candidates plus (t, y_t), with -1 at y_t."""
    tok = src.tok
    N, V, dev = tok.N, tok.V, tok.hw.device
    key = t_c * V + v_c
    key, o = torch.sort(key)
    val = p_c[o].clone()
    rows = torch.arange(N, device=dev)
    key_y = rows * V + tok.y
    pos = torch.searchsorted(key, key_y).clamp_max(max(key.numel() - 1, 0))
    hit = (key[pos] == key_y) if key.numel() else torch.zeros(N, dtype=torch.bool, device=dev)
    val[pos[hit]] -= 1.0
    miss = ~hit
    z = src.at(rows[miss], tok.y[miss])
    py = torch.exp(z - lse[miss]).to(val.dtype) - 1.0
    key = torch.cat([key, key_y[miss]])
    val = torch.cat([val, py])
    key, o = torch.sort(key)
    val = val[o]
    return torch.div(key, V, rounding_mode="floor"), key % V, val


def _sparse_gram_impl(src: _LogitSource, *, eps: float, samples: int, seed: int, chunk_size: int,
                      info: dict | None) -> torch.Tensor:
    """Unnormalised (B, B) float64 Gram of the sparse estimator (see the section above)."""
    tok = src.tok
    N, V, B, dev, dt = tok.N, tok.V, tok.B, tok.hw.device, tok.dtype
    if N == 0:
        if info is not None:
            info.update(err_bound=0.0, err_kind="probabilistic", support_size=0, tail_rows=0, tail_mass=0.0)
        return torch.zeros(B, B, dtype=torch.float64, device=dev)
    xn = tok.hw.norm(dim=1).to(torch.float64)  # (N,)
    t_c, v_c, p_c, eps_t, lse, _, Rg = _candidates(src, eps, chunk_size, group_weights=xn * (1.0 + 1e-6))
    t_s, v_s, d_s = _sparse_entries(src, t_c, v_c, p_c, lse)
    onehot = torch.zeros(B, N, dtype=torch.float64, device=dev)
    onehot[tok.r, torch.arange(N, device=dev)] = 1.0
    # exact part K^S: sparse token-pair product
    Ds = torch.sparse_coo_tensor(torch.stack([t_s, v_s]), d_s, (N, V), device=dev, is_coalesced=True,
                                 check_invariants=False)  # (t, v) sorted and unique
    with warnings.catch_warnings():  # torch's note that its sparse CSR kernels are in beta
        warnings.simplefilter("ignore", UserWarning)
        M = torch.sparse.mm(Ds, Ds.t()).to_dense()  # (N, N) <D^S_t, D^S_s>
    M = M.mul_(tok.hw @ tok.hw.T).to(torch.float64)
    KS = onehot @ M @ onehot.T
    del M
    # per-id bounds b_v >= ||Z_v||_F
    a = torch.zeros(V, dtype=torch.float64, device=dev).index_add_(0, v_s, d_s.abs().to(torch.float64) * xn[t_s])
    Rv = Rg.norm(dim=0).repeat_interleave(_GROUP)[:V]  # (V,) >= ||Y^R_v||_F, per group of 64 ids
    b = 2.0 * a * Rv + Rv * Rv  # (V,) >= ||Z_v||_F
    r = min(int(samples), V)
    pi = torch.zeros(V, dtype=torch.float64, device=dev)
    if r > 0 and float(b.sum()) > 0:
        full = torch.zeros(V, dtype=torch.bool, device=dev)
        for _ in range(20):  # pi_v = min(1, c b_v) with sum pi = r (the capped ids taken whole)
            rest = float(b[~full].sum())
            k = r - int(full.sum())
            if k <= 0 or rest <= 0:
                break
            pi = torch.where(full, torch.ones_like(b), b * (k / rest))
            new = pi >= 1.0 - 1e-9
            if bool((new & ~full).sum() == 0):
                break
            full |= new
        pi = torch.where(full | (pi >= 1.0 - 1e-9), torch.ones_like(pi), pi)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 104729)
    uni = torch.rand(V, generator=gen, dtype=torch.float64).to(dev)
    ids = torch.nonzero(uni < pi, as_tuple=False).squeeze(1)  # ascending
    Delta = torch.zeros(B, B, dtype=torch.float64, device=dev)
    s2, mx = 0.0, 0.0
    bounds = [0] + list(torch.tensor(tok.counts).cumsum(0).tolist())
    col = torch.full((V,), -1, dtype=torch.long, device=dev)
    step = max(1, min(256, _COLUMN_BLOCK_NUMBERS // N))
    for c0 in range(0, ids.numel(), step):
        sid = ids[c0 : c0 + step]
        m = sid.numel()
        P = _probs(src.cols(sid), lse)  # (N, m) full p on the sampled ids
        col[sid] = torch.arange(m, device=dev)
        sel = torch.nonzero(col[v_s] >= 0, as_tuple=False).squeeze(1)  # entries of D^S on the sampled ids
        ts, cs = t_s[sel], col[v_s[sel]]
        P[ts, cs] = 0.0  # P is now D^R on these ids
        col[sid] = -1
        FS = torch.zeros(B * m, tok.H, dtype=dt, device=dev)  # Y^S_v from the sparse entries
        FS.index_add_(0, tok.r[ts] * m + cs, tok.hw[ts] * d_s[sel, None])
        FS = FS.view(B, m, tok.H).transpose(0, 1)  # (m, B, H)
        FR = torch.empty(B, m, tok.H, dtype=dt, device=dev)  # Y^R_v, per rollout
        for i in range(B):
            lo, hi = bounds[i], bounds[i + 1]
            torch.matmul(P[lo:hi].T, tok.hw[lo:hi], out=FR[i])
        FR = FR.transpose(0, 1)  # (m, B, H)
        C = torch.bmm(FR, FS.transpose(1, 2))  # (m, B, B) Y^R_v Y^S_v^T
        Z = torch.bmm(FR, FR.transpose(1, 2)).add_(C).add_(C.transpose(1, 2)).to(torch.float64)  # Z_v
        w = pi[sid]
        Delta += (Z / w[:, None, None]).sum(0)
        zn = Z.flatten(1).norm(dim=1)  # (m,)
        s2 += float(((1.0 - w) / (w * w) * zn * zn).sum())
        part = w < 1.0
        if bool(part.any()):
            mx = max(mx, float((zn[part] / w[part]).max()))
    part = (pi > 0) & (pi < 1.0)
    if bool(part.any()):  # every sampled term's ||Z_v|| / pi_v is at most this (b_v / pi_v)
        mx = max(mx, float((b[part] / pi[part]).max()))
    elif bool((pi == 0).any()) and float(b[pi == 0].sum()) > 0:  # no sample: the deterministic sum
        mx = float(b[pi == 0].sum())
    K = KS + Delta
    Kn = float(K.norm())
    err = (_SPARSE_Z * math.sqrt(s2) + mx) / Kn if Kn > 0 else (0.0 if s2 == 0 and mx == 0 else float("inf"))
    if bool(((b > 0) & (pi < 1.0)).any()):  # something is estimated (else K_hat = K up to rounding,
        err += _SPARSE_ROUNDING * torch.finfo(dt).eps  # as for exact): plus the estimator's own rounding
    if info is not None:
        info.update(err_bound=err, err_kind="probabilistic", support_size=int(torch.unique(v_s).numel()),
                    sparse_entries=int(d_s.numel()), tail_rows=int(ids.numel()),
                    tail_mass=float((1.0 - torch.zeros(N, dtype=torch.float64, device=dev).index_add_(
                        0, t_s, (d_s + (v_s == tok.y[t_s]).to(d_s.dtype)).to(torch.float64))).clamp_min(0).mean()),
                    err_parts=(math.sqrt(s2), mx, Kn))
    return K


_sparse_gram = _flushing_denormals(_sparse_gram_impl)


def gram_cost(
    n_tokens: int, vocab: int, hidden: int, batch: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
    sketch_dim: int = DEFAULT_SKETCH_DIM, sketch_hidden_dim: int | None = None,
    tail_dim: int = DEFAULT_TAIL_DIM, streaming: bool = False,
) -> dict[str, float]:
    """Flop-equivalent cost estimates of the ``exact``, ``sketch`` and ``support`` backends.

    exact  : N^2 (V + H) matmul flops over the token-block pairs a <= b (half of
             2 N^2 (V + H)) plus the softmax work on N + N^2 / (2 chunk_size) rows;
    sketch : one softmax + two passes (signs, bucket sums) over N x V, the hidden projection
             2 N H q, the contraction 2 N m q and the feature Gram 2 B^2 m q;
    support: one softmax + one group-max pass over N x V, and for u + r vocabulary rows
             (u = min(N, V) assumed: the sampled tokens) the gather, 2 N (u + r) H for the
             features and 2 B^2 (u + r) H for their Gram.
    Elementwise work is weighted by ``ELEMENTWISE_FLOP_WEIGHT`` flops per element. ``streaming``
    (logits formed from the hidden states and the head weight, :func:`streaming_lm_head_gram`):
    every logit formed costs 2 H matmul flops more (softmax rows, support columns).
    """
    N, V, H, B = float(n_tokens), float(vocab), float(hidden), float(batch)
    ew = ELEMENTWISE_FLOP_WEIGHT
    z = 2 * H if streaming else 0.0  # flops per logit formed
    softmax_rows = N + N * max(N - chunk_size, 0.0) / (2.0 * max(1, chunk_size))
    exact = N * N * (V + H) + (ew * _SOFTMAX_PASSES + z) * softmax_rows * V
    m = min(float(sketch_dim), V)
    q = H if sketch_hidden_dim is None else float(sketch_hidden_dim)
    proj = 0.0 if sketch_hidden_dim is None else 2 * N * H * q
    sketch = (ew * (_SOFTMAX_PASSES + _SKETCH_PASSES) + z) * N * V + proj + 2 * N * m * q + 2 * B * B * m * q
    rows = min(V, min(N, V) + float(tail_dim))
    support = (ew * (_SOFTMAX_PASSES + 1) + z) * N * V + rows * ((ew + z) * N + 2 * N * H + 2 * B * B * H)
    return {"exact": exact, "sketch": sketch, "support": support}


def _support_cap(src: "_LogitSource", chunk_size: int) -> int:
    """``auto``: the support size at which the support Gram's work equals the exact Gram's."""
    tok, streaming = src.tok, src.weight is not None
    N, V, H, B = float(tok.N), float(tok.V), float(tok.H), float(tok.B)
    cost = gram_cost(tok.N, tok.V, tok.H, tok.B, chunk_size=chunk_size, streaming=streaming)
    z = 2 * H if streaming else 0.0
    base = (ELEMENTWISE_FLOP_WEIGHT * (_SOFTMAX_PASSES + 1) + z) * N * V
    per_id = (ELEMENTWISE_FLOP_WEIGHT + z) * N + min(2 * N * N, 2 * (N * H + B * B * H))
    return max(1, int((cost["exact"] - base) / per_id))


def choose_method(n_tokens: int, vocab: int, hidden: int, batch: int, **kw) -> str:
    """``auto``'s first choice: 'exact' (no error at all) unless its :func:`gram_cost` exceeds twice
    the support estimator's, else 'support'. On 'support', :func:`lm_head_gram` first tries the
    sparse estimator and keeps it when its error estimate is <= ``tol``, else runs 'support' (its
    deterministic bound held below ``tol``). Never the count sketch: its error is not bounded
    (percent level at a few hundred buckets)."""
    kw = {k: v for k, v in kw.items() if k in ("chunk_size", "sketch_dim", "sketch_hidden_dim", "tail_dim",
                                                "streaming")}
    cost = gram_cost(n_tokens, vocab, hidden, batch, **kw)
    return "exact" if cost["exact"] <= 2.0 * cost["support"] else "support"


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
    tol: float = DEFAULT_GRAM_TOL,
    support_eps: float = DEFAULT_SUPPORT_EPS,
    tail_dim: int = DEFAULT_TAIL_DIM,
    sparse_samples: int = DEFAULT_SPARSE_SAMPLES,
    info: dict | None = None,
) -> torch.Tensor:
    """Gram of per-rollout LM-head gradients, K = G G^T / B (methods.md 3.2).

    Args:
        hidden: (B, T, H) final hidden states (input of the LM head); detached here.
        logits: (B, T, V) logits of the same forward pass (not yet divided by T).
        tokens: (B, T) long, the sampled response tokens y.
        mask: (B, T) response mask m (bool or numbers; only mask != 0 positions count and the
            value multiplies d_it).
        temperature: sampling temperature T (> 0); the softmax is of z / T.
        method: "dense" | "exact" | "sketch" | "support" | "sparse" | "auto" (see the module
            docstring).
        chunk_size: tokens per block of ``exact`` (peak extra memory about
            1.25 * chunk_size * V numbers); the sketch streams cache-sized blocks of at most
            chunk_size tokens.
        sketch_dim: m, vocabulary buckets of the count sketch (clamped to V: exact at m >= V).
        sketch_hidden_dim: q, Gaussian projection of the hidden side; None keeps all H.
        seed: seeds the sketch; the same seed gives the same projection on every rank.
        normalizer: divide by this instead of B (e.g. the global batch size).
        tol: ``support``: relative Frobenius error bound to reach; the support grows (the
            candidates by probability, then the other ids) until it is met (0: all of V, exact).
        support_eps: ``support``: probability above which an id is a position's candidate.
        tail_dim: ``support``: r vocabulary rows sampled from the tail (0: drop the tail).
        sparse_samples: ``sparse`` (and ``auto``, which skips sparse if 0): expected number of
            vocabulary ids sampled for the correction.
        info: if a dict, filled with ``method`` (the backend run), ``err_bound`` (bound on
            ||K_hat - K||_F / ||K||_F: 0 for dense/exact, the support bound, NaN for the
            count sketch, which has none; for ``sparse`` a probabilistic estimate, not a bound),
            ``err_kind`` ("deterministic", "probabilistic" or "none") and, for ``support`` and
            ``sparse``, ``support_size`` (sparse: the union of the S_t), ``tail_rows`` (sparse:
            the sampled ids), ``tail_mass`` (mean over tokens of the mass outside the support);
            ``sparse`` also ``sparse_entries`` (sum of |S_t|) and ``err_parts``.

    Returns:
        (B, B) symmetric, float64 if hidden or logits are float64, else float32.
    """
    _check_method(method, GRAM_METHODS)
    _check_inputs(hidden, logits, tokens, mask, temperature)
    _check_support_options(chunk_size, tol, support_eps, tail_dim)
    dtype = _compute_dtype(hidden, logits)
    tok = _Tokens(hidden, logits, tokens, mask, dtype)
    src = _LogitSource(tok, 1.0 / float(temperature))
    K = _gram_of(src, method, chunk_size=chunk_size, sketch_dim=sketch_dim, sketch_hidden_dim=sketch_hidden_dim,
                 seed=seed, tol=tol, support_eps=support_eps, tail_dim=tail_dim, sparse_samples=sparse_samples,
                 info=info)
    return _normalise(K, tok.B, normalizer, dtype)


def _gram_of(src: _LogitSource, method: str, *, chunk_size: int, sketch_dim: int, sketch_hidden_dim: int | None,
             seed: int, tol: float, support_eps: float, tail_dim: int, sparse_samples: int,
             info: dict | None) -> torch.Tensor:
    """The unnormalised (B, B) Gram of ``method`` (``auto`` resolved here) from the logits of ``src``."""
    tok = src.tok
    streaming = src.weight is not None
    auto = method == "auto"
    if auto:
        method = choose_method(
            tok.N, tok.V, tok.H, tok.B, chunk_size=chunk_size, sketch_dim=sketch_dim,
            sketch_hidden_dim=sketch_hidden_dim, tail_dim=tail_dim, streaming=streaming,
        )
    if info is not None:
        info.clear()
        info.update(method=method, err_bound=float("nan") if method == "sketch" else 0.0)
    K = None  # src is shared by the estimators below (one candidate pass)
    if auto and method == "support" and sparse_samples > 0:  # the sparse estimator first, if its
        sp: dict = {}  # error estimate meets tol; else the support estimator (deterministic bound)
        K = _sparse_gram(src, eps=support_eps, samples=sparse_samples, seed=seed,
                         chunk_size=chunk_size, info=sp)
        if sp["err_bound"] <= tol:
            method = "sparse"
            if info is not None:
                info.clear()
                info.update(method="sparse", **sp)
        else:
            K = None
            cost = gram_cost(tok.N, tok.V, tok.H, tok.B, chunk_size=chunk_size, streaming=streaming)
            if sp["err_bound"] > _SPARSE_FAR * tol and cost["exact"] <= _EXACT_AFTER_SPARSE * cost["support"]:
                # the mass is spread far beyond the candidates (high entropy): the support would grow
                # toward its cap (as much work as exact) before falling back, so go to exact now
                method = "exact"
                if info is not None:
                    info.clear()
                    info.update(method="exact", err_bound=0.0)
    if method == "support":
        cap = _support_cap(src, chunk_size) if auto else None
        K = _support_gram(src, tol=tol, eps=support_eps, tail_dim=tail_dim,
                          seed=seed, chunk_size=chunk_size, info=info, max_support=cap)
        if K is None:  # the batch needs nearly all of V: exact is cheaper from here
            method = "exact"
            if info is not None:
                info.clear()
                info.update(method="exact", err_bound=0.0)
    if method == "sparse" and K is None:
        K = _sparse_gram(src, eps=support_eps, samples=sparse_samples, seed=seed,
                         chunk_size=chunk_size, info=info)
    if method == "exact":
        K = _exact_gram(src, chunk_size)
    elif method == "dense":
        G = _dense_features(src)
        K = G @ G.T
    elif method == "sketch":
        F = _sketch_features(src, sketch_dim, sketch_hidden_dim, seed, chunk_size)
        K = F @ F.T
    if info is not None:  # what err_bound is: a bound, an estimate (sparse), or nothing (sketch)
        info.setdefault("err_kind", "none" if method == "sketch" else "deterministic")
    return K


def _streaming_source(hidden, weight, bias, tokens, mask, temperature) -> _LogitSource:
    """The checked :class:`_LogitSource` of logits z = h W^T (+ bias), formed block by block."""
    if weight.dim() != 2 or hidden.dim() != 3 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, H) with H = hidden.shape[-1]; got weight {tuple(weight.shape)}, "
                         f"hidden {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    B, T, H = hidden.shape
    shape_only = torch.empty((), dtype=hidden.dtype, device=hidden.device).expand(B, T, weight.shape[0])  # no data
    _check_inputs(hidden, shape_only, tokens, mask, temperature)
    dtype = _compute_dtype(hidden, weight)
    tok = _Tokens(hidden, shape_only, tokens, mask, dtype)
    if bool((mask[mask != 0] == 1).all()):  # 0/1 mask: w_t h_t = h_t, one (N, H) copy serves both
        h = tok.hw
    else:
        h = hidden.detach().reshape(B * T, H).index_select(0, tok.flat).to(dtype)  # (N, H) unweighted
    b = None if bias is None else bias.detach().to(dtype)
    return _LogitSource(tok, 1.0 / float(temperature), weight.detach().to(dtype), b, h)


def streaming_lm_head_gram(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    method: str = "support",
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    sketch_hidden_dim: int | None = None,
    seed: int = 0,
    normalizer: float | None = None,
    tol: float = DEFAULT_GRAM_TOL,
    support_eps: float = DEFAULT_SUPPORT_EPS,
    tail_dim: int = DEFAULT_TAIL_DIM,
    sparse_samples: int = DEFAULT_SPARSE_SAMPLES,
    info: dict | None = None,
) -> torch.Tensor:
    """:func:`lm_head_gram` from the hidden states and the LM-head weight, never the logits.

    Every backend reads the logits z = h W^T (+ bias) of the valid tokens in blocks: ``exact``
    in its blocks of at most ``chunk_size`` tokens (the streamed blocks are formed again, at
    2 H flops per logit), the candidate pass of ``support`` / ``sparse`` likewise, their columns
    only on the support's and the sampled vocabulary rows (N x (u + r)); ``auto`` counts the
    matmul in its costs (:func:`gram_cost` with ``streaming``). So the N x V logits never exist
    at once. Same result as ``lm_head_gram(hidden, hidden @ weight.T + bias, ...)`` up to
    rounding. hidden (B, T, H), weight (V, H), bias (V,) or None. -> (B, B).
    """
    _check_method(method, GRAM_METHODS)
    _check_support_options(chunk_size, tol, support_eps, tail_dim)
    src = _streaming_source(hidden, weight, bias, tokens, mask, temperature)
    K = _gram_of(src, method, chunk_size=chunk_size, sketch_dim=sketch_dim, sketch_hidden_dim=sketch_hidden_dim,
                 seed=seed, tol=tol, support_eps=support_eps, tail_dim=tail_dim, sparse_samples=sparse_samples,
                 info=info)
    return _normalise(K, src.tok.B, normalizer, src.tok.dtype)


def rollout_features(
    hidden: torch.Tensor,
    logits: torch.Tensor | None,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    method: str = "sketch",
    *,
    sketch_dim: int = DEFAULT_SKETCH_DIM,
    sketch_hidden_dim: int | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-rollout feature rows F (B, F) with K = F F^T / B_total.

    ``sketch``: F = m*q (m*H without a hidden sketch) numbers per rollout, the features whose
    Gram is ``lm_head_gram(..., method="sketch")`` with the same arguments and seed; the
    trainer all-gathers them across ranks (scope=global, gram sketch or dense) and calls
    :func:`gram_from_features`.
    ``dense``: the full flattened g_i (V*H each); small models only. With ``weight`` (V, H) (and
    ``bias``) instead of ``logits`` (None), the logits are formed block by block from the hidden states.
    """
    _check_method(method, FEATURE_METHODS)
    if (logits is None) == (weight is None):
        raise ValueError("rollout_features needs exactly one of logits (B, T, V) and weight (V, H)")
    if weight is not None:
        src = _streaming_source(hidden, weight, bias, tokens, mask, temperature)
    else:
        _check_inputs(hidden, logits, tokens, mask, temperature)
        src = _LogitSource(_Tokens(hidden, logits, tokens, mask, _compute_dtype(hidden, logits)), 1.0 / float(temperature))
    if method == "dense":
        return _dense_features(src)
    return _sketch_features(src, sketch_dim, sketch_hidden_dim, seed, chunk_size)


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
        return {k: 0.0 for k in mn.GEOM_METRICS}
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
        mn.GEOM_R_IN: mean(r_in),
        mn.GEOM_N_EFF_IN: mean(n_in),
        mn.GEOM_PR_IN: mean(pr_in),
        mn.GEOM_R_OUT: _mean_positive_offdiag(cosine_gram(K_mean)),
        mn.GEOM_N_EFF_OUT: n_eff_out,
    }
