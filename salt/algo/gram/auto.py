"""``auto`` and its cost model: the one place a Gram backend is chosen.

``auto`` runs, on the batch it is given (the gathered batch under scope ``global``, so every rank
decides alike):

1. ``exact`` when :func:`gram_cost` says it costs at most twice the support estimator
   (:func:`choose_method`): no error at all;
2. else the ``sparse`` estimator (unless ``sparse_samples`` is 0), kept when its probabilistic
   error estimate is at most ``tol``; when it misses ``tol`` by more than _SPARSE_FAR and exact
   costs at most _EXACT_AFTER_SPARSE times the support estimator, ``exact``;
3. else ``support`` with its deterministic bound held below ``tol``, stopped for ``exact`` once
   its support reaches the size at which it would cost as much as exact (:func:`_support_cap`).

Never the count sketch: its error has no bound (percent level at a few hundred buckets). The
``info`` returned is that of the backend that ran (``method`` names it, ``err_kind`` says whether
``err_bound`` is a bound). Callers pass ``"auto"`` down and never decide themselves.
"""

from __future__ import annotations

from typing import Any

from salt.algo.gram.base import GRAM_METHODS, GramResult
from salt.algo.gram.exact import exact_gram
from salt.algo.gram.options import DEFAULTS, GramOptions
from salt.algo.gram.sparse import sparse_gram
from salt.algo.gram.support import _support_gram
from salt.algo.gram.tokens import _LogitSource

# Cost model of `gram_cost`: one elementwise pass over a (tokens x V) block (max, exp, sum,
# gather) costs about as much wall time on CPU as this many matmul flops per element
# (measured 30-45 on a 2-thread AVX-512 Xeon: softmax of 1024 x 32000 vs a 512 x 512 x 32000
# matmul).
ELEMENTWISE_FLOP_WEIGHT = 40.0
# Elementwise passes over the logits per softmax (scale, max, exp, sum, normalise).
_SOFTMAX_PASSES = 5
# Extra passes of the sketch: multiply by signs, rotated bucket sums.
_SKETCH_PASSES = 2
# auto, when the sparse estimate misses tol by more than this factor and exact costs at most
# _EXACT_AFTER_SPARSE x the support estimator's nominal cost (gram_cost): exact directly. Measured
# at 3 nats (benchmarks/README.md): support grew toward its cap first and cost 180% (case a) and
# 149% (case b) of the LM-head forward; exact alone costs 65% and 102%. A cost rule only: every
# path auto can take reports an error figure <= tol (exact: 0).
_SPARSE_FAR = 2.0
_EXACT_AFTER_SPARSE = 16.0


def gram_cost(
    n_tokens: int, vocab: int, hidden: int, batch: int, *, chunk_size: int = DEFAULTS.chunk_size,
    sketch_dim: int = DEFAULTS.sketch_dim, sketch_hidden_dim: int | None = None,
    tail_dim: int = DEFAULTS.tail_dim, streaming: bool = False,
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


def cost_options(opts: GramOptions) -> dict[str, Any]:
    """The options :func:`gram_cost` reads, as its keywords: every cost ``auto`` compares is that of
    the options it runs with (the configured ``tail_dim``, not the default)."""
    return dict(chunk_size=opts.chunk_size, sketch_dim=opts.sketch_dim, sketch_hidden_dim=opts.sketch_hidden_dim,
                tail_dim=opts.tail_dim)


def _costs(src: _LogitSource, opts: GramOptions) -> dict[str, float]:
    """:func:`gram_cost` of this batch (streamed logits or not) under ``opts``."""
    tok = src.tok
    return gram_cost(tok.N, tok.V, tok.H, tok.B, **cost_options(opts), streaming=src.weight is not None)


def _support_cap(src: _LogitSource, opts: GramOptions) -> int:
    """``auto``: the support size at which the support Gram's work equals the exact Gram's."""
    tok, streaming = src.tok, src.weight is not None
    N, V, H, B = float(tok.N), float(tok.V), float(tok.H), float(tok.B)
    cost = _costs(src, opts)
    z = 2 * H if streaming else 0.0
    base = (ELEMENTWISE_FLOP_WEIGHT * (_SOFTMAX_PASSES + 1) + z) * N * V
    per_id = (ELEMENTWISE_FLOP_WEIGHT + z) * N + min(2 * N * N, 2 * (N * H + B * B * H))
    return max(1, int((cost["exact"] - base) / per_id))


def choose_method(n_tokens: int, vocab: int, hidden: int, batch: int, **kw) -> str:
    """``auto``'s first choice: 'exact' (no error at all) unless its :func:`gram_cost` exceeds twice
    the support estimator's, else 'support'. On 'support', :func:`auto_gram` first tries the
    sparse estimator and keeps it when its error estimate is <= ``tol``, else runs 'support' (its
    deterministic bound held below ``tol``). Never the count sketch: its error is not bounded
    (percent level at a few hundred buckets)."""
    kw = {k: v for k, v in kw.items() if k in ("chunk_size", "sketch_dim", "sketch_hidden_dim", "tail_dim",
                                                "streaming")}
    cost = gram_cost(n_tokens, vocab, hidden, batch, **kw)
    return "exact" if cost["exact"] <= 2.0 * cost["support"] else "support"


@GRAM_METHODS.register("auto")
def auto_gram(src: _LogitSource, opts: GramOptions) -> GramResult:
    """``auto`` (see the module docstring): the backend chosen on this batch, and its result."""
    tok = src.tok
    first = choose_method(tok.N, tok.V, tok.H, tok.B, **cost_options(opts), streaming=src.weight is not None)
    if first == "exact":
        return exact_gram(src, opts)
    if opts.sparse_samples > 0:  # src is shared with the support estimator below (one candidate pass)
        sparse = sparse_gram(src, opts)
        if sparse.info["err_bound"] <= opts.tol:
            return sparse
        cost = _costs(src, opts)
        if sparse.info["err_bound"] > _SPARSE_FAR * opts.tol and cost["exact"] <= _EXACT_AFTER_SPARSE * cost["support"]:
            # the mass is spread far beyond the candidates (high entropy): the support would grow
            # toward its cap (as much work as exact) before falling back, so go to exact now
            return exact_gram(src, opts)
    info = {"method": "support"}
    K = _support_gram(src, tol=opts.tol, eps=opts.support_eps, tail_dim=opts.tail_dim, seed=opts.seed,
                      chunk_size=opts.chunk_size, info=info, max_support=_support_cap(src, opts))
    if K is None:  # the batch needs nearly all of V: exact is cheaper from here
        return exact_gram(src, opts)
    info["err_kind"] = "deterministic"
    return GramResult(K, info)
