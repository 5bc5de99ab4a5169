"""Pinned numbers: short runs through every trainer path must keep giving the same metrics.jsonl.

The golden file ``golden/pinned_runs.json`` was written by this test (``SALT_REGEN_PINNED=1``)
on the code before the trainer was split into one file per job (issue 12), on a 2-core AMD EPYC
(this test reproduces it there to 1e-16). A refactor that moves code must leave every number where
it was; a change that means to alter what training computes regenerates the file in the same commit
and says why.

Each case runs 3 steps of the tiny policy of ``test_trainer`` through a different set of code paths:
global and micro SALT scope, exact / support / sketch Grams, several epochs and mini-batches with
gradient accumulation, DAPO dynamic sampling and overlong shaping, PODS selection, F-GRPO, VIP,
every policy loss, a KL term, and baselines with diagnostics on and off. Besides every metric
(except wall times) it pins a fingerprint of the final weights.

Not bit for bit: another CPU's float32 kernels round differently, and 3 Adam steps carry that into
the weights (issue 24: a 2-core Xeon moved train/loss by 5e-6 relative and salt/eig_min, a round-off
zero, from -1e-7 to -1e-18). Each metric family has one tolerance in :data:`FAMILIES`, absolute for
quantities that are zero or a cancelling sum, relative for the rest, with its reason. How far they
are from what another numeric path moves (at most 16% of any tolerance, benchmarks/pinned_drift.py)
and which deliberate change each still catches: benchmarks/README.md "Pinned-run tolerances",
``test_pinned_tolerance.py`` (the changes) and ``test_numeric_path.py`` (this test on a second path).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import salt.metric_names as m
from tests.train.test_trainer import build_policy, run_config

GOLDEN = Path(__file__).parent / "golden" / "pinned_runs.json"
REGEN = os.environ.get("SALT_REGEN_PINNED") == "1"
DUMP = os.environ.get("SALT_PINNED_DUMP")  # a dir: each case's numbers are written there (test_numeric_path.py)

CASES: dict[str, dict] = {
    "grpo_salt_global_exact_epochs": {
        "algorithm": {"salt": {"enabled": True, "gram": "exact"}},
        "train": {"ppo_epochs": 2, "mini_batch_prompts": 2, "micro_batch_size": 5, "dump_gram_steps": [2]},
    },
    "grpo_salt_micro_support": {
        "algorithm": {"salt": {"enabled": True, "scope": "micro", "gram": "support", "tail_dim": 8}},
        "train": {"micro_batch_size": 8},
    },
    "dapo_salt_dynamic_overlong": {
        "algorithm": {"loss": {"name": "dapo"}, "salt": {"enabled": True, "gram": "auto"},
                      "dynamic_sampling": {"enabled": True, "max_gen_batches": 3, "gen_batch_factor": 1.5},
                      "overlong": {"enabled": True, "buffer": 2}},
    },
    "pods_drgrpo_cispo": {
        "algorithm": {"advantage": "dr_grpo", "loss": {"name": "cispo"}, "salt": {"enabled": False},
                      "selection": {"rule": "max_variance", "n": 6}},
    },
    "vip_focal_gspo_sketch": {
        "algorithm": {"loss": {"name": "gspo"}, "focal": {"enabled": True, "gamma": 1.0},
                      "vip": {"enabled": True, "budget": 16, "lower": 2, "upper": 8, "allocation": "exact",
                              "embedding": "hash"},
                      "salt": {"enabled": True, "gram": "sketch", "sketch_dim": 16}},
    },
    "drgrpo_kl_no_diagnostics": {
        "algorithm": {"advantage": "dr_grpo", "loss": {"name": "dr_grpo", "beta": 0.1},
                      "salt": {"enabled": False, "diagnostics": False}},
        "train": {"scheduler": "cosine", "warmup_steps": 1},
    },
}


WEIGHTS = ("weights/sum", "weights/sumsq")  # the fingerprint's two numbers (not metric names: never logged)


@dataclass(frozen=True)
class Tol:
    """|got - pinned| <= abs + rel * |pinned|."""

    abs: float
    rel: float
    why: str


def _t(name: str) -> str:
    return m.TRAIN + name


EPS32 = 2.0**-23  # float32 unit round-off (1.19e-7): the weights, activations and gradients are float32
_EXACT = Tol(0.0, 0.0, "counts of discrete outcomes (sampled tokens, 0/1 rewards, clipped tokens, eigenvalues "
             "kept, schedule arithmetic): identical unless a sample flips, and then every number moves")
_F32_OF_COUNTS = Tol(0.0, 1e-6, "a few float32 operations on exact counts (mean/std of 0/1 rewards): <= 8 ulp")
_SIGNED_MEAN = Tol(2e-5, 0.0, "a mean of float32 terms A_i * rho_t of both signs (|A| ~ 1) that cancels to ~0: its "
                   "round-off scales with the terms, not with the mean, so absolute; ~170 EPS32")
_TOKEN_MEAN = Tol(2e-6, 1e-4, "a token mean of float32 log-probabilities after 3 Adam steps: Adam divides by "
                  "sqrt(v), so a weight whose gradient is at round-off level moves by up to lr, which puts the "
                  "1e-5-level relative spread of another kernel into the policy; absolute part for KL = 0 at step 1")
_TAIL_MASS = Tol(0.0, 1e-4, "the support Gram's error bound (~4e-6): a relative bound from the float32 "
                 "probability mass outside each position's support, the same forward as the token means")
_NEAR_ONE = Tol(0.0, 2e-5, "importance ratios pi/pi_old ~ 1 of the same float32 forward: ~170 EPS32")
_GRAD_NORM = Tol(0.0, 2e-4, "norm of a float32 gradient summed over all weights and micro-batches, "
                 "after 3 Adam steps (see the token means)")
_SPECTRUM = Tol(0.0, 1e-4, "top eigenvalue of a float64 Gram of float32 features (Weyl: |d lambda| <= ||dK||)")
_ZERO_EIG = Tol(1e-4, 0.0, "smallest eigenvalue of a rank-deficient Gram: a zero whose round-off is "
                "~B * EPS32 * eig_max (16 * 1.2e-7 * 60 = 1e-4), of either sign: absolute")
_SUBSPACE = Tol(2e-4, 2e-4, "ratios and sizes from the Gram's eigenvectors (PR, n_eff, alpha, contribution "
                "shares in [0, 1]): eigenvector round-off is ||dK|| / gap, larger than the eigenvalues'")
_ENERGY_SHARE = Tol(1e-3, 0.0, "share of A's K-energy outside the top-k subspace, "
                    "sum_j>k lambda_j (v_j.A)^2 / A^T K A: its round-off ~ ||dK|| ||A||^2 / A^T K A grows when A lies almost in K's null space "
                    "(dapo step 3: n_eff 0.016, share 2e-4 moving by 9e-5); absolute, shares in [0, 1]")
_RESIDUAL_BOUND = Tol(5e-3, 1e-3, "lambda_{k+1} ||(I - P)A||^2: a small eigenvalue (absolute round-off "
                      "~EPS32 * eig_max) times ||A||^2 ~ B = 16, and the projector's round-off")
_FINGERPRINT = Tol(5e-3, 0.0, "sum / sum of squares of ~0.2 M float32 weights after 3 Adam steps of lr 1e-3: "
                   "round-off-level gradients become up to lr-sized updates of single weights")

# One tolerance per metric family; every metric of the pinned runs must be listed (the test says which is
# missing). What each still catches: test_pinned_tolerance.py::test_deliberate_change_fails.
FAMILIES: dict[Tol, tuple[str, ...]] = {
    _EXACT: (m.STEP, m.DATA_GEN_BATCHES, m.DATA_PROMPTS, m.DATA_PROMPTS_GENERATED, m.REWARD_MEAN,
             m.TRAIN_ACCURACY, m.TRAIN_ACCURACY_GENERATED, m.TRAIN_RESPONSE_LENGTH, m.TRAIN_RESPONSE_LENGTH_MAX,
             m.TRAIN_TRUNCATED_FRAC, m.TRAIN_ROLLOUTS, m.TRAIN_ROLLOUTS_GENERATED, m.TRAIN_GROUP_SIZE_MEAN,
             m.TRAIN_LR, _t(m.CLIP_FRAC), _t(m.CLIP_FRAC_LOW), _t(m.CLIP_FRAC_HIGH), _t(m.DUAL_CLIP_FRAC),
             m.SALT_K, m.SALT_POSITIVE_ADV_RATIO, m.SALT_FALLBACK),
    _F32_OF_COUNTS: (m.REWARD_STD, m.TRAIN_ADVANTAGE_ABS_MEAN),
    _SIGNED_MEAN: (_t(m.LOSS), _t(m.PG_LOSS)),
    _TOKEN_MEAN: (_t(m.ENTROPY), _t(m.KL), _t(m.APPROX_KL)),
    _TAIL_MASS: (m.GEOM_GRAM_ERR_BOUND,),
    _NEAR_ONE: (_t(m.RATIO_MEAN), _t(m.RATIO_MAX)),
    _GRAD_NORM: (m.TRAIN_UPDATE_NORM,),
    _SPECTRUM: (m.SALT_EIG_MAX, m.SALT_EIG_RATIO),  # eig_ratio: see _eig_ratio_ok
    _ZERO_EIG: (m.SALT_EIG_MIN,),
    _SUBSPACE: (m.SALT_PARTICIPATION_RATIO, m.SALT_N_EFF, m.SALT_ALPHA, m.SALT_MAIN_CONTRIB_RATIO,
                m.SALT_EXP_CONTRIB_RATIO, m.SALT_N_EFF_FINAL, m.SALT_PR_FINAL, m.GEOM_R_IN, m.GEOM_N_EFF_IN,
                m.GEOM_PR_IN, m.GEOM_R_OUT, m.GEOM_N_EFF_OUT),
    _ENERGY_SHARE: (m.SALT_SHARED_ENERGY_RATIO, m.SALT_RESIDUAL_ENERGY_RATIO),
    _RESIDUAL_BOUND: (m.SALT_RESIDUAL_BOUND,),
    _FINGERPRINT: WEIGHTS,
}
TOLERANCES: dict[str, Tol] = {name: tol for tol, names in FAMILIES.items() for name in names}


def _fingerprint(model_dir: Path) -> list[float]:
    """sum and sum of squares (float64) over every weight of the saved model."""
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    flat = torch.cat([v.double().flatten() for v in sd.values()])
    return [float(flat.sum()), float((flat * flat).sum())]


def run_case(policy: Path, case: str, out: Path, overrides: dict | None = None) -> dict:
    """Train ``case`` (plus ``overrides``, merged into its sections) for 3 steps from ``policy``: its metrics
    rows (no wall times) and weight fingerprint."""
    from salt.train.config import from_dict
    from salt.train.trainer import train
    from salt.utils import deep_merge, read_jsonl

    train(from_dict(run_config(policy, **deep_merge(CASES[case], overrides or {}))), out)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(out / "metrics.jsonl")]
    return {"metrics": rows, "weights": _fingerprint(out / "final")}


def numeric_pairs(got: dict, want: dict):
    """(metric name, got, pinned) for every number of a case: metrics of every step, then weights/sum, weights/sumsq."""
    for g, w in zip(got["metrics"], want["metrics"]):
        for k in w:
            if k in g:
                yield k, g[k], w[k]
    for name, g, w in zip(WEIGHTS, got["weights"], want["weights"]):
        yield name, g, w


def _within(g, w, tol: Tol) -> bool:
    if isinstance(g, bool) or isinstance(w, bool) or not isinstance(g, (int, float)) or not isinstance(w, (int, float)):
        return g == w
    if math.isnan(g) or math.isnan(w):
        return math.isnan(g) and math.isnan(w)
    return abs(g - w) <= tol.abs + tol.rel * abs(w)


def _eig_ratio_ok(g: dict, w: dict) -> bool:
    """salt/eig_ratio = eig_max / (max(eig_min, 0) + 1e-10) (a mean of that over the step's Grams): with eig_min a
    round-off zero it is 1e10 eig_max when the round-off came out <= 0, but a round-off of +1e-6 would make it
    1e4 eig_max. So: like eig_max, or, when this run's eig_min is a positive round-off zero (within _ZERO_EIG),
    at least what that zero allows."""
    gr, wr = g[m.SALT_EIG_RATIO], w[m.SALT_EIG_RATIO]
    if _within(gr, wr, TOLERANCES[m.SALT_EIG_MAX]):
        return True
    zero = TOLERANCES[m.SALT_EIG_MIN].abs
    return 0.0 < g[m.SALT_EIG_MIN] <= zero and gr >= g[m.SALT_EIG_MAX] / (zero + 1e-10)


def mismatches(got: dict, want: dict) -> list[str]:
    """Every difference between a case's numbers and the pinned ones that :data:`TOLERANCES` does not accept."""
    if len(got["metrics"]) != len(want["metrics"]):
        return [f"{len(got['metrics'])} metric rows, pinned {len(want['metrics'])}"]
    bad = []
    for step, (g, w) in enumerate(zip(got["metrics"], want["metrics"]), start=1):
        if set(g) != set(w):
            bad.append(f"step {step}: metric names changed: {sorted(set(g) ^ set(w))}")
        for k in sorted(set(g) & set(w)):
            if k == m.SALT_EIG_RATIO:
                ok = _eig_ratio_ok(g, w)
            elif k not in TOLERANCES:
                bad.append(f"step {step}: {k} has no tolerance in TOLERANCES (add it to its family)")
                continue
            else:
                ok = _within(g[k], w[k], TOLERANCES[k])
            if not ok:
                bad.append(f"step {step}: {k} got {g[k]!r} pinned {w[k]!r} (tolerance {TOLERANCES.get(k)})")
    for name, g, w in zip(WEIGHTS, got["weights"], want["weights"]):
        if not _within(g, w, TOLERANCES[name]):
            bad.append(f"{name} got {g!r} pinned {w!r} (tolerance {TOLERANCES[name]})")
    return bad


@pytest.fixture(scope="module")
def pinned_policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("pinned_policy"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_run_numbers(pinned_policy, tmp_path, case):
    got = run_case(pinned_policy, case, tmp_path / case)
    if DUMP:
        (Path(DUMP) / f"{case}.json").write_text(json.dumps(got))
    if REGEN:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[case] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden numbers regenerated")
    bad = mismatches(got, json.loads(GOLDEN.read_text())[case])
    assert not bad, "\n".join(bad)
