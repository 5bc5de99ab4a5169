"""VIP's success predictor (methods.md 6): a Gaussian process on logit(p) over prompt embeddings, updated
step by step (split from :mod:`salt.algo.allocation`, which re-exports it; docs/fidelity.md rows 6, 14)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

PUBLISHED_P_CLIP = 1e-6
"""The published VIP code clips success probabilities / accuracies to [1e-6, 1 - 1e-6]."""


def _logit(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x) - torch.log1p(-x)


def _same_points(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: which rows of ``x`` (N, D) equal which rows of ``y`` (M, D) (distance <= 1e-9).

    torch.cdist's matrix-product path (taken beyond 25 rows) leaves ~1e-8 |x| of round-off on identical
    points, which missed pinned prompts in batches of 512 (docs/fidelity.md row 14): it only proposes
    candidates (distance <= 1e-3), whose distance is then taken from direct differences."""
    out = torch.zeros(x.shape[0], y.shape[0], dtype=torch.bool)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return out
    i, j = (torch.cdist(x, y) <= 1e-3).nonzero(as_tuple=True)
    if i.numel():
        out[i, j] = torch.linalg.vector_norm(x[i] - y[j], dim=1) <= 1e-9
    return out


def _last_occurrences(e: torch.Tensor) -> tuple[list[int], dict[int, list[int]]]:
    """Rows of ``e`` (P, D) that are the last occurrence of their point, in order, and for each the
    indices of all its occurrences (ascending)."""
    same = _same_points(e, e)  # (P, P)
    last = [i for i in range(e.shape[0]) if not bool(same[i, i + 1:].any())]
    return last, {i: torch.nonzero(same[i]).flatten().tolist() for i in last}


class SuccessPredictor:
    """Gaussian process on logit(p) over prompt embeddings, updated step by step.

    Kernel k(x, y) = signal_var * exp(-||x - y||^2 / (2 length_scale^2)). Each :meth:`update`
    fits a GP to the newest observations (embeddings, logit(clipped accuracy)) with the current
    posterior mean m(x) as its prior mean; the new posterior mean
    m'(x) = m(x) + k(x, E) (K_EE + jitter I)^-1 (y - m(E)) becomes the next prior.

    The mean is stored as m(x) = prior_mean + k(x, Z) w over support points Z (distinct prompt
    embeddings seen so far; a repeated embedding adds to its existing weight, which is exact).
    With ``max_history=None`` (published: the VIP code keeps its mean vector over the whole prompt
    pool) every observed prompt stays a support point and the recursion is exact for the whole run.
    With a number, once Z holds more points the oldest are dropped and w is refitted so that m still
    interpolates its current values at the kept points (jitter-regularised), and m reverts to
    ``prior_mean`` far from them: an approximation of the published predictor (docs/fidelity.md row 14).

    ``pin_observed`` (published): after each update the mean at every observed prompt is set to
    its observed logit exactly (the published GP overwrites those entries of its mean vector), and
    later updates add their kernel terms on top. Stored as an offset per observed embedding
    (exact match), so m(x) = prior_mean + k(x, Z) w + offset(x).

    Args:
        length_scale: RBF length scale (0.27, as published).
        prior_mean: initial prior mean of logit(p) (published: -1).
        jitter: added to the kernel diagonal (1e-4).
        signal_var: kernel amplitude (1.0).
        max_history: support points kept (the most recently observed distinct prompts); None keeps
            every observed prompt (published).
        acc_clip: accuracies are clipped to [acc_clip, 1 - acc_clip] before the logit (published: 1e-6).
        pin_observed: set the mean at observed prompts to their observation (published: True).
    """

    def __init__(
        self,
        length_scale: float = 0.27,
        prior_mean: float = -1.0,
        jitter: float = 1e-4,
        signal_var: float = 1.0,
        max_history: int | None = None,
        acc_clip: float = PUBLISHED_P_CLIP,
        pin_observed: bool = True,
    ) -> None:
        if not length_scale > 0:
            raise ValueError(f"algorithm.vip.length_scale must be > 0, got {length_scale}")
        if not jitter > 0:
            raise ValueError(f"algorithm.vip.jitter must be > 0, got {jitter}")
        if not signal_var > 0:
            raise ValueError(f"algorithm.vip.signal_var must be > 0, got {signal_var}")
        if max_history is not None and not (isinstance(max_history, int) and max_history >= 1):
            raise ValueError(f"algorithm.vip.history must be 0 (unbounded) or a positive integer, got {max_history!r}")
        if not 0 < acc_clip < 0.5:
            raise ValueError(f"algorithm.vip.acc_clip must be in (0, 0.5), got {acc_clip}")
        self.length_scale = float(length_scale)
        self.prior_mean = float(prior_mean)
        self.jitter = float(jitter)
        self.signal_var = float(signal_var)
        self.max_history = None if max_history is None else int(max_history)
        self.acc_clip = float(acc_clip)
        self.pin_observed = bool(pin_observed)
        self.support = torch.zeros(0, 0, dtype=torch.float64)  # (S, D), oldest first
        self.weights = torch.zeros(0, dtype=torch.float64)  # (S,)
        self.pins = torch.zeros(0, 0, dtype=torch.float64)  # (Q, D) observed embeddings (pin_observed)
        self.offsets = torch.zeros(0, dtype=torch.float64)  # (Q,) pinned value - kernel mean
        self.num_updates = 0

    # -- kernel algebra ------------------------------------------------------------------------
    def kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """RBF kernel matrix, (N, D) x (M, D) -> (N, M), float64."""
        sq = torch.cdist(x.to(torch.float64), y.to(torch.float64)).pow(2)  # (N, M)
        return self.signal_var * torch.exp(-sq / (2.0 * self.length_scale**2))

    def _solve(self, x: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """(K_xx + jitter I)^-1 rhs, x (N, D), rhs (N,) -> (N,)."""
        gram = self.kernel(x, x) + self.jitter * torch.eye(x.shape[0], dtype=torch.float64)
        chol = torch.linalg.cholesky(gram)
        return torch.cholesky_solve(rhs[:, None], chol)[:, 0]

    def _check_emb(self, emb: torch.Tensor | np.ndarray) -> torch.Tensor:
        e = torch.as_tensor(emb).detach().cpu().to(torch.float64)
        if e.dim() != 2:
            raise ValueError(f"embeddings must be (P, D), got shape {tuple(e.shape)}")
        if not torch.isfinite(e).all():
            raise ValueError("embeddings contain NaN or inf")
        if self.support.shape[0] and e.shape[1] != self.support.shape[1]:
            raise ValueError(
                f"embedding dim {e.shape[1]} differs from the predictor's {self.support.shape[1]}; "
                "use the same embed_prompts backend for the whole run"
            )
        return e

    def _mean(self, e: torch.Tensor, support: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mean = torch.full((e.shape[0],), self.prior_mean, dtype=torch.float64)
        if support.shape[0] == 0:
            return mean
        return mean + self.kernel(e, support) @ weights

    def _pin_match(self, e: torch.Tensor) -> torch.Tensor:
        """(P, Q) bool: which pinned embedding each row of ``e`` is (exact match)."""
        if self.pins.shape[0] == 0:
            return torch.zeros(e.shape[0], 0, dtype=torch.bool)
        return _same_points(e, self.pins)

    def _offset(self, e: torch.Tensor) -> torch.Tensor:
        match = self._pin_match(e)
        return match.to(torch.float64) @ self.offsets if match.shape[1] else torch.zeros(e.shape[0], dtype=torch.float64)

    # -- public API ----------------------------------------------------------------------------
    def predict_logit(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Posterior mean of logit(p) at ``embeddings`` (P, D) -> (P,) float64."""
        e = self._check_emb(embeddings)
        return self._mean(e, self.support, self.weights) + self._offset(e)

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Predicted success probabilities sigmoid(posterior mean), (P, D) -> (P,) float64."""
        return torch.sigmoid(self.predict_logit(embeddings))

    def update(self, embeddings: torch.Tensor, accuracies: torch.Tensor | Sequence[float]) -> None:
        """Condition on the newest observed accuracies; the posterior mean becomes the next prior.

        Args:
            embeddings: (P, D) prompt embeddings.
            accuracies: (P,) observed fraction of correct rollouts per prompt, in [0, 1].
        """
        e = self._check_emb(embeddings)
        acc = torch.as_tensor(accuracies, dtype=torch.float64).detach().cpu()
        if acc.shape != (e.shape[0],):
            raise ValueError(f"accuracies must be ({e.shape[0]},), got {tuple(acc.shape)}")
        if not torch.isfinite(acc).all() or (acc < 0).any() or (acc > 1).any():
            raise ValueError("accuracies must lie in [0, 1]")
        if e.shape[0] == 0:
            return
        y = _logit(acc.clamp(self.acc_clip, 1.0 - self.acc_clip))  # (P,)
        alpha = self._solve(e, y - self.predict_logit(e))  # (P,) GP fit, prior = current mean

        # Merge the batch into the support: identical embeddings share one point whose weight is
        # the sum (exact, since they have identical kernel rows). Touched points move to the end, in
        # the order of their last occurrence in the batch; sums are taken in batch order.
        support, weights = self.support, self.weights
        if support.shape[0] == 0:
            support = torch.zeros(0, e.shape[1], dtype=torch.float64)
        last, members = _last_occurrences(e)
        old_match = _same_points(e, support)  # (P, S)
        totals = []
        for i in last:
            total = weights[old_match[i]].sum()
            for m in members[i]:
                total = alpha[m] + total
            totals.append(total.reshape(1))
        untouched = ~old_match.any(dim=0)  # (S,)
        support = torch.cat([support[untouched], e[last]])
        weights = torch.cat([weights[untouched], *totals])
        if self.max_history is not None and support.shape[0] > self.max_history:
            kept = support[-self.max_history :]
            target = self._mean(kept, support, weights)  # the exact new mean at the kept points
            support, weights = kept, self._solve(kept, target - self.prior_mean)
        self.support, self.weights = support, weights
        if self.pin_observed:  # the mean at each observed prompt becomes its observation exactly
            values = y - self._mean(e, support, weights)  # (P,); a repeated prompt: the last observation wins
            pins = self.pins if self.pins.shape[0] else torch.zeros(0, e.shape[1], dtype=torch.float64)
            keep = ~_same_points(e, pins).any(dim=0)  # (Q,)
            self.pins = torch.cat([pins[keep], e[last]])
            self.offsets = torch.cat([self.offsets[keep], values[last]])
        self.num_updates += 1

    def config(self) -> dict[str, Any]:
        return {
            "length_scale": self.length_scale,
            "prior_mean": self.prior_mean,
            "jitter": self.jitter,
            "signal_var": self.signal_var,
            "max_history": self.max_history,
            "acc_clip": self.acc_clip,
            "pin_observed": self.pin_observed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: config (floats/ints), support (S, D) and weights (S,) tensors."""
        return {
            "config": self.config(),
            "support": self.support.clone(),
            "weights": self.weights.clone(),
            "pins": self.pins.clone(),
            "offsets": self.offsets.clone(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (tensors or nested lists)."""
        missing = {"config", "support", "weights"} - set(state)
        if missing:
            raise ValueError(f"SuccessPredictor state is missing {sorted(missing)}")
        fresh = SuccessPredictor(**state["config"])
        support = torch.as_tensor(state["support"], dtype=torch.float64)
        weights = torch.as_tensor(state["weights"], dtype=torch.float64)
        if support.numel() == 0:
            support = torch.zeros(0, 0, dtype=torch.float64)
        if support.dim() != 2 or weights.shape != (support.shape[0],):
            raise ValueError(
                f"SuccessPredictor state: support must be (S, D) and weights (S,), got "
                f"{tuple(support.shape)} and {tuple(weights.shape)}"
            )
        pins = torch.as_tensor(state.get("pins", []), dtype=torch.float64)
        offsets = torch.as_tensor(state.get("offsets", []), dtype=torch.float64)
        if pins.numel() == 0:
            pins, offsets = torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        if pins.dim() != 2 or offsets.shape != (pins.shape[0],):
            raise ValueError(f"SuccessPredictor state: pins must be (Q, D) and offsets (Q,), got "
                             f"{tuple(pins.shape)} and {tuple(offsets.shape)}")
        self.__dict__.update(fresh.__dict__)
        self.support, self.weights = support, weights
        self.pins, self.offsets = pins, offsets
        self.num_updates = int(state.get("num_updates", 0))
