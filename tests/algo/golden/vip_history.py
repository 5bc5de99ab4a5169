"""Golden numbers of VIP's success predictor over several 512-prompt steps: run the published GP.

    python tests/algo/golden/vip_history.py --vip /path/to/gaussian_process.py > tests/algo/golden/vip_history.json

``--vip`` is ``src/vip/success_rate_prediction/gaussian_process.py`` of HieuNT91/VIP @ 4a82f58 (its
``GPR`` and ``kernel_rbf`` need only NumPy and SciPy). As in the published training and prediction
scripts: ``GPR(distances, reuse_mean=True, prior_value=-1)`` over the whole prompt pool, one ``fit`` per
step on that step's prompts and accuracies (the mean vector carries every earlier step), then
``predict``. The covariance is set to their ``kernel_rbf(distances, 0.27)`` (the paper's length scale;
this stored version computes 0.4 and has 0.27 commented out). Distances are Euclidean, float64.

The pool and the accuracies come from closed-form expressions (no random generator, so nothing depends
on a library's stream): N = 1024 prompts in 4 dimensions, step t trains on the 512 prompts
(389 t + 7 j) mod N, j < 512 (prompts recur across steps). Stored: the predicted success of 48 prompts
(seen in the last step, seen earlier, never seen) after each step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np

N, D, P, STEPS = 1024, 4, 512, 4
PROBE = list(range(0, 1024, 64)) + list(range(5, 1024, 64)) + list(range(37, 1024, 64))  # 48 prompts


def embeddings() -> np.ndarray:
    """(N, D): quasi-random points in [-1, 1]^D from sines of incommensurate frequencies."""
    i = np.arange(N, dtype=np.float64)[:, None]
    freq = np.array([math.sqrt(2), math.sqrt(3), math.sqrt(5), math.sqrt(7)])[None, :D]
    phase = np.array([0.1, 0.7, 1.3, 2.9])[None, :D]
    return np.sin(i * freq * 1.7 + phase)


def step_prompts(t: int) -> list[int]:
    return [(389 * t + 7 * j) % N for j in range(P)]


def accuracies(t: int, idx: list[int], emb: np.ndarray) -> np.ndarray:
    """Fractions of 16 rollouts: a smooth function of the embedding that drifts with t, 0 and 1 included."""
    e = emb[idx]
    z = 2.5 * e[:, 0] - 1.5 * e[:, 1] * e[:, 2] + 0.8 * math.sin(t) + 1.2 * e[:, 3] - 0.5
    p = 1.0 / (1.0 + np.exp(-z))
    return np.round(16 * p) / 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vip", type=Path, required=True)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("vip_gp", args.vip)
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    emb = embeddings()
    dist = np.sqrt(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1))
    model = gp.GPR(dist, reuse_mean=True, prior_value=-1)
    model.covariance_matrix = gp.kernel_rbf(dist, 0.27)
    preds = []
    for t in range(STEPS):
        idx = step_prompts(t)
        model.fit(idx, accuracies(t, idx, emb))
        preds.append([float(x) for x in model.predict(PROBE)[0]])
    print(json.dumps({"source": "HieuNT91/VIP @ 4a82f58 src/vip/success_rate_prediction/gaussian_process.py GPR",
                      "probe": PROBE, "predictions": preds}, indent=1))


if __name__ == "__main__":
    main()
