"""``sparse``: exact entries on each token's own candidates, an unbiased importance-sampled
correction for the rest, and a probabilistic error estimate (``info["err_kind"] = "probabilistic"``).

Every token's d_t = w_t (p_t - e_{y_t}) splits into D^S_t, its entries on S_t (the ids with
p_tv > eps_t, plus y_t) and D^R_t, the rest (0 <= D^R_tv = p_tv <= eps_t). Per vocabulary id v,
Y_v (B x H) with rows Y_v,i = sum_{t in i} d_tv x_t, so K = sum_v Y_v Y_v^T, and likewise
K^S = sum_v Y^S_v Y^S_v^T from D^S alone. K^S is computed exactly and sparsely in the token-pair
form K^S_ij = sum_{t in i, s in j} <D^S_t, D^S_s> <x_t, x_s> (a sparse N x V times V x N
product and one N x N hidden Gram). The rest, Delta = K - K^S = sum_v Z_v with
Z_v = Y_v Y_v^T - Y^S_v Y^S_v^T, is estimated by Poisson sampling of ids: v is kept with
probability pi_v = min(1, c b_v) (c such that sum pi = r), independently, and
Delta_hat = sum_{v kept} Z_v / pi_v, so E[K_hat] = K exactly (K_hat = K^S + Delta_hat).
b_v >= ||Z_v||_F is a deterministic per-id bound: ||Y^S_v||_F <= a_v = sum_t |D^S_tv| ||x_t||,
||Y^R_v||_F <= R = (sum_i (sum_{t in i} eps_t ||x_t||)^2)^1/2 and Z_v = Y^R Y^S^T + Y^S Y^R^T +
Y^R Y^R^T, so b_v = 2 a_v R + R^2. Ids whose bound is large are kept with certainty.

Error estimate (probabilistic, not a bound): E||Delta_hat - Delta||_F^2 = sum_v (1 - pi_v) /
pi_v ||Z_v||_F^2, estimated without bias by s^2 = sum_{v kept} (1 - pi_v) / pi_v^2 ||Z_v||_F^2;
the reported value is err = (3 s + m) / ||K_hat||_F with m = max_{v kept, pi_v < 1} ||Z_v||_F /
pi_v (the largest single term, a guard against a variance estimate from few terms). Its
coverage (true error <= err) is measured in tests/algo/test_gram_sparse.py over many seeds and
batch kinds; info["err_kind"] = "probabilistic".
"""

from __future__ import annotations

import math
import warnings

import torch

from salt.algo.gram.base import GRAM_METHODS, GramResult
from salt.algo.gram.candidates import _COLUMN_BLOCK_NUMBERS, _GROUP, _candidates, _flushing_denormals, _probs
from salt.algo.gram.options import GramOptions
from salt.algo.gram.tokens import _LogitSource

_SPARSE_Z = 3.0  # the error estimate counts this many estimated standard deviations (3 s)
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
    """Unnormalised (B, B) float64 Gram of the sparse estimator (see the module docstring)."""
    tok = src.tok
    N, V, B, dev, dt = tok.N, tok.V, tok.B, tok.hw.device, tok.dtype
    if N == 0:
        if info is not None:
            info.update(err_bound=0.0, err_kind="probabilistic", support_size=0, tail_rows=0, tail_mass=0.0)
        return torch.zeros(B, B, dtype=torch.float64, device=dev)
    xn = tok.hw.norm(dim=1).to(torch.float64)  # (N,)
    t_c, v_c, p_c, eps_t, lse, _, Rg = _candidates(src, eps, chunk_size, group_weights=xn * (1.0 + 1e-6))
    t_s, v_s, d_s = _sparse_entries(src, t_c, v_c, p_c, lse)
    onehot = tok.rollout_onehot()
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
    bounds = tok.bounds()
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


@GRAM_METHODS.register("sparse")
def sparse_gram(src: _LogitSource, opts: GramOptions) -> GramResult:
    """``sparse``: ``info`` err_bound (a probabilistic estimate, not a bound), err_kind
    "probabilistic", support_size (the union of the S_t), sparse_entries (sum of |S_t|),
    tail_rows (the sampled ids), tail_mass, err_parts."""
    info = {"method": "sparse"}
    K = _sparse_gram(src, eps=opts.support_eps, samples=opts.sparse_samples, seed=opts.seed,
                     chunk_size=opts.chunk_size, info=info)
    return GramResult(K, info)
