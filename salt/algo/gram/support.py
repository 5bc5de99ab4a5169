r"""``support``: exact on the shared support that carries the probability mass, a sampled tail,
and a deterministic bound on the relative error that it holds below ``tol``.

Every token's d_t = w_t (p_t - e_{y_t}) is split by one vocabulary set U shared by the whole
batch: U holds every sampled token y_t and every id v that some position gives p_tv > eps_t
(its top candidates). On U the features are exact for every token (p_tv of all N tokens on
all of U, not only each position's own candidates), so the rest, the tail T_i = sum_t w_t
p_t|_{V \ U} h_t^T, lives on rows disjoint from the exact part G^U_i: no cross terms, and

    K = K^U + T T^T,   K^U_ij = <G^U_i, G^U_j>,   both PSD.

The tail Gram is estimated from r rows R drawn uniformly without replacement from V \ U
(the first r ids of a seeded permutation of V that are not in U), scaled by 1/sqrt(q),
q = r / |V \ U|: every v outside U is in R with probability q, so E[K_hat] = K^U + T T^T.
If r >= |V \ U| the tail is computed exactly (q = 1).

Error bound (deterministic, every seed): with tau_t = 1 - sum_{v in U} p_tv the tail mass,
mu_t >= max_{v not in U} p_tv (at most eps_t, at most the level of the first id left out, at
most tau_t) and beta_t >= ||p_t restricted to V \ U||_2 (from the candidate pass: the sum of
p^2 over the non-candidates, widened by its worst-case float rounding, plus the left-out
candidates' p^2). With x_t = w_t h_t, X_i the rows of rollout i, b_i^2 = sum_{t in i} beta_t^2
and P_v the column of tail probabilities of id v over the tokens, the tail Gram
S = T T^T = sum_{v not in U} Y_v Y_v^T (Y_v,i = sum_{t in i} p_tv x_t) is PSD with
    tr(S) <= sum_i lam_max(X_i X_i^T) b_i^2                      (per rollout),
    lam_max(S) = max_{|c|=1} sum_v ||X^T (c_r o P_v)||^2 <= lam_max(X X^T) max_i b_i^2,
(c_r: c spread to the tokens) and so ||S||_F <= sqrt(lam_max(S) tr(S)) (sum of squared
eigenvalues <= the largest times their sum). This is what removes the sqrt(B) of the older
Cauchy-Schwarz bound |S_ij| <= sqrt(S_ii S_jj): S's off-diagonal entries are small whenever
the rollouts' hidden states are not aligned, and the spectral bound sees it without forming S.
Where N^2 is affordable and the bound is close to the target, the pair refinement adds the
entrywise bounds -sum ov Q^- <= S_ij <= sum ov Q^+ (Q_ts = <x_t, x_s>, 0 <= <p^tail_t, p^tail_s>
<= ov_ts = min(beta_t beta_s, mu_t tau_s, tau_t mu_s)). Since K_hat - K = A - S with A the
tail sketch's Gram (PSD, or 0 without a sketch), ||K_hat - K||_F <= sqrt(||A||_F^2 + tb^2)
<= err_bound ||K^U||_F (||K||_F >= ||K^U||_F because K - K^U is PSD). ``err_bound`` is this
relative bound; the brute-force tests check it against the exact S on random, shared and
anisotropic inputs (bound / truth 1.0-17 there, 1.8-9 on the benchmark batches).

Cost: one softmax pass over the N x V logits (block by block) plus a group max (groups of
64 ids) to find the candidates, then the N x (u + r) gathered columns, 2 N (u + r) H for the
features and 2 B^2 (u + r) H for their Gram. With ``tol`` > 0 the ids of U enter in order of
their largest probability over the batch, a block at a time (u / 8 ids per round), and the
loop stops as soon as the bound is below ``tol`` (below tol / 1.25 with a tail sketch, which is
then drawn once and always kept, so that E[K_hat] = K given U; its norm joins the reported
bound, which can then exceed tol when the sketch is noisy): it spends only what the batch needs.
When the candidates are used up first (flat rows at a tight tol), the remaining ids follow
in a seeded random order, so the bound can always be met (at U = V the Gram is exact).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from salt.algo.gram.base import GRAM_METHODS, GramResult
from salt.algo.gram.candidates import _COLUMN_BLOCK_NUMBERS, _candidates, _flushing_denormals, _probs
from salt.algo.gram.options import GramOptions
from salt.algo.gram.tokens import _LogitSource, _Tokens

_PAIR_BOUND_NUMBERS = 1 << 22  # N^2 up to this: the pair refinement of the tail bound
_EIG_MAX_TOKENS = 2048  # rollouts up to this long get the exact top eigenvalue of their hidden Gram
_GLOBAL_EIG_MAX = 8192  # min(N, H) up to this: the exact top eigenvalue of the whole batch's hidden Gram
_GROWTH = 8  # U grows by max(256, u / _GROWTH) ids per round of the bound
_SKETCH_MARGIN = 1.25  # with a tail sketch the ids enter until the tail bound is below tol / this


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

    def __init__(self, tok: _Tokens, onehot: torch.Tensor | None = None):
        self.tok = tok
        self.K = torch.zeros(tok.B, tok.B, dtype=torch.float64, device=tok.hw.device)
        self.bounds = tok.bounds()
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

    def __init__(self, tok: _Tokens, hh: torch.Tensor | None = None):
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


def _tail_bound(tok: _Tokens, tau, mu, beta, hs: _HiddenSide, onehot, need: float = 0.0) -> float:
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
    """Unnormalised (B, B) float64 support Gram with the sketched tail (see the module docstring).
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
    onehot = tok.rollout_onehot()
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


@GRAM_METHODS.register("support")
def support_gram(src: _LogitSource, opts: GramOptions) -> GramResult:
    """``support``: U grows until the deterministic bound is below ``opts.tol`` (at U = V: exact).
    ``info``: err_bound, support_size, tail_rows, tail_mass."""
    info = {"method": "support"}
    K = _support_gram(src, tol=opts.tol, eps=opts.support_eps, tail_dim=opts.tail_dim, seed=opts.seed,
                      chunk_size=opts.chunk_size, info=info)
    info["err_kind"] = "deterministic"
    return GramResult(K, info)
