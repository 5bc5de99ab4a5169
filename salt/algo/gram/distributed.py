"""The LM-head Gram of a mini-batch spread over data-parallel ranks, with nothing per token exchanged.

Scope ``global`` needs one Gram over every rank's rollouts. The token-pair estimators of
:mod:`salt.algo.gram` (``exact``, ``sparse``, the pair forms of ``support``) need every pair of
tokens, i.e. every rank's hidden states in one place: N x H numbers, 73 GB in float32 for 512
rollouts x 10k tokens at H = 3,584. This module computes the same Gram as the ``support`` estimator
(and ``exact``, its tol = 0 limit: U = V) from what each rank holds, exchanging only
vocabulary-sized, per-rollout and (B, B) data:

* each rank keeps its rollouts' tokens: hidden states, sampled ids and mask never leave it. Its
  candidate pass (one softmax pass over its own logits, formed block by block from the hidden
  states and the head weight) gives its per-id probability levels;
* the shared vocabulary set U: the per-id level (sampled ids at +inf) is all-reduced with MAX
  (V numbers), so every rank sorts the same ids in the same order and takes the same blocks;
* per block of c ids, each rank forms its rollouts' exact features F_i = D_i^T X_i (b_r x c x H,
  D_i the rollout's columns of p - e_y, X_i its mask-weighted hidden states). A rollout lives on
  one rank, so F_i is complete there. The features are exchanged all-to-all by id slices: rank s
  receives every rollout's features on its c / W ids of the block (B x c/W x H numbers), adds
  their (B, B) Gram to its partial sum, and the partial sums are all-reduced (B^2 float64 numbers
  per block). Over a whole call each rank receives B (u + r) H / W feature numbers (u ids of U, r
  of the tail sketch): the traffic grows with rollouts and support size, never with tokens;
* the deterministic tail bound of the support estimator (see ``salt.algo.gram.support``, section
  "support") is assembled from per-rollout and global parts: tr(S) <= sum_i lam_i b_i^2 and
  lambda_max(S) <= lam_max(X X^T) max_i b_i^2, where lam_i (the top eigenvalue of X_i X_i^T) and
  b_i^2 (the sum of the tail's squared l2 norms over rollout i's tokens) are local to the rank
  holding rollout i; only their sums and maxima cross ranks (2 numbers per rank per round).
  lam_max(X X^T) over all N tokens is the top eigenvalue of X^T X = sum_r X_r^T X_r: an
  all-reduce of H^2 float64 numbers, once per call and only when the bound needs it. The
  entrywise pair refinement of the single-process bound (which reads <x_t, x_s> for token pairs
  across rollouts) is not used: the bound stays a valid upper bound, at most as tight as the
  single-process one (equal whenever that one does not refine, e.g. N > 2,048 tokens), so U can
  only be larger, and the Gram closer to the exact one.

The result equals :func:`salt.algo.gram.streaming_lm_head_gram` (``support`` / ``exact``) on
the concatenated mini-batch up to float rounding whenever both stop at the same support size
(tests/algo/test_gram_distributed.py runs 2 gloo processes against the single-process and the
brute-force dense Gram). The ``sparse`` estimator has no such form (its exact part is a token-pair
product over the whole batch) and is refused here.

Communication goes through a :class:`Collectives` object (``salt.train.collectives.RankCollectives``
for torch.distributed; :class:`LocalCollectives` for one process), so this module stays pure tensor
math. Every collective is issued by every rank in the same order: the loop's decisions depend only
on all-reduced values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from salt.algo.gram.auto import choose_method, cost_options
from salt.algo.gram.candidates import _COLUMN_BLOCK_NUMBERS, _candidates, _flushing_denormals, _probs
from salt.algo.gram.options import GramOptions, options_of
from salt.algo.gram.support import (_EIG_MAX_TOKENS, _GLOBAL_EIG_MAX, _GROWTH, _SKETCH_MARGIN, _entry_order,
                                    _support_columns)
from salt.algo.gram.tokens import _LogitSource, _normalise, streaming_source

DISTRIBUTED_METHODS = ("exact", "support", "auto")
_FEATURE_COLS = 256  # ids per feature block (bounds the local (b, c, H) features)
_HIDDEN_ROWS = 4096  # tokens per float64 slice of the hidden side (no float64 copy of all N x H)


class Collectives(Protocol):
    """What the distributed Gram needs of the ranks (every call is collective: all ranks, same order)."""

    world: int
    rank: int

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks in place (every rank gets the same result); returns ``t``."""

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks in place; returns ``t``."""

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` concatenated along dim 0 in rank order."""

    def exchange(self, send: list[torch.Tensor], recv_numel: list[int]) -> list[torch.Tensor]:
        """All-to-all: ``send[s]`` (1-D) goes to rank s; returns the 1-D tensors received from each
        rank, of ``recv_numel[q]`` numbers from rank q."""


class LocalCollectives:
    """One process: every collective is the identity."""

    world, rank = 1, 0

    def sum_(self, t):
        return t

    def max_(self, t):
        return t

    def gather_rows(self, t):
        return t

    def exchange(self, send, recv_numel):
        if [s.numel() for s in send] != list(recv_numel):
            raise ValueError(f"exchange of {[s.numel() for s in send]} numbers, expected {list(recv_numel)}")
        return list(send)


@dataclass(frozen=True)
class _Layout:
    """Rollouts and tokens of every rank: rollout counts b (per rank, in rank order), B and N over
    all ranks, and the largest N of one rank."""

    b: tuple[int, ...]
    B: int
    N: int
    N_max: int

    @staticmethod
    def of(comm: Collectives, n_rollouts: int, n_tokens: int) -> "_Layout":
        c = comm.gather_rows(torch.tensor([[n_rollouts, n_tokens]], dtype=torch.long))  # (W, 2)
        b = tuple(int(x) for x in c[:, 0])
        return _Layout(b, sum(b), int(c[:, 1].sum()), int(c[:, 1].max()))


def _id_slices(c: int, world: int) -> list[tuple[int, int]]:
    """The c ids of a block cut into ``world`` contiguous slices (sizes differ by at most one)."""
    base, extra = divmod(c, world)
    out, lo = [], 0
    for s in range(world):
        hi = lo + base + (1 if s < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class _RankFeatureGram:
    """K = sum over id blocks of F F^T, F (B, c, H) every rollout's features on the block's ids.

    Each rank forms its own rollouts' features, sends rank s the slice of ids s owns
    (:func:`_id_slices`), adds the Gram of what it receives (all B rollouts on its ids) to
    ``partial`` and the partial sums are all-reduced into ``K`` (identical on every rank)."""

    def __init__(self, src: _LogitSource, comm: Collectives, lay: _Layout):
        tok = src.tok
        self.tok, self.comm, self.lay = tok, comm, lay
        self.bounds = [0] + torch.tensor(tok.counts, dtype=torch.long).cumsum(0).tolist()
        self.partial = torch.zeros(lay.B, lay.B, dtype=torch.float64, device=tok.hw.device)
        self.K = self.partial.clone()

    def block(self, D: torch.Tensor) -> torch.Tensor:
        """D (N_local, c) coefficients of this rank's tokens on c ids (the same ids on every rank):
        this rank's (B, B) share of the block's Gram (not reduced)."""
        tok, lay, W = self.tok, self.lay, self.comm.world
        out = torch.zeros(lay.B, lay.B, dtype=torch.float64, device=tok.hw.device)
        for c0 in range(0, D.shape[1], _FEATURE_COLS):
            Dc = D[:, c0 : c0 + _FEATURE_COLS]
            c, b = Dc.shape[1], self.bounds
            F = torch.empty(tok.B, c, tok.H, dtype=D.dtype, device=D.device)  # (b_r, c, H) this rank's rollouts
            for i in range(tok.B):
                if b[i + 1] > b[i]:
                    torch.matmul(Dc[b[i] : b[i + 1]].T, tok.hw[b[i] : b[i + 1]], out=F[i])
                else:
                    F[i].zero_()
            sl = _id_slices(c, W)
            mine = sl[self.comm.rank][1] - sl[self.comm.rank][0]
            got = self.comm.exchange([F[:, lo:hi].reshape(-1) for lo, hi in sl],
                                     [n * mine * tok.H for n in lay.b])
            Fm = torch.cat(got).view(lay.B, mine * tok.H)  # (B, c_mine H) every rollout, my ids
            out += (Fm @ Fm.T).to(torch.float64)
        return out

    def add(self, D: torch.Tensor) -> None:
        self.partial += self.block(D)
        self.K = self.comm.sum_(self.partial.clone())


class _RankHiddenSide:
    """The hidden side of the tail bound from this rank's tokens x_t = w_t h_t (see the module
    docstring): ``lam`` (b_r,) float64 >= the top eigenvalue of each local rollout's X_i X_i^T
    (exact for rollouts of at most ``_EIG_MAX_TOKENS`` tokens, else the trace), and :meth:`Lam`
    >= the top eigenvalue of X X^T over every rank's tokens (collective; once)."""

    def __init__(self, src: _LogitSource, comm: Collectives):
        tok = src.tok
        self.tok, self.comm, self._Lam = tok, comm, None
        self.lam = torch.zeros(tok.B, dtype=torch.float64, device=tok.hw.device)
        a0 = 0
        for i, n in enumerate(tok.counts):
            if 0 < n <= _EIG_MAX_TOKENS:
                Xi = tok.hw[a0 : a0 + n].to(torch.float64)
                self.lam[i] = torch.linalg.eigvalsh(Xi @ Xi.T)[-1].clamp_min(0.0) * (1 + 1e-9) + 1e-300
            elif n:
                self.lam[i] = self._sumsq(a0, a0 + n)
            a0 += n

    def _sumsq(self, a0: int, a1: int) -> torch.Tensor:
        s = torch.zeros((), dtype=torch.float64, device=self.tok.hw.device)
        for r0 in range(a0, a1, _HIDDEN_ROWS):
            s += self.tok.hw[r0 : min(r0 + _HIDDEN_ROWS, a1)].to(torch.float64).pow(2).sum()
        return s

    def Lam(self) -> float:
        if self._Lam is None:
            tok = self.tok
            if tok.H <= _GLOBAL_EIG_MAX:  # X^T X summed over ranks: the nonzero eigenvalues of X X^T
                Q = torch.zeros(tok.H, tok.H, dtype=torch.float64, device=tok.hw.device)
                for r0 in range(0, tok.N, _HIDDEN_ROWS):
                    Xc = tok.hw[r0 : r0 + _HIDDEN_ROWS].to(torch.float64)
                    Q.addmm_(Xc.T, Xc)
                self.comm.sum_(Q)
                top = float(torch.linalg.eigvalsh(Q.float())[-1].clamp_min(0.0))  # float32 eigenvalue, widened
                self._Lam = top * (1.0 + 8.0 * tok.H * 2.0**-24) + 2.0**-22 * float(Q.norm()) + 1e-300
            else:
                self._Lam = float(self.comm.sum_(self._sumsq(0, tok.N).reshape(1))[0])
        return self._Lam


def _tail_bound(hs: _RankHiddenSide, onehot: torch.Tensor, beta: torch.Tensor, lay: _Layout, need: float) -> float:
    """Upper bound on ||T T^T||_F over every rank's rollouts: sqrt(lambda_max(S) tr(S)) with
    tr(S) <= sum_i lam_i b_i^2 and lambda_max(S) <= Lam max_i b_i^2 (tr alone when it is <= need
    or above 4 sqrt(B) need, as in the single-process bound)."""
    b2 = onehot @ (beta * beta)  # (b_r,) local rollouts
    part = torch.tensor([[float((hs.lam * b2).sum()), float(b2.max()) if b2.numel() else 0.0]], dtype=torch.float64)
    st = hs.comm.gather_rows(part)  # (W, 2)
    tr, b2max = float(st[:, 0].sum()), float(st[:, 1].max())
    if tr <= need or tr > 4.0 * need * math.sqrt(max(lay.B, 1)):
        return tr
    op = min(hs.Lam() * b2max, tr)
    return math.sqrt(op * tr)


def _ranked_support_impl(src: _LogitSource, *, comm: Collectives, lay: _Layout, tol: float, eps: float,
                         tail_dim: int, seed: int, chunk_size: int, info: dict | None) -> torch.Tensor:
    """Unnormalised (B, B) float64 support Gram over every rank's rollouts (tol 0: exact)."""
    tok = src.tok
    N, V, dev, dt = tok.N, tok.V, tok.hw.device, tok.dtype
    if lay.N == 0:
        if info is not None:
            info.update(err_bound=0.0, support_size=0, tail_rows=0, tail_mass=0.0)
        return torch.zeros(lay.B, lay.B, dtype=torch.float64, device=dev)
    t_c, v_c, p_c, _, lse, sq_non = _candidates(src, eps, chunk_size)
    sq_non = sq_non * (1.0 + V * torch.finfo(dt).eps)
    level = torch.zeros(V, dtype=dt, device=dev).scatter_reduce_(0, v_c, p_c, "amax")
    level[tok.y] = float("inf")
    comm.max_(level)  # the shared U: same ids, same order on every rank
    order, _, n_y, perm = _entry_order(level, seed)
    onehot = torch.zeros(tok.B, N, dtype=torch.float64, device=dev)
    onehot[tok.r, torch.arange(N, device=dev)] = 1.0
    acc, hs = _RankFeatureGram(src, comm, lay), _RankHiddenSide(src, comm)
    inU = torch.zeros(V, dtype=torch.bool, device=dev)
    p_c2 = p_c.to(torch.float64) ** 2
    mass = torch.zeros(N, dtype=torch.float64, device=dev)
    y_pos = torch.full((V,), -1, dtype=torch.long, device=dev)
    margin = _SKETCH_MARGIN if tail_dim > 0 else 1.0
    col_cap = max(1, _COLUMN_BLOCK_NUMBERS // max(lay.N_max, 1))  # the same blocks on every rank
    u, step, KU_norm, tb, A, A_norm, r = 0, min(max(n_y, 1), col_cap), 0.0, float("inf"), None, 0.0, 0
    while u < V:
        ids = order[u : u + step].sort().values
        acc.add(_support_columns(src, ids, lse, y_pos, mass))  # (N_local, c) p - e_y of this rank's tokens
        inU[ids] = True
        u += ids.numel()
        step = min(max(256, u // _GROWTH), col_cap)
        if tol == 0:  # exact: every id, no bound to evaluate
            continue
        beta = torch.sqrt(sq_non + torch.zeros(N, dtype=torch.float64, device=dev).index_add_(
            0, t_c, p_c2 * (~inU[v_c])))  # >= ||p_t restricted to V \ U||_2
        KU_norm = float(acc.K.norm())
        tb = _tail_bound(hs, onehot, beta, lay, need=tol * KU_norm / margin)
        if u >= n_y and margin * tb <= tol * KU_norm and u < V:  # every e_y is in U
            if tail_dim > 0:  # drawn once and always kept (E[K_hat] = K given U)
                r = min(int(tail_dim), V - u)
                R, q = perm[~inU[perm]][:r], r / (V - u)
                part = torch.zeros_like(acc.partial)
                for c0 in range(0, r, col_cap):
                    part += acc.block(_probs(src.cols(R[c0 : c0 + col_cap]), lse).mul_(1.0 / math.sqrt(q)))
                A = comm.sum_(part)
                A_norm = float(A.norm())
            break
    if u == V:
        tb = 0.0
    K = acc.K
    if A is not None:
        K = K + A
        if r == V - u:
            tb, A_norm = 0.0, 0.0
    if tol == 0:
        KU_norm = float(K.norm())
    err = math.sqrt(A_norm**2 + tb**2) / KU_norm if KU_norm > 0 else (0.0 if tb == 0 and A_norm == 0 else float("inf"))
    tail = comm.sum_(torch.tensor([float((1.0 - mass).clamp_min(0).sum())], dtype=torch.float64))  # every rank
    if info is not None:
        info.update(err_bound=err, support_size=u, tail_rows=r, tail_mass=float(tail[0]) / lay.N)
    return K


_ranked_support = _flushing_denormals(_ranked_support_impl)


def distributed_lm_head_gram(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                             temperature: float = 1.0, method: str = "auto", *, comm: Collectives | None = None,
                             bias: torch.Tensor | None = None, options: GramOptions | None = None,
                             normalizer: float | None = None, info: dict | None = None,
                             **option_values: Any) -> torch.Tensor:
    """The (B, B) LM-head Gram of every rank's rollouts (in rank order) from this rank's own.

    hidden (b, T, H), tokens (b, T), mask (b, T): this rank's rollouts (each rank may hold a
    different b and T); weight (V, H) and bias (V,) the head's full weight, the same on every rank.
    ``method``: ``support`` (bound held below ``tol``, optional tail sketch of ``tail_dim`` ids),
    ``exact`` (every vocabulary id: no error), ``auto`` (``exact`` when :func:`choose_method`
    picks it on the global sizes, else ``support``; never the sparse estimator, which needs token
    pairs across ranks). ``normalizer`` defaults to the global B. ``info`` gets ``method``,
    ``err_bound`` (deterministic), ``err_kind``, ``support_size``, ``tail_rows``, ``tail_mass``.
    The options as in :func:`salt.algo.gram.lm_head_gram` (``options`` and/or its fields by name);
    this estimator reads ``chunk_size``, ``tol``, ``support_eps``, ``tail_dim``, ``seed`` and, for
    ``auto``'s cost rule, ``sketch_dim`` / ``sketch_hidden_dim`` (``sparse_samples``, an option of
    the single-process ``auto``, is accepted and not used). Every rank returns the same Gram."""
    if method not in DISTRIBUTED_METHODS:
        raise ValueError(f"gram method '{method}' has no distributed form (choose one of "
                         f"{', '.join(DISTRIBUTED_METHODS)}): across ranks only per-rollout features are exchanged")
    opts = options_of(options, option_values, "distributed_lm_head_gram")  # checked (errors name the run-config keys)
    comm = comm or LocalCollectives()
    src = streaming_source(hidden, weight, bias, tokens, mask, temperature)
    lay = _Layout.of(comm, src.tok.B, src.tok.N)
    if method == "auto":
        method = choose_method(lay.N, src.tok.V, src.tok.H, lay.B, **cost_options(opts), streaming=True)
    exact = method == "exact"
    if info is not None:
        info.clear()
        info.update(method=method, err_kind="deterministic")
    K = _ranked_support(src, comm=comm, lay=lay, tol=0.0 if exact else opts.tol, eps=opts.support_eps,
                        tail_dim=0 if exact else opts.tail_dim, seed=opts.seed, chunk_size=opts.chunk_size, info=info)
    return _normalise(K, lay.B, normalizer, src.tok.dtype)
