"""Every arm of config/paper.yaml, resolved by the workflow itself, against the published hyperparameters.

The workflow writes each job's run config (rule make_run_config: base `run` <- model <- task <- study <-
method overrides <- wildcards); those files are loaded with the trainer's own config code and compared,
field by field, with the table below (sources in docs/fidelity.md). An arm missing from the table fails,
so a new arm has to state what it reproduces.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# verl recipe/dapo/test_dapo_7b_math.sh (the script SALT's README trains with): shared by every arm.
RECIPE = {
    "rollout.prompts_per_step": 512, "rollout.group_size": 16, "rollout.max_new_tokens": 8192,
    "rollout.temperature": 1.0, "rollout.top_p": 1.0, "train.mini_batch_prompts": 32, "train.micro_batch_size": 8,
    "train.lr": 1e-6, "train.warmup_steps": 10, "train.weight_decay": 0.1, "train.max_grad_norm": 1.0,
    "train.ppo_epochs": 1,
}
# The SALT authors' code, shared by every arm: their rewards (math_reward.py, mbpp.py) and their actor's
# micro-batch loss weights (dp_actor.py); every key the fidelity switches of docs/fidelity.md rows 11-16 touch
# is checked here or in PUBLISHED below
EXACT = {"reward.math_fallback": True, "reward.code_credit": "fraction", "train.micro_batch_weight": "sequences"}
LOSS = {  # resolved LossConfig fields
    "dapo": {"name": "dapo", "clip_eps_low": 0.2, "clip_eps_high": 0.28, "dual_clip_c": 10.0,
             "agg_mode": "token-mean", "beta": 0.0, "entropy_coef": 0.0},
    "grpo": {"name": "grpo", "clip_eps_low": 0.2, "clip_eps_high": 0.2, "dual_clip_c": 3.0,
             "agg_mode": "seq-mean-token-mean", "beta": 0.0, "entropy_coef": 0.0},
    "dr_grpo": {"name": "dr_grpo", "clip_eps_low": 0.2, "clip_eps_high": 0.2, "dual_clip_c": 3.0,
                "agg_mode": "seq-mean-token-sum-norm", "beta": 0.0},
    "cispo": {"name": "cispo", "eps_high_is": 1.2, "dual_clip_c": 0.0, "agg_mode": "token-mean", "beta": 0.0},
    "gspo": {"name": "gspo", "gspo_eps_low": 3e-4, "gspo_eps_high": 4e-4, "dual_clip_c": 0.0,
             "agg_mode": "seq-mean-token-mean", "beta": 0.0},
}
SALT_OFF = {"enabled": False}
SALT_PUBLISHED = {"enabled": True, "scope": "micro", "gram": "dense", "zero_gram": "published", "eigensolver": "published",
                  "rho": 1.0,
                  "k_min": 1, "k_max": 64, "alpha_min": 0.0, "alpha_max": 1.0, "relu_exploration": True,
                  "alpha_fixed": None, "subspace": "top", "channels": "both", "normalize_final": False}
SALT_GLOBAL = {**SALT_PUBLISHED, "scope": "global", "gram": "auto", "zero_gram": "fallback", "eigensolver": "eigh"}
# verl DAPO recipe: filter_groups on acc (3 x 512 prompts, at most 10 rounds), overlong buffer 4096, factor 1
DAPO_SAMPLING = {"dynamic_sampling": (True, 10, 3.0, "acc"), "overlong": (True, 4096, 1.0, None)}
NO_SAMPLING = {"dynamic_sampling": (False, None, None, None), "overlong": (False, None, None, None)}
VIP_PUBLISHED = {"enabled": True, "allocation": "published", "rule": "grpo", "lower": 4, "upper": 32, "gamma": None,
                 "embedding": "minilm", "prior_mean": -1.0, "acc_clip": 1e-6, "pin_observed": True, "budget": None,
                 "history": 0}  # 0: the GP mean keeps every observed prompt, as the published GP
VIP_OFF = {"enabled": False}
SEL_OFF = {"rule": "none"}


def arm(loss, salt=SALT_OFF, sampling=NO_SAMPLING, advantage="grpo", vip=VIP_OFF, selection=SEL_OFF, focal=None,
        train=None, loss_extra=None):
    return {"loss": {**LOSS[loss], **(loss_extra or {})}, "salt": salt, "sampling": sampling, "advantage": advantage,
            "vip": vip, "selection": selection, "focal": focal, "train": train or {}}


PUBLISHED = {
    "dapo": arm("dapo", sampling=DAPO_SAMPLING),
    "dapo_salt": arm("dapo", SALT_PUBLISHED, DAPO_SAMPLING),
    "dapo_salt_global": arm("dapo", SALT_GLOBAL, DAPO_SAMPLING),  # ours
    "grpo": arm("grpo"),
    "grpo_salt": arm("grpo", SALT_PUBLISHED),
    "dr_grpo": arm("dr_grpo", advantage="dr_grpo"),
    "cispo": arm("cispo"),
    "cispo_salt": arm("cispo", SALT_PUBLISHED),
    "gspo": arm("gspo", train={"train.mini_batch_prompts": 128}),  # 4 mini-batches per step, as recommended
    "pods": arm("grpo", selection={"rule": "max_variance", "ties": "fewest_top", "n": 64}),
    "pods_most_top": arm("grpo", selection={"rule": "max_variance", "ties": "most_top", "n": 64}),  # ours
    "fgrpo": arm("grpo", focal=1.0),
    "fgrpo_gamma0.5": arm("grpo", focal=0.5),
    "fgrpo_gamma2": arm("grpo", focal=2.0),
    "vip": arm("grpo", vip=VIP_PUBLISHED),
    "vip_exact": arm("grpo", vip={**VIP_PUBLISHED, "allocation": "exact"}),  # ours
    "salt_alpha_fixed": arm("dapo", {**SALT_PUBLISHED, "alpha_fixed": 0.5}, DAPO_SAMPLING),
    "salt_no_relu": arm("dapo", {**SALT_PUBLISHED, "relu_exploration": False}, DAPO_SAMPLING),
    "salt_random_subspace": arm("dapo", {**SALT_PUBLISHED, "subspace": "random"}, DAPO_SAMPLING),
    "salt_shared_only": arm("dapo", {**SALT_PUBLISHED, "channels": "shared_only"}, DAPO_SAMPLING),
    "salt_residual_only": arm("dapo", {**SALT_PUBLISHED, "channels": "residual_only"}, DAPO_SAMPLING),
    "entropy_only": arm("dapo", sampling=DAPO_SAMPLING, loss_extra={"entropy_coef": 0.001}),
}
OURS = {"dapo_salt_global", "pods_most_top", "vip_exact"}


def get(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """method -> (label, RunConfig) of one job per method, written by the workflow's make_run_config."""
    from salt.train.config import from_dict

    tmp = tmp_path_factory.mktemp("paper")
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg["tracking"]["enabled"] = False  # the parent-run step then writes its json without MLflow
    (tmp / "paper.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    targets, where = [], {}
    for method in cfg["methods"]:
        study = next((s for s, st in cfg["studies"].items() if method in st["methods"]), None)
        assert study is not None, f"paper.yaml method {method} is in no study"
        st = cfg["studies"][study]
        path = (f"{cfg['results_dir']}/{study}/configs/{st['models'][0]}/{st['tasks'][0]}/{method}/"
                f"G{st['group_sizes'][0]}/seed{st['seeds'][0]}.yaml")
        targets.append(path)
        where[method] = (path, st["group_sizes"][0])
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(tmp),
           "--configfile", str(tmp / "paper.yaml"), "--cores", "2", "--quiet", "all", "--", *targets]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:] + res.stdout[-2000:]
    out = {}
    for method, (path, G) in where.items():
        raw = yaml.safe_load((tmp / path).read_text())
        out[method] = (cfg["methods"][method]["label"], from_dict(raw), G)
    return out


def test_every_arm_is_in_the_published_table(resolved):
    assert set(resolved) == set(PUBLISHED), "add the new paper.yaml arm to PUBLISHED (and docs/fidelity.md)"
    for method, (label, _, _) in resolved.items():
        assert ("(ours" in label) == (method in OURS), f"{method}: label {label!r} must say whether it is ours"


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_arm_matches_published_hyperparameters(resolved, method):
    from salt.algo.decomposition import SaltConfig
    from salt.algo.losses import LossConfig

    _, cfg, G = resolved[method]
    want = PUBLISHED[method]
    a = cfg.algorithm
    for key, value in {**RECIPE, **want["train"]}.items():
        if key == "rollout.group_size":
            value = G
        assert get(cfg, key) == pytest.approx(value), f"{method}: {key}"
    for key, value in EXACT.items():
        assert get(cfg, key) == value, f"{method}: {key} = {get(cfg, key)!r}, published {value!r}"
    loss = LossConfig(**a.loss)
    for key, value in want["loss"].items():
        assert getattr(loss, key) == (pytest.approx(value) if isinstance(value, float) else value), f"{method}: loss.{key}"
    assert a.advantage == want["advantage"]
    salt = {"enabled": a.salt.enabled, "scope": a.salt.scope, "gram": a.salt.gram,
            **vars(SaltConfig(**a.salt.options))}
    for key, value in want["salt"].items():
        assert salt[key] == value, f"{method}: salt.{key} = {salt[key]!r}, published {value!r}"
    for section, (enabled, first, second, metric) in want["sampling"].items():
        sec = getattr(a, section)
        assert sec.enabled == enabled, f"{method}: {section}.enabled"
        if enabled and section == "dynamic_sampling":
            assert (sec.max_gen_batches, sec.gen_batch_factor, sec.metric) == (first, second, metric)
        if enabled and section == "overlong":
            assert (sec.buffer, sec.factor) == (first, second)
    for key, value in want["vip"].items():
        assert getattr(a.vip, key) == value, f"{method}: vip.{key}"
    for key, value in want["selection"].items():
        assert getattr(a.selection, key) == value, f"{method}: selection.{key}"
    assert a.focal.enabled == (want["focal"] is not None)
    if want["focal"] is not None:
        assert a.focal.gamma == want["focal"]


def test_no_base_loss_reaches_the_methods():
    """The base run config carries no method section, so no method inherits another's loss."""
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert not set(cfg["run"].get("algorithm", {})) - {"advantage"}
    for method, spec in cfg["methods"].items():
        assert "name" in spec["run"]["algorithm"]["loss"], f"{method} must name its own loss"
