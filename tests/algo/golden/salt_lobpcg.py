"""Golden numbers of SALT's decomposition where the published code takes LOBPCG, and on zero Grams.

    python tests/algo/golden/salt_lobpcg.py --salt /path/to/advantage_decomposition.py > tests/algo/golden/salt_lobpcg.json

``--salt`` is ``verl/verl/trainer/gradient/advantage_decomposition.py`` of Chang-pw/SALT @ 94ac08e
(it imports only torch; the script imports it as it is). For each case: ``torch.manual_seed(seed)``,
then ``AdvantageDecomposer(DecompositionConfig(enabled=True, rho=1.0, k_min=1, k_max=64)).decompose(F,
A)`` (the settings of SALT's actor.yaml), on the CPU with one thread. ``torch.lobpcg`` draws its start
from torch's global generator, so the seed fixes it. Features F (B, D) and advantages A (B,) are
closed-form float32 expressions defined below (no random stream); zero-Gram cases use F = 0.
Stored: k, alpha and the final advantages of each case.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

# (name, B, D, per-rollout scale, seed, zero features): B >= 3k takes LOBPCG in the published code; these
# lobpcg cases are ones where its subspace is 1e-3 to 1e-2 away from eigh's (in the final advantages)
CASES = [("lobpcg_b32_k4", 32, 24, 0.7, 0, False), ("lobpcg_b32_k6", 32, 24, 1.0, 1, False),
         ("lobpcg_b48_k4", 48, 12, 0.7, 1, False), ("lobpcg_b48_k6", 48, 24, 1.0, 0, False),
         ("zero_b2", 2, 6, 0.0, 3, True), ("zero_b8", 8, 6, 0.0, 4, True), ("zero_b32", 32, 6, 0.0, 5, True)]


def features(B: int, D: int, scale: float, zero: bool) -> torch.Tensor:
    """(B, D) float32: a few shared directions plus a per-rollout part (a moderate participation ratio)."""
    if zero:
        return torch.zeros(B, D)
    i = torch.arange(B, dtype=torch.float64)[:, None]
    d = torch.arange(D, dtype=torch.float64)[None, :]
    shared = torch.sin(0.9 * d + 0.4) * torch.cos(0.37 * i) + 0.6 * torch.cos(1.7 * d) * torch.sin(0.23 * i + 1.0)
    own = scale * torch.sin(2.3 * i * (d + 1) ** 0.5 + 0.1 * d)
    return (shared + own).float()


def advantages(B: int) -> torch.Tensor:
    """(B,) float32 advantages with both signs, group-like (groups of 8 sum to about 0)."""
    a = torch.tensor([round(math.sin(2.1 * i + 0.3), 3) for i in range(B)], dtype=torch.float64)
    a = a.reshape(-1, min(B, 8))
    return (a - a.mean(dim=1, keepdim=True)).flatten().float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--salt", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("salt_adv_decomp", args.salt)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    out = {"source": "Chang-pw/SALT @ 94ac08e verl/verl/trainer/gradient/advantage_decomposition.py", "cases": {}}
    for name, B, D, scale, seed, zero in CASES:
        dec = mod.AdvantageDecomposer(mod.DecompositionConfig(enabled=True, rho=1.0, k_min=1, k_max=64))
        torch.manual_seed(seed)
        res = dec.decompose(features(B, D, scale, zero), advantages(B))
        out["cases"][name] = {"B": B, "D": D, "scale": scale, "seed": seed, "zero": zero, "k": res.k_t, "alpha": res.alpha_t,
                              "lobpcg": bool(res.k_t < B and B >= 3 * res.k_t),
                              "final": [float(x) for x in res.advantage_final]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
