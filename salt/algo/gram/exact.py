"""The exact Gram, two ways: ``dense`` forms every g_i (V*H numbers each; a reference for small
models), ``exact`` the token-pair factorisation

    K_ij = sum_{t in i, s in j} (d_t . d_s)(w_t h_t . w_s h_s),   d_t = p_t - e_{y_t},

over the valid tokens only, in blocks of ``chunk_size`` tokens. It holds one block of d
(chunk_size x V), one streamed block of chunk_size/4 x V and chunk_size^2 pair products, never
B x V x H. d is formed by writing the softmax into a reused block buffer and subtracting 1 at y
(the e_y part is one indexed write per token); the mask weight multiplies h instead of the V-wide d.
"""

from __future__ import annotations

import torch

from salt.algo.gram.base import GRAM_METHODS, GramResult, exact_info, register_features
from salt.algo.gram.options import GramOptions
from salt.algo.gram.tokens import _LogitSource, _Tokens


def _dense_features(src: _LogitSource) -> torch.Tensor:
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
        self.onehot = tok.rollout_onehot()

    def add(self, Da: torch.Tensor, a0: int, Db: torch.Tensor, b0: int, symmetric: bool) -> None:
        """Da (ca, V) holds tokens a0.., Db (cb, V) tokens b0..; adds the (a, b) pair block and,
        if ``symmetric`` (disjoint token ranges), its mirror (b, a)."""
        tok, ca, cb = self.tok, Da.shape[0], Db.shape[0]
        M = (Da @ Db.T) * (tok.hw[a0 : a0 + ca] @ tok.hw[b0 : b0 + cb].T)  # (ca, cb)
        blk = self.onehot[:, a0 : a0 + ca] @ M.to(torch.float64) @ self.onehot[:, b0 : b0 + cb].T  # (B, B)
        self.K += blk + blk.T if symmetric else blk


def _exact_gram(src: _LogitSource, chunk_size: int) -> torch.Tensor:
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


@register_features("dense", err_bound=0.0, err_kind="deterministic")
def dense_features(src: _LogitSource, opts: GramOptions) -> torch.Tensor:
    """``dense``: every g_i flattened, (B, V*H)."""
    return _dense_features(src)


@GRAM_METHODS.register("exact")
def exact_gram(src: _LogitSource, opts: GramOptions) -> GramResult:
    """``exact``: the token-pair Gram in blocks of ``opts.chunk_size`` tokens, no error."""
    return GramResult(_exact_gram(src, opts.chunk_size), exact_info())
