"""What the ``support`` and ``sparse`` estimators share: one pass over the logits that finds every
position's candidates (the ids with p_tv > eps_t) and its log normaliser, p from gathered logits,
and the denormal-flushing wrapper both run under.
"""

from __future__ import annotations

import math

import torch

from salt.algo.gram.tokens import _LogitSource, _stream_rows

_GROUP = 64  # vocabulary ids per group of the candidate search
_MAX_GROUPS_PER_TOKEN = 16  # a flat row is capped here: its threshold rises to the 17th group max
_COLUMN_BLOCK_NUMBERS = 1 << 25  # at most this many numbers in one (N, c) block of support columns


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
    c = _stream_rows(tok, chunk)
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
