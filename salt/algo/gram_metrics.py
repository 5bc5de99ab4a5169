"""Scalar geometry of a Gram K (B, B) (methods.md 3.4 steps 1 and 4, 3.5): participation ratio,
signed-update effective sample size, cosine Gram, and the within/across-group metrics ``geom/*``.

These read any PSD Gram, however it was estimated (:mod:`salt.algo.gram` estimates the LM-head
one), so they live outside the estimator package: :mod:`salt.algo.decomposition` and the figures
use them without depending on the estimators.
"""

from __future__ import annotations

import torch

from salt import metric_names as mn


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
