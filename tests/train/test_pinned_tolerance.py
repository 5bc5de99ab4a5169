"""The pinned runs' tolerances are tight enough: a one-line change of what training computes fails them.

``tests/train/test_pinned_run.py`` compares six short runs with golden numbers up to per-family
tolerances (its ``FAMILIES`` table) so that another CPU's rounding passes. Each case here applies one
deliberate change of what training computes -- through a config override or by monkeypatching the
trainer, never by editing source -- reruns the pinned case it touches, and requires that the comparison
with the golden numbers FAILS, naming which metric families caught it. A tolerance loose enough to let
one of these through is too loose.

What each change is and which families catch it (measured; see benchmarks/README.md "Pinned-run tolerances"):
the table ``MUTATIONS`` below.
"""

from __future__ import annotations

import json

import pytest

from tests.train.test_pinned_run import GOLDEN, TOLERANCES, mismatches, numeric_pairs, run_case


def _drop_last_token_of_first_rollout(monkeypatch) -> None:
    """The loss mask misses one token: the last completion token of the batch's first rollout
    (the one-line bug ``mask[i, : len(c) - 1]``, for one rollout only)."""
    import salt.train.trainer as trainer

    real = trainer.to_tensors

    def to_tensors(batch, pad_id):
        tb = real(batch, pad_id)
        n = int(tb.mask[0].sum())
        if n > 0:
            tb.mask[0, n - 1] = 0.0
        return tb

    monkeypatch.setattr(trainer, "to_tensors", to_tensors)


# name -> (pinned case, config overrides, monkeypatch or None, families that must be among the failures)
MUTATIONS: dict[str, tuple[str, dict, object, tuple[str, ...]]] = {
    # ratios reach 1.24 in the 2-epoch case: a different upper clip changes the clipped objective
    "clip_eps_high 0.2 -> 0.22": ("grpo_salt_global_exact_epochs",
                                  {"algorithm": {"loss": {"name": "grpo", "clip_eps_high": 0.22}}}, None, ()),
    "one completion token dropped from the loss mask": ("grpo_salt_micro_support", {},
                                                        _drop_last_token_of_first_rollout, ()),
    # std + eps with std ~ 0.5: advantages move by ~2e-5 relative
    "advantage eps 1e-6 -> 1e-5": ("grpo_salt_micro_support", {"algorithm": {"advantage_eps": 1e-5}}, None, ()),
    # step 3's adaptive alpha is 0.984: clamped to 0.98 there, steps 1-2 unchanged
    "SALT alpha_max 1.0 -> 0.98": ("dapo_salt_dynamic_overlong",
                                   {"algorithm": {"salt": {"alpha_max": 0.98}}}, None, ()),
    "KL beta 0.1 -> 0.11": ("drgrpo_kl_no_diagnostics",
                            {"algorithm": {"loss": {"name": "dr_grpo", "beta": 0.11}}}, None, ()),
    "focal gamma 1.0 -> 1.1": ("vip_focal_gspo_sketch", {"algorithm": {"focal": {"gamma": 1.1}}}, None, ()),
    # (a smaller max_grad_norm is no test: Adam is invariant to scaling every gradient by one factor)
    "CISPO aggregation token-mean -> seq-mean-token-mean": (
        "pods_drgrpo_cispo", {"algorithm": {"loss": {"name": "cispo", "agg_mode": "seq-mean-token-mean"}}}, None, ()),
    # AdamW's decoupled decay: w -= lr * wd * w, 3e-5 of every weight over the run; no logged metric sees it
    # at step 1, so the fingerprint must catch it
    "weight_decay 0 -> 1e-2": ("pods_drgrpo_cispo", {"train": {"weight_decay": 1e-2}}, None,
                               ("weights/sum", "weights/sumsq")),
}


def excess(got: dict, want: dict) -> dict[str, float]:
    """metric -> largest |got - pinned| / tolerance over the steps (> 1: outside the tolerance)."""
    out: dict[str, float] = {}
    for name, g, w in numeric_pairs(got, want):
        tol = TOLERANCES.get(name)
        if tol is None or not isinstance(g, (int, float)) or not isinstance(w, (int, float)):
            continue
        d, allowed = abs(g - w), tol.abs + tol.rel * abs(w)
        e = d / allowed if allowed else (0.0 if d == 0 else float("inf"))
        out[name] = max(out.get(name, 0.0), e)
    return out


@pytest.fixture(scope="module")
def pinned_policy(tmp_path_factory):
    from tests.train.test_trainer import build_policy

    return build_policy(tmp_path_factory.mktemp("pinned_policy"))


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_deliberate_change_fails(pinned_policy, tmp_path, monkeypatch, name):
    case, overrides, patch, must_catch = MUTATIONS[name]
    if patch is not None:
        patch(monkeypatch)
    got = run_case(pinned_policy, case, tmp_path / "run", overrides)
    want = json.loads(GOLDEN.read_text())[case]
    bad = mismatches(got, want)
    caught = {k: e for k, e in excess(got, want).items() if e > 1}
    top = sorted(caught.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    print(f"\n{name}: {len(bad)} failures; caught by " + ", ".join(f"{k} x{e:.3g}" for k, e in top))
    assert bad, f"{name!r} passed the pinned comparison of {case}: the tolerances are too loose"
    missing = [k for k in must_catch if k not in caught]
    assert not missing, f"{name!r}: {missing} did not catch it (caught by {sorted(caught)})"
