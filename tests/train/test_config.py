"""Run config: loading, overrides, round trip, and bad configs failing before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from salt.train.config import ConfigError, RunConfig, describe, from_dict, load_run_config, save_resolved


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _write(tmp_path, data) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def _ok(model_dir, **kw) -> dict:
    base = {"model": {"path": str(model_dir)}, "data": {"train": "toy:train"}, "tracking": {"enabled": False}}
    from salt.utils import deep_merge

    return deep_merge(base, kw)


def test_yaml_plus_set_overrides_and_round_trip(tmp_path, model_dir):
    path = _write(tmp_path, _ok(model_dir, rollout={"group_size": 4}, algorithm={"salt": {"enabled": True, "rho": 0.5}}))
    cfg = load_run_config(path, ["rollout.group_size=16", "train.lr=1e-6", "algorithm.loss.clip_eps_high=0.28"])
    assert cfg.rollout.group_size == 16 and cfg.train.lr == pytest.approx(1e-6)
    assert cfg.algorithm.salt.options == {"rho": 0.5} and cfg.algorithm.loss == {"name": "grpo", "clip_eps_high": 0.28}
    d = cfg.to_dict()
    assert d["algorithm"]["salt"]["rho"] == 0.5 and "options" not in d["algorithm"]["salt"]
    assert from_dict(d).to_dict() == d
    saved = save_resolved(cfg, tmp_path / "out")
    assert saved.name == "config.resolved.yaml" and yaml.safe_load(saved.read_text()) == d
    assert cfg.method_name == "grpo+salt"


def test_every_field_has_help():
    text = describe()
    assert "rollout.group_size" in text and "algorithm.salt.scope" in text
    import dataclasses
    import typing

    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])

    walk(RunConfig)


@pytest.mark.parametrize(
    "sections, needles",
    [
        ({"train": {"learning_rate": 1e-5}}, ["train.learning_rate", "lr", "steps"]),
        ({"algorithm": {"salt": {"rhoo": 1.0}}}, ["algorithm.salt.rhoo", "rho", "k_max"]),
        ({"algorithm": {"loss": {"clip_eps": 0.2}}}, ["algorithm.loss.clip_eps", "clip_eps_high"]),
        ({"rollout": {"prompts_per_step": 8}, "train": {"mini_batch_prompts": 3}},
         ["train.mini_batch_prompts", "[1, 2, 4, 8]"]),
        ({"algorithm": {"selection": {"rule": "max_variance"}}}, ["algorithm.selection.n", "> 8"]),
        ({"algorithm": {"selection": {"rule": "max_variance", "n": 8}}}, ["algorithm.selection.n", "> 8"]),
        ({"algorithm": {"vip": {"enabled": True, "budget": 1000, "upper": 32}}}, ["algorithm.vip.budget", "[32, 256]"]),  # lower 4 (published)
        ({"algorithm": {"loss": {"name": "ppo"}}}, ["algorithm.loss.name", "grpo"]),
        ({"algorithm": {"advantage": "gae"}}, ["algorithm.advantage", "rloo"]),
        ({"algorithm": {"salt": {"scope": "local"}}}, ["algorithm.salt.scope", "global", "micro"]),
        ({"rollout": {"group_size": "many"}}, ["rollout.group_size", "integer"]),
        ({"tracking": {"enabled": True, "uri": "./mlruns"}}, ["tracking.uri", "sqlite:///"]),
        ({"data": {"train": "/nonexistent/rows.jsonl"}}, ["data.train", "salt prepare-data"]),
        ({"algorithm": {"salt": {"zero_gram": "bogus"}}}, ["algorithm.salt", "zero_gram", "'published'"]),
        ({"algorithm": {"loss": {"name": "grpo", "dual_clip_c": 0.5}}}, ["algorithm.loss.dual_clip_c", "0 (off)"]),
        ({"algorithm": {"selection": {"rule": "max_variance", "n": 16, "ties": "top"}}},
         ["algorithm.selection.ties", "fewest_top"]),
        ({"algorithm": {"vip": {"enabled": True, "embedding": "auto"}}}, ["algorithm.vip.embedding", "minilm"]),
    ],
)
def test_bad_config_names_the_key_and_the_fix(tmp_path, model_dir, sections, needles):
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path, _ok(model_dir, **sections)))
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_missing_model_path(tmp_path):
    path = _write(tmp_path, {"model": {"path": str(tmp_path / "nope")}, "data": {"train": "toy:train"}})
    with pytest.raises(ConfigError, match=r"model.path .* does not exist.*salt sft.*warmup_sft rule"):
        load_run_config(path)
    # an RL job no longer builds its own warm-up model: the key is gone
    with pytest.raises(ConfigError, match="warmup_if_missing"):
        load_run_config(path, ["model.warmup_if_missing={steps: 1}"], check_paths=False)


def test_vllm_without_vllm(tmp_path, model_dir, monkeypatch):
    # no CUDA refusal any more: the device is whatever the installed vLLM supports; without vLLM the
    # check names both installs and the key
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"rollout.backend = vllm needs vLLM.*pip install \.\[vllm\].*make "
                                          r"setup-vllm.*rollout.backend: hf"):
        load_run_config(_write(tmp_path, _ok(model_dir, rollout={"backend": "vllm"})))


def test_cli_fails_before_any_work(tmp_path, model_dir):
    path = _write(tmp_path, _ok(model_dir, train={"mini_batch_prompts": 3}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "salt.cli", "train", "--config", path, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.mini_batch_prompts" in proc.stderr
    assert not out.exists()


def test_vllm_config_plans_without_vllm_and_fails_clearly_when_devices_are_checked(monkeypatch):
    """The workflow validates run configs at parse time on hosts without vLLM: check_devices=False."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    cfg = from_dict({"rollout": {"backend": "vllm"}, "tracking": {"enabled": False}})
    assert cfg.validate(check_paths=False, check_devices=False) is cfg
    with pytest.raises(ConfigError, match=r"rollout.backend = vllm needs vLLM.*rollout.backend: hf"):
        cfg.validate(check_paths=False, check_devices=True)
    with pytest.raises(ConfigError, match=r"rollout.backend = vllm needs vLLM"):
        cfg.validate(check_paths=False)  # devices are checked unless the caller opts out
    # other errors are still raised with the device check off
    bad = from_dict({"rollout": {"backend": "vllm", "top_p": 0.0}, "tracking": {"enabled": False}})
    with pytest.raises(ConfigError, match="rollout.top_p"):
        bad.validate(check_paths=False, check_devices=False)


@pytest.mark.parametrize(
    "sections, needles",
    [
        ({"algorithm": {"dynamic_sampling": {"gen_batch_factor": 0.5}}},
         ["algorithm.dynamic_sampling.gen_batch_factor", ">= 1"]),
        ({"train": {"dump_gram_steps": [1, 0]}}, ["train.dump_gram_steps", "integer >= 1"]),
        ({"train": {"dump_gram_steps": [1.5]}}, ["train.dump_gram_steps", "1.5"]),
        ({"train": {"dump_gram_steps": 3}}, ["train.dump_gram_steps", "list"]),
    ],
)
def test_new_keys_are_checked(tmp_path, model_dir, sections, needles):
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path, _ok(model_dir, **sections)))
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_new_keys_defaults_and_round_trip(tmp_path, model_dir):
    cfg = load_run_config(_write(tmp_path, _ok(model_dir)))
    assert cfg.train.dump_gram_steps == [] and cfg.algorithm.dynamic_sampling.gen_batch_factor == 1.0
    cfg = load_run_config(_write(tmp_path, _ok(model_dir)), ["train.dump_gram_steps=[1, 5]",
                                                             "algorithm.dynamic_sampling.gen_batch_factor=3"])
    assert cfg.train.dump_gram_steps == [1, 5] and cfg.algorithm.dynamic_sampling.gen_batch_factor == 3.0
    again = from_dict(cfg.to_dict()).validate(check_paths=False)
    assert again.to_dict() == cfg.to_dict()
