"""Synthetic run folders (metrics.jsonl, evaluation metrics.json, a Gram dump, proxy.json) for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STUDIES = {
    "main": ("main", ["grpo", "grpo_salt", "dapo", "dapo_salt"], [2, 4], [0, 1, 2], 4, None),
    "budget": ("scaling_budget", ["grpo", "grpo_salt"], [2, 4], [0], None, 8),
    "ablation": ("ablation", ["grpo_salt", "salt_no_relu", "entropy_only"], [4], [0], 4, None),
}


def write_gram_dump(path: Path, G: int, P: int, rng: np.random.Generator, salt: bool) -> dict:
    """A dump as the trainer writes it: rollouts of P groups in a shuffled order, low-rank-plus-noise K."""
    B = G * P
    group_ids = rng.permutation(np.repeat(np.arange(P), G))  # (B,) not sorted: the figure must order them
    shared = rng.normal(size=(2, 6))
    feats = shared[rng.integers(0, 2, size=B)] * rng.choice([-1.0, 1.0], size=(B, 1)) + 0.3 * rng.normal(size=(B, 6))
    rewards = rng.integers(0, 2, size=B).astype(float)
    adv = np.zeros(B)
    for g in range(P):
        r = rewards[group_ids == g]
        adv[group_ids == g] = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    final = 0.7 * adv + 0.3 * np.maximum(adv, 0.0) if salt else adv.copy()
    arrays = {"gram": feats @ feats.T / B, "advantages": adv, "advantages_final": final, "group_ids": group_ids,
              "rewards": rewards}
    np.savez(path, **arrays)
    return arrays


def make_runs(root: Path, steps: int = 6, duplicate_step: bool = True, gram: bool = True) -> dict:
    """Write run dirs under ``root`` and return the manifest the workflow would pass to aggregate."""
    rng = np.random.default_rng(0)
    runs = []
    for study, (kind, methods, gs, seeds, p, budget) in STUDIES.items():
        for method in methods:
            for G in gs:
                for seed in seeds:
                    P = p if p is not None else budget // G
                    run_dir = root / study / "runs" / "toy" / "toy" / method / f"G{G}" / f"seed{seed}"
                    run_dir.mkdir(parents=True)
                    lines = []
                    for step in range(steps):
                        lines.append({
                            "step": step,
                            "train/reward_mean": 0.1 * step + 0.05 * seed + (0.1 if "salt" in method else 0.0),
                            "salt/participation_ratio": 2.0 + G * 0.5 + rng.random(),
                            "salt/n_eff": 0.5 + rng.random(),
                            "salt/alpha": 0.4 + 0.01 * G,
                            "salt/shared_energy_ratio": 0.7,
                            "salt/residual_energy_ratio": 0.3,
                            "salt/residual_bound": 0.01 * G,
                            "salt/main_contrib_ratio": 0.8,
                            "train/update_norm": 0.5,
                            "loss/clip_frac": 0.05,
                            "rollout/generated": float(G * P),
                            "time/step_s": 0.5,
                            "note": "text is ignored",
                        })
                    if duplicate_step:  # a resumed run logs its last step again: the later row must win
                        lines.append({**lines[-1], "train/reward_mean": 0.99})
                    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
                    if gram and method in ("grpo", "grpo_salt") and study == "main" and seed == 0:
                        for step_no in (1, steps):  # Figure 1 draws the latest dump
                            write_gram_dump(run_dir / f"gram_step_{step_no:04d}.npz", G, P, rng, salt="salt" in method)
                    evals = {}
                    for bench in ("toy_test",):
                        e = root / study / "eval" / method / f"G{G}" / f"seed{seed}" / bench
                        e.mkdir(parents=True)
                        acc = 0.2 + 0.1 * seed + (0.1 if "salt" in method else 0.0)
                        (e / "metrics.json").write_text(json.dumps({
                            "benchmark": bench, "n": 4, "pass@1": acc, "pass@2": acc + 0.1, "pass@4": acc + 0.15,
                            "avg@4": acc, "rows": 10,
                        }))
                        evals[bench] = str(e / "metrics.json")
                    runs.append(dict(study=study, kind=kind, model="toy", task="toy", method=method,
                                     label=method.upper(), G=G, seed=seed, prompts_per_step=P,
                                     run_dir=str(run_dir), benchmark=str(root / "nope.tsv"), evals=evals))
    proxy = root / "proxy" / "toy" / "proxy.json"
    proxy.parent.mkdir(parents=True)
    lm = rng.uniform(-1, 1, size=40)
    proxy.write_text(json.dumps({
        "pearson": 0.8, "null_permutation": {"mean": 0.01, "std": 0.05, "p_value": 0.005},
        "null_gaussian": {"mean": -0.02, "std": 0.04, "p_value": 0.005}, "n_rollouts": 16,
        "pairs": {"lm_head": lm.tolist(), "last_block": (0.8 * lm + 0.1 * rng.normal(size=40)).tolist()},
    }))
    return {"runs": runs, "proxy": {"toy": str(proxy)}, "parents": {}, "figures": {"baseline": "grpo", "salt_method": "grpo_salt", "smooth": 1},
            "tracking": {"enabled": False, "uri": "sqlite:///x.db", "experiment": "t"}, "report": {"title": "t"}}
