"""The four configs (salt train, salt sft, salt evaluate, the workflow) share one mechanism:
unknown keys fail naming the key path and the valid keys, and enumerated values are read from the
registries that own them (a name registered later is accepted)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from salt.config_spec import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _smoke() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def _run_cfg(**sections):
    from salt.train.config import from_dict

    return from_dict({"tracking": {"enabled": False}, **sections}).validate(check_paths=False, check_devices=False)


def test_unknown_key_in_the_run_config():
    with pytest.raises(ConfigError) as err:
        _run_cfg(rollout={"groups": 4})
    assert "unknown config key 'rollout.groups'" in str(err.value)
    assert "valid keys under 'rollout': backend, group_size, prompts_per_step" in str(err.value)


def test_unknown_key_in_the_sft_config():
    from salt.train.sft import resolve_config

    with pytest.raises(ConfigError) as err:
        resolve_config({"eval": {"sample": 4}})
    assert "unknown config key 'eval.sample'; valid keys under 'eval': max_new_tokens, samples, batch_size" in str(err.value)
    with pytest.raises(ConfigError, match="'tracking.log_evry'.*experiment, run_name, parent_run_id, tags"):
        resolve_config({"tracking": {"log_evry": 1}})


def test_unknown_key_and_bad_flag_in_the_evaluate_config(capsys):
    from salt import config_spec as spec
    from salt.eval.evaluate import EvaluateConfig, cli_main

    base = {"model": "m", "benchmark": "b", "data": "d.jsonl", "out": "o"}
    with pytest.raises(ConfigError, match="unknown config key 'temp'; valid keys under '<root>': model, benchmark"):
        spec.load(EvaluateConfig, {**base, "temp": 0.7})
    assert cli_main(["--model", "m", "--benchmark", "b", "--data", "d", "--out", "o", "--backend", "tpu"]) == 2
    assert "--backend = 'tpu' is not allowed; use one of hf, vllm" in capsys.readouterr().err


def test_unknown_key_in_the_workflow_config():
    from salt.workflow_config import load_workflow_config

    cfg = _smoke()
    cfg["benchmarks"]["toy_test"]["top_k"] = 5
    with pytest.raises(ConfigError) as err:
        load_workflow_config(cfg)
    assert "unknown config key 'benchmarks.toy_test.top_k'" in str(err.value)
    assert "valid keys under 'benchmarks.toy_test': dataset, n, temperature, top_p, max_new_tokens, ks" in str(err.value)


def test_run_config_values_come_from_the_registries(monkeypatch):
    from salt.algo import advantages, gram, losses, selection

    for key, registry in (("advantage", advantages.ADVANTAGE_ESTIMATORS),):
        with pytest.raises(ConfigError) as err:
            _run_cfg(algorithm={key: "test_only"})
        assert f"config key 'algorithm.{key}' = 'test_only' is not allowed; use one of {', '.join(registry.names())}" \
            in str(err.value)
        monkeypatch.setitem(registry._items, "test_only", registry.get("grpo"))
        assert getattr(_run_cfg(algorithm={key: "test_only"}).algorithm, key) == "test_only"

    with pytest.raises(ConfigError, match="'algorithm.loss.name' = 'test_loss'.*" + ", ".join(losses.POLICY_LOSSES.names())):
        _run_cfg(algorithm={"loss": {"name": "test_loss"}})
    monkeypatch.setitem(losses.POLICY_LOSSES._items, "test_loss", losses.POLICY_LOSSES.get("grpo"))
    assert _run_cfg(algorithm={"loss": {"name": "test_loss"}}).algorithm.loss["name"] == "test_loss"

    with pytest.raises(ConfigError, match="'algorithm.selection.rule' = 'test_rule'.*none, max_reward, max_variance"):
        _run_cfg(algorithm={"selection": {"rule": "test_rule", "n": 16}})
    monkeypatch.setitem(selection.SELECTION_RULES._items, "test_rule", selection.SELECTION_RULES.get("random"))
    assert _run_cfg(algorithm={"selection": {"rule": "test_rule", "n": 16}}).generate_n == 16

    with pytest.raises(ConfigError, match="'algorithm.salt.gram' = 'test_gram'.*" + ", ".join(gram.GRAM_METHODS.names())):
        _run_cfg(algorithm={"salt": {"gram": "test_gram"}})
    monkeypatch.setitem(gram.GRAM_METHODS._items, "test_gram", gram.GRAM_METHODS.get("exact"))
    assert _run_cfg(algorithm={"salt": {"gram": "test_gram"}}).algorithm.salt.gram == "test_gram"


def test_workflow_dataset_names_come_from_the_datasets_registry(monkeypatch):
    from salt.tasks import datasets
    from salt.workflow_config import load_workflow_config

    cfg = _smoke()
    cfg["datasets"]["toy_rl"]["name"] = "test_set"
    with pytest.raises(ConfigError) as err:
        load_workflow_config(copy.deepcopy(cfg))
    assert ("config key 'datasets.toy_rl.name' = 'test_set' is not allowed; use one of "
            + ", ".join(sorted(datasets.REGISTRY))) in str(err.value)
    monkeypatch.setitem(datasets.REGISTRY, "test_set", datasets.REGISTRY["toy_train"])
    assert load_workflow_config(cfg)["datasets"]["toy_rl"]["name"] == "test_set"


def test_every_config_file_loads():
    """config/{config,smoke,paper}.yaml and config/examples/*.yaml keep loading unchanged."""
    from salt.train.config import load_run_config
    from salt.train.sft import DEFAULTS, resolve_config
    from salt.workflow_config import load_workflow_config

    for name in ("config", "smoke", "paper"):
        raw = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
        out = load_workflow_config(copy.deepcopy(raw))
        assert set(raw) <= set(out) and out["compute"]["train"]["threads"] >= 1
    for example in ("toy_grpo", "toy_salt"):
        load_run_config(REPO / "config" / "examples" / f"{example}.yaml", check_paths=False, check_devices=False)
    assert resolve_config(yaml.safe_load((REPO / "config" / "examples" / "toy_sft.yaml").read_text())) == DEFAULTS
