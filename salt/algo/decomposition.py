"""SALT: subspace-adaptive reweighting of group-relative advantages (methods.md 3.4, 3.5).

Given the Gram K (B, B) of per-rollout gradient features (``salt.algo.gram``) and the
advantages A (B,), :func:`decompose` splits A into a shared channel P A (P the projector on the
top-k eigenvectors of K) and an exploration residual (I - P) relu(A), and mixes them with an
adaptive alpha = clamp(1 - n_eff, alpha_min, alpha_max). Pure function: float64 inside, no
global RNG, never raises or returns NaN on degenerate input (it falls back to A unchanged).

Metric definitions where methods.md leaves a choice:
  salt/eig_max, salt/eig_min  largest / smallest eigenvalue of K (eig_min may be a tiny
                              negative number from round-off);
  salt/eig_ratio              eig_max / (max(eig_min, 0) + 1e-10);
  salt/k                      the k used (also for k_fixed, capped at B - 1);
  salt/residual_bound         lambda_{k+1} ||(I - P) A||^2 with lambda_{k+1} the (k+1)-th
                              largest eigenvalue of K (clamped at 0), also for subspace=random;
  salt/shared_energy_ratio    (PA)^T K (PA) / (A^T K A), 1 when A^T K A = 0;
  salt/main_contrib_ratio     ||PA||^2 / (||PA||^2 + alpha^2 ||(I-P) relu(A)||^2), 1 when 0/0;
  salt/n_eff_final            effective_sample_size(K, A_final);
  salt/pr_final               participation ratio of the Gram of the reweighted updates
                              u_i = A_final_i g_i, i.e. of diag(A_final) K diag(A_final);
  channels=residual_only      A_final = alpha (I - P) relu(A) (the residual channel as it
                              enters the sum); shared_only: A_final = P A.
On fallback: A_final = A, shared = A, residual = 0, alpha = 0, k = 0, main_contrib_ratio =
shared_energy_ratio = 1, and PR / n_eff of the input when they are finite (else 0).

Eigen-solver (``eigensolver``): ``eigh`` (ours, the default) takes the top-k eigenvectors from a float64
``eigh``. ``published`` follows the published code: when k < B and B >= 3k it takes them from
``torch.lobpcg`` on the float32 Gram, started from a (B, k) standard Gaussian drawn from a
``torch.Generator`` seeded with ``seed`` (the published call draws the same start from torch's global
generator: with equal seeds the two are the same numbers); otherwise ``eigh`` as ours. LOBPCG stops
at its default tolerance, so its subspace differs from eigh's (docs/fidelity.md row 16).

Zero Gram (``zero_gram``): ``fallback`` (ours, the default) returns A unchanged as above.
``published`` reproduces the published code: PR = n_eff = 0, so k = k_min and alpha = 1, and its
"shared" subspace is whatever the eigen-solver returns for the zero matrix: with ``eigensolver:
published`` and B >= 3k the LOBPCG start itself (a uniformly random direction, seeded as above), else
the last k standard basis vectors (eigh of the zero matrix is the identity; the published code takes
that branch at B = 2). With k = 1 and relu on: A_final = relu(A) + v v^T min(A, 0). salt/fallback is
0 in that case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from salt.algo.gram_metrics import effective_sample_size, participation_ratio
from salt.metric_names import SALT_METRICS

SUBSPACES = ("top", "random")
CHANNELS = ("both", "shared_only", "residual_only")
ZERO_GRAM = ("fallback", "published")
EIGENSOLVERS = ("eigh", "published")

METRIC_KEYS = SALT_METRICS  # every key of SaltResult.metrics (salt.metric_names)


@dataclass
class SaltConfig:
    """SALT hyper-parameters and ablation switches (methods.md 3.4)."""

    rho: float = 1.0  # k = round(rho * PR) before clamping; > 0
    k_min: int = 1  # lower clamp of k; >= 1
    k_max: int = 64  # upper clamp of k (also capped at B - 1); >= k_min
    alpha_min: float = 0.0  # lower clamp of alpha = 1 - n_eff
    alpha_max: float = 1.0  # upper clamp of alpha; >= alpha_min
    alpha_fixed: float | None = None  # a number replaces the adaptive alpha (ablation)
    relu_exploration: bool = True  # residual channel uses relu(A) (False: plain A)
    k_fixed: int | None = None  # a fixed subspace size instead of rho * PR (capped at B - 1)
    subspace: str = "top"  # "top" eigenvectors of K | "random" k-dim subspace (control)
    channels: str = "both"  # "both" | "shared_only" | "residual_only"
    normalize_final: bool = False  # rescale A_final to the unbiased std of A
    seed: int = 0  # seeds the random subspace (torch.Generator, no global RNG)
    zero_gram: str = "fallback"  # "fallback": A unchanged | "published": the published code's outcome (docstring)
    eigensolver: str = "eigh"  # "eigh" (float64) | "published": LOBPCG from a seeded start when B >= 3k

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"SaltConfig.{name}={getattr(self, name)!r} is invalid: expected {allowed}")

        if not (isinstance(self.rho, (int, float)) and math.isfinite(self.rho) and self.rho > 0):
            raise bad("rho", "a finite number > 0")
        if not (isinstance(self.k_min, int) and self.k_min >= 1):
            raise bad("k_min", "an integer >= 1")
        if not (isinstance(self.k_max, int) and self.k_max >= self.k_min):
            raise bad("k_max", f"an integer >= k_min ({self.k_min})")
        for name in ("alpha_min", "alpha_max"):
            if not (isinstance(getattr(self, name), (int, float)) and math.isfinite(getattr(self, name))):
                raise bad(name, "a finite number")
        if self.alpha_max < self.alpha_min:
            raise bad("alpha_max", f"a number >= alpha_min ({self.alpha_min})")
        if self.alpha_fixed is not None and not (
            isinstance(self.alpha_fixed, (int, float)) and math.isfinite(self.alpha_fixed)
        ):
            raise bad("alpha_fixed", "null (adaptive alpha) or a finite number")
        if self.k_fixed is not None and not (isinstance(self.k_fixed, int) and self.k_fixed >= 1):
            raise bad("k_fixed", "null (k from the participation ratio) or an integer >= 1")
        if self.subspace not in SUBSPACES:
            raise bad("subspace", " or ".join(repr(s) for s in SUBSPACES))
        if self.channels not in CHANNELS:
            raise bad("channels", " or ".join(repr(s) for s in CHANNELS))
        if self.zero_gram not in ZERO_GRAM:
            raise bad("zero_gram", " or ".join(repr(s) for s in ZERO_GRAM))
        if self.eigensolver not in EIGENSOLVERS:
            raise bad("eigensolver", " or ".join(repr(s) for s in EIGENSOLVERS))
        if not isinstance(self.relu_exploration, bool):
            raise bad("relu_exploration", "true or false")
        if not isinstance(self.normalize_final, bool):
            raise bad("normalize_final", "true or false")
        if not isinstance(self.seed, int):
            raise bad("seed", "an integer")


@dataclass
class SaltResult:
    """Output of :func:`decompose`. Tensors are (B,) in the input dtype and device.

    ``shared`` = P A and ``residual`` = (I - P) relu(A) are the raw channels (before alpha and
    the ``channels`` switch); ``advantages`` is A_final. On fallback: advantages = A,
    shared = A, residual = 0.
    """

    advantages: torch.Tensor
    shared: torch.Tensor
    residual: torch.Tensor
    alpha: float
    k: int
    participation_ratio: float
    n_eff: float
    metrics: dict[str, float] = field(default_factory=dict)
    fallback: bool = False


def decompose(gram: torch.Tensor, advantages: torch.Tensor, cfg: SaltConfig | None = None) -> SaltResult:
    """SALT decomposition, methods.md 3.4 steps 1-8. gram (B, B), advantages (B,) -> SaltResult."""
    cfg = SaltConfig() if cfg is None else cfg
    K, A = _prepare(gram, advantages)  # float64, K symmetrised
    reason = _degenerate(K, A)
    if reason == "zero Gram" and cfg.zero_gram == "published":
        return _published_zero_gram(K, A, advantages, cfg)
    eig = None if reason else _eigh(K)
    if eig is None:
        return _fallback(K, A, advantages)
    evals, evecs = eig  # ascending
    B = A.numel()
    pr = participation_ratio(K)  # step 1
    k = choose_k(pr, B, cfg)  # step 2
    if cfg.subspace == "top":
        basis = _top_basis(K, evecs[:, B - k :], k, cfg)  # (B, k) eigenvectors of the k largest eigenvalues
    else:
        basis = _random_basis(B, k, cfg.seed).to(K.device)  # (B, k) control
    P = basis @ basis.T  # step 3: (B, B) projector
    n_eff = effective_sample_size(K, A)  # step 4
    if cfg.alpha_fixed is not None:  # step 5
        alpha = float(cfg.alpha_fixed)
    else:
        alpha = _clamp(1.0 - n_eff, cfg.alpha_min, cfg.alpha_max)
    explore = A.clamp_min(0.0) if cfg.relu_exploration else A
    shared, residual = P @ A, explore - P @ explore  # step 6
    final = _combine(shared, residual, alpha, cfg.channels)
    if cfg.normalize_final:  # step 7
        final = _match_std(final, A)
    metrics = _metrics(K, A, P, evals, k, pr, n_eff, alpha, shared, residual, final)
    dt = advantages.dtype if advantages.is_floating_point() else torch.float32
    return SaltResult(  # step 8: A_final goes to the loss where A would have gone
        advantages=final.to(dt), shared=shared.to(dt), residual=residual.to(dt), alpha=alpha,
        k=k, participation_ratio=pr, n_eff=n_eff, metrics=metrics, fallback=False,
    )


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _prepare(gram: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks (programming errors raise), then float64 copies: K symmetrised, A flat."""
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be (B,), got shape {tuple(advantages.shape)}")
    B = advantages.shape[0]
    if tuple(gram.shape) != (B, B):
        raise ValueError(f"gram must be (B, B) = {(B, B)} to match advantages, got {tuple(gram.shape)}")
    K = gram.detach().to(torch.float64)
    return 0.5 * (K + K.T), advantages.detach().to(torch.float64)


def _degenerate(K: torch.Tensor, A: torch.Tensor) -> str | None:
    """Name of the degenerate case of methods.md 3.4, or None when SALT can run."""
    if A.numel() < 2:
        return "B < 2"
    if not (torch.isfinite(K).all() and torch.isfinite(A).all()):
        return "non-finite input"
    if not bool((A != 0).any()):
        return "all advantages zero"
    if not float(torch.trace(K)) > 0 or not bool((K != 0).any()):
        return "zero Gram"
    return None


def _eigh(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ascending eigenvalues (B,) and eigenvectors (B, B), or None if the solver fails."""
    try:
        evals, evecs = torch.linalg.eigh(K)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        return None
    if not (torch.isfinite(evals).all() and torch.isfinite(evecs).all()):
        return None
    return evals, evecs


def _lobpcg_taken(B: int, k: int, cfg: SaltConfig) -> bool:
    """The published code's branch: LOBPCG when k < B and B >= 3k."""
    return cfg.eigensolver == "published" and k < B and B >= 3 * k


def _top_basis(K: torch.Tensor, eigh_basis: torch.Tensor, k: int, cfg: SaltConfig) -> torch.Tensor:
    """(B, k) basis of the shared subspace: ``eigh_basis`` (the top-k eigenvectors from eigh), or with
    ``eigensolver: published`` and B >= 3k, LOBPCG's on the float32 Gram from a seeded Gaussian start
    (module docstring). A LOBPCG failure falls back to eigh, as the published code does."""
    B = K.shape[0]
    if not _lobpcg_taken(B, k, cfg):
        return eigh_basis
    gen = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    start = torch.randn(B, k, generator=gen, dtype=torch.float32)  # the draw of torch.lobpcg's X=None
    if not bool((K != 0).any()):  # zero Gram: LOBPCG's residual is 0 from the start and it returns the start's
        return torch.linalg.qr(start.double())[0].to(K.device)  # span (after its 1000 iterations; same projector)
    try:
        _, vecs = torch.lobpcg(K.detach().to("cpu", torch.float32), k=k, X=start, largest=True)
    except RuntimeError:
        return eigh_basis
    if not torch.isfinite(vecs).all():
        return eigh_basis
    return vecs.to(K.device, torch.float64)


def _clamp(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def choose_k(pr: float, B: int, cfg: SaltConfig) -> int:
    """Step 2: k = clamp(round(rho PR), k_min, min(k_max, B - 1)); k_fixed is only capped at B - 1."""
    upper = max(1, min(cfg.k_max, B - 1))
    if cfg.k_fixed is not None:
        return int(min(cfg.k_fixed, B - 1))
    return int(min(max(round(cfg.rho * pr), cfg.k_min), upper))


def subspace_size(gram: torch.Tensor, cfg: SaltConfig | None = None) -> int:
    """The k :func:`decompose` uses for a non-degenerate ``gram`` (B, B), B >= 2 (steps 1-2)."""
    K, _ = _prepare(gram, torch.zeros(gram.shape[0], dtype=torch.float64))  # float64, symmetrised
    return choose_k(participation_ratio(K), K.shape[0], SaltConfig() if cfg is None else cfg)


def _random_basis(B: int, k: int, seed: int) -> torch.Tensor:
    """(B, k) orthonormal basis of a uniformly random k-dim subspace (QR of a Gaussian)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(B, k, generator=gen, dtype=torch.float64))
    return q


def _combine(shared: torch.Tensor, residual: torch.Tensor, alpha: float, channels: str) -> torch.Tensor:
    if channels == "shared_only":
        return shared.clone()
    if channels == "residual_only":
        return alpha * residual
    return shared + alpha * residual


def _match_std(final: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Rescale ``final`` to the unbiased std of A (left unchanged if its own std is ~0)."""
    s_final, s_a = float(final.std(unbiased=True)), float(A.std(unbiased=True))
    return final * (s_a / s_final) if s_final > 1e-12 else final


def _ratio(num: float, den: float, default: float) -> float:
    return float(num / den) if den > 1e-30 and math.isfinite(num / den) else default


def _metrics(K, A, P, evals, k, pr, n_eff, alpha, shared, residual, final) -> dict[str, float]:
    """Every key of METRIC_KEYS (methods.md 3.5), all finite python floats."""
    B = A.numel()
    lam_max, lam_min = float(evals[-1]), float(evals[0])
    lam_next = float(evals[B - k - 1]) if k < B else 0.0  # lambda_{k+1}, (k+1)-th largest
    sh2, res2 = float(shared @ shared), float(residual @ residual)
    main = _ratio(sh2, sh2 + alpha**2 * res2, 1.0)
    shared_energy = _ratio(float(shared @ K @ shared), float(A @ K @ A), 1.0)
    resid_a = A - P @ A  # (I - P) A
    K_final = final[:, None] * K * final[None, :]  # Gram of the reweighted updates A_i g_i
    out = {
        "salt/participation_ratio": pr, "salt/n_eff": n_eff, "salt/alpha": alpha, "salt/k": float(k),
        "salt/eig_max": lam_max, "salt/eig_min": lam_min,
        "salt/eig_ratio": lam_max / (max(lam_min, 0.0) + 1e-10),
        "salt/main_contrib_ratio": main, "salt/exp_contrib_ratio": 1.0 - main,
        "salt/positive_adv_ratio": float((A > 0).double().mean()),
        "salt/shared_energy_ratio": shared_energy, "salt/residual_energy_ratio": 1.0 - shared_energy,
        "salt/residual_bound": max(lam_next, 0.0) * float(resid_a @ resid_a),
        "salt/n_eff_final": effective_sample_size(K, final),
        "salt/pr_final": participation_ratio(K_final), "salt/fallback": 0.0,
    }
    return {key: (v if math.isfinite(v) else 0.0) for key, v in out.items()}


def _published_zero_gram(K: torch.Tensor, A: torch.Tensor, advantages: torch.Tensor, cfg: SaltConfig) -> SaltResult:
    """The published outcome on a zero Gram (module docstring): k = k_min, alpha = clamp(1), and the
    subspace the eigen-solver returns for the zero matrix."""
    B = A.numel()
    k = choose_k(0.0, B, cfg)
    basis = _top_basis(K, torch.eye(B, dtype=torch.float64, device=K.device)[:, B - k:], k, cfg)
    P = basis @ basis.T
    alpha = float(cfg.alpha_fixed) if cfg.alpha_fixed is not None else _clamp(1.0, cfg.alpha_min, cfg.alpha_max)
    explore = A.clamp_min(0.0) if cfg.relu_exploration else A
    shared, residual = P @ A, explore - P @ explore
    final = _combine(shared, residual, alpha, cfg.channels)
    if cfg.normalize_final:
        final = _match_std(final, A)
    sh2, res2 = float(shared @ shared), float(residual @ residual)
    metrics = {key: 0.0 for key in METRIC_KEYS}
    metrics.update({
        "salt/alpha": alpha, "salt/k": float(k), "salt/main_contrib_ratio": _ratio(sh2, sh2 + alpha**2 * res2, 1.0),
        "salt/positive_adv_ratio": float((A > 0).double().mean()), "salt/residual_energy_ratio": 1.0,
    })
    metrics["salt/exp_contrib_ratio"] = 1.0 - metrics["salt/main_contrib_ratio"]
    dt = advantages.dtype if advantages.is_floating_point() else torch.float32
    return SaltResult(advantages=final.to(dt), shared=shared.to(dt), residual=residual.to(dt), alpha=alpha, k=k,
                      participation_ratio=0.0, n_eff=0.0, metrics=metrics, fallback=False)


def _fallback(K: torch.Tensor, A: torch.Tensor, advantages: torch.Tensor) -> SaltResult:
    """A unchanged, salt/fallback = 1, every metric finite (0 where undefined)."""
    finite = bool(torch.isfinite(K).all() and torch.isfinite(A).all()) and A.numel() > 0
    pr = participation_ratio(K) if finite else 0.0
    n_eff = effective_sample_size(K, A) if finite else 0.0
    pr_final = participation_ratio(A[:, None] * K * A[None, :]) if finite else 0.0
    pos = float((A > 0).double().mean()) if A.numel() > 0 else 0.0
    metrics = {key: 0.0 for key in METRIC_KEYS}
    metrics.update({
        "salt/participation_ratio": pr, "salt/n_eff": n_eff, "salt/n_eff_final": n_eff,
        "salt/pr_final": pr_final, "salt/positive_adv_ratio": pos, "salt/main_contrib_ratio": 1.0,
        "salt/shared_energy_ratio": 1.0, "salt/fallback": 1.0,
    })
    metrics = {key: (v if math.isfinite(v) else 0.0) for key, v in metrics.items()}
    return SaltResult(
        advantages=advantages.detach().clone(), shared=advantages.detach().clone(),
        residual=torch.zeros_like(advantages), alpha=0.0, k=0,
        participation_ratio=metrics["salt/participation_ratio"], n_eff=metrics["salt/n_eff"],
        metrics=metrics, fallback=True,
    )
