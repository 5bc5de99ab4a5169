"""Synthetic run folders shaped like the trainer's and evaluator's outputs (for aggregate/figures/report).

Metric names come from :mod:`salt.metric_names` (the names the trainer logs); evaluations write ``problems.jsonl`` (one
line per problem id with the n sample correctnesses) and the ``metrics.json`` that
``salt.eval.evaluate.summarise`` computes from it, as ``salt evaluate`` does.

Held-out correctness uses common random numbers: problem p of seed s has a base success
probability q_p and uniform draws u_pi shared by every method of that seed, and a method with
accuracy effect e (``effects[method]``, plus the seed's jitter) marks sample i correct when
u_pi < q_p + e. Paired differences between methods are therefore close to e - e_baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from salt import gram_dump
from salt import metric_names as mn
from salt.eval.evaluate import PROBLEMS_FILE, summarise
from salt.workflow_plan import manifest_record

STUDIES = {
    "main": ("main", ["grpo", "grpo_salt", "dapo", "dapo_salt"], [2, 4], [0, 1, 2], 4, None),
    "budget": ("scaling_budget", ["grpo", "grpo_salt"], [2, 4], [0], None, 8),
    "ablation": ("ablation", ["grpo_salt", "salt_no_relu", "entropy_only"], [4], [0], 4, None),
    "focal": ("focal_sweep", ["fgrpo_gamma0.5", "fgrpo", "fgrpo_gamma2"], [4], [0], 4, None),
}
N_PROBLEMS, N_SAMPLES = 40, 4
EFFECTS = {"grpo_salt": 0.1, "dapo_salt": 0.1}  # held-out accuracy effect (probability) per method (or per seed)
MAIN_ALL = {"main": ("main", ["grpo", "grpo_salt", "dapo", "dapo_salt", "pods", "fgrpo", "vip"], [2, 4, 8], [0, 1, 2],
                     4, None)}  # the default study's method set


def write_gram_dump(path: Path, G: int, P: int, rng: np.random.Generator, salt: bool, zero_adv: bool = False) -> dict:
    """A dump as the trainer writes it: rollouts of P groups in a shuffled order, low-rank-plus-noise K."""
    B = G * P
    group_ids = rng.permutation(np.repeat(np.arange(P), G))  # (B,) not sorted: the figure must order them
    shared = rng.normal(size=(2, 6))
    feats = shared[rng.integers(0, 2, size=B)] * rng.choice([-1.0, 1.0], size=(B, 1)) + 0.3 * rng.normal(size=(B, 6))
    rewards = np.zeros(B) if zero_adv else rng.integers(0, 2, size=B).astype(float)
    adv = np.zeros(B)
    for g in range(P):
        r = rewards[group_ids == g]
        adv[group_ids == g] = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    final = 0.7 * adv + 0.3 * np.maximum(adv, 0.0) if salt else adv.copy()
    arrays = {"gram": feats @ feats.T / B, "advantages": adv, "advantages_final": final, "group_ids": group_ids,
              "rewards": rewards}
    gram_dump.write(path, **arrays)  # the trainer's writer's format
    return arrays


def write_eval(out: Path, seed: int, effect: float, n_problems: int = N_PROBLEMS, n: int = N_SAMPLES,
               ks=(1, 2, 4)) -> Path:
    """problems.jsonl + metrics.json of one evaluation; common random numbers per seed (module doc)."""
    rng = np.random.default_rng(1000 + seed)
    q = rng.uniform(0.1, 0.6, size=n_problems)  # (n_problems,) the seed's per-problem base success rate
    u = rng.uniform(size=(n_problems, n))  # (n_problems, n) shared by every method of the seed
    correct = u < (q + effect)[:, None]
    recs = [{"id": f"toy-{p:04d}", "task": "toy", "answer": "1", "correct": [bool(c) for c in correct[p]],
             "extracted": ["1" if c else "0" for c in correct[p]], "lengths": [3] * n, "finish_reasons": ["stop"] * n}
            for p in range(n_problems)]
    out.mkdir(parents=True, exist_ok=True)
    (out / PROBLEMS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    metrics = summarise(recs, ks)
    metrics["benchmark"] = "toy_test"
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out / "metrics.json"


def step_line(step: int, method: str, G: int, P: int, seed: int, rng: np.random.Generator, **over) -> dict:
    """One metrics.jsonl line with the trainer's metric names."""
    acc = 0.1 * step + 0.05 * seed + (0.1 if "salt" in method else 0.0)
    line = {
        mn.STEP: step,
        mn.TRAIN_ACCURACY: acc,
        mn.TRAIN_ACCURACY_GENERATED: acc,
        mn.SALT_PARTICIPATION_RATIO: 2.0 + G * 0.5 + rng.random(),
        mn.SALT_N_EFF: 0.5 + rng.random(),
        mn.SALT_N_EFF_FINAL: 0.8 + rng.random(),
        mn.SALT_ALPHA: 0.4 + 0.01 * G,
        mn.SALT_SHARED_ENERGY_RATIO: 0.7,
        mn.SALT_RESIDUAL_ENERGY_RATIO: 0.3,
        mn.SALT_RESIDUAL_BOUND: 0.01 * G,
        mn.SALT_MAIN_CONTRIB_RATIO: 0.8,
        mn.TRAIN_UPDATE_NORM: 0.5,
        mn.TRAIN_CLIP_FRAC: 0.05,
        mn.TRAIN_ROLLOUTS_GENERATED: float(G * P * (step + 1)),
        mn.TRAIN_ROLLOUTS: float(G * P * (step + 1)),
        mn.TIME_STEP: 0.5,
        "note": "text is ignored",
    }
    line.update(over)
    return line


def make_runs(root: Path, steps: int = 6, duplicate_step: bool = True, gram: bool = True, studies=None,
              effects=None, evaluated=("main",)) -> dict:
    """Write run dirs under ``root`` and return the manifest the workflow would pass to aggregate, its
    runs made by the workflow's own :func:`salt.workflow_plan.manifest_record` (warm-up = seed; held-out
    evaluations for the studies whose kind is in ``evaluated``)."""
    rng = np.random.default_rng(0)
    effects = EFFECTS if effects is None else effects
    runs = []
    for study, (kind, methods, gs, seeds, p, budget) in (studies or STUDIES).items():
        for method in methods:
            for G in gs:
                for seed in seeds:
                    P = p if p is not None else budget // G
                    run_dir = root / study / "runs" / "toy" / "toy" / method / f"G{G}" / f"seed{seed}"
                    run_dir.mkdir(parents=True)
                    lines = [step_line(step, method, G, P, seed, rng) for step in range(steps)]
                    if duplicate_step:  # a resumed run logs its last step again: the later row must win
                        lines.append({**lines[-1], mn.TRAIN_ACCURACY: 0.99})
                    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
                    if gram and method in ("grpo", "grpo_salt") and study == "main" and seed == 0:
                        for step_no in (1, steps):  # Figure 1 draws the latest dump with non-zero advantages
                            write_gram_dump(run_dir / f"gram_step_{step_no:04d}.npz", G, P, rng, salt="salt" in method)
                        write_gram_dump(run_dir / f"gram_step_{steps + 1:04d}.npz", G, P, rng, salt="salt" in method,
                                        zero_adv=True)
                    evals = {}
                    if kind in evaluated:
                        e = root / study / "eval" / method / f"G{G}" / f"seed{seed}" / "toy_test"
                        eff = effects.get(method, 0.0)
                        evals["toy_test"] = str(write_eval(e, seed, eff[seed] if isinstance(eff, dict) else eff))
                    job = dict(study=study, model="toy", task="toy", method=method, G=G, seed=seed)
                    runs.append(manifest_record(job, warmup=seed, kind=kind, label=method.upper(), prompts_per_step=P,
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


def rewrite_metric(run_dir: Path, key: str, values) -> None:
    """Replace ``key`` in every line of a run's metrics.jsonl (values by line, or one value for all)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for i, line in enumerate(lines):
        line[key] = float(values[min(i, len(values) - 1)] if isinstance(values, (list, tuple, np.ndarray)) else values)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
