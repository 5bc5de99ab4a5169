"""The trainer logs the Gram backend's own error bound, ``geom/gram_err_bound``, every step."""

from __future__ import annotations

import math

import pytest

from tests.train.test_trainer import _train, build_policy, run_config


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_policy(tmp_path_factory.mktemp("policy"))


@pytest.mark.parametrize("salt,scope", [
    ({"gram": "support", "gram_tol": 0.5, "tail_dim": 4, "support_eps": 0.05}, "global"),
    ({"gram": "support", "gram_tol": 0.5, "tail_dim": 0, "support_eps": 0.05}, "micro"),
    ({"gram": "exact"}, "global"),
    ({"gram": "sparse", "support_eps": 0.05}, "global"),  # a probabilistic estimate, not held below tol
    ({"gram": "sparse", "support_eps": 0.05}, "micro"),
])
def test_err_bound_logged_every_step(policy, tmp_path, salt, scope):
    cfg = run_config(policy, algorithm={"salt": {**salt, "scope": scope}}, train={"steps": 2})
    rows = _train(cfg, tmp_path / "run")
    assert len(rows) == 2
    for r in rows:
        b = r["geom/gram_err_bound"]
        assert math.isfinite(b) and 0.0 <= b
        if salt["gram"] == "exact":
            assert b == 0.0
        elif salt["gram"] != "sparse":
            assert b <= 0.5


def test_sketch_logs_no_bound(policy, tmp_path):
    cfg = run_config(policy, algorithm={"salt": {"gram": "sketch", "sketch_dim": 16}}, train={"steps": 1})
    rows = _train(cfg, tmp_path / "run")
    assert "geom/gram_err_bound" not in rows[0]


def test_bad_gram_options_name_the_key(policy):
    from salt.train.config import ConfigError, from_dict

    for key, val in (("gram_tol", -0.1), ("support_eps", 0.0), ("tail_dim", -1)):
        with pytest.raises(ConfigError, match=f"algorithm.salt.{key}"):
            from_dict(run_config(policy, algorithm={"salt": {key: val}})).validate(check_paths=False,
                                                                                   check_devices=False)


def test_sparse_samples_reaches_the_estimator(policy, tmp_path):
    """algorithm.salt.sparse_samples is the sparse Gram's sample size: a different size gives a
    different (probabilistic) error estimate on the same first batch."""
    bounds = []
    for n in (8, 512):
        cfg = run_config(policy, algorithm={"salt": {"gram": "sparse", "support_eps": 0.05, "sparse_samples": n}},
                         train={"steps": 1})
        bounds.append(_train(cfg, tmp_path / f"run{n}")[0]["geom/gram_err_bound"])
    assert bounds[0] != bounds[1]
