"""workflow/schemas/config.schema.yaml is generated from salt/workflow_config.py and describes the configs."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from salt.workflow_config import schema_text

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_committed_schema_is_the_generated_one():
    assert SCHEMA.read_text() == schema_text(), (
        "workflow/schemas/config.schema.yaml is stale: run "
        "`python -m salt.workflow_config > workflow/schemas/config.schema.yaml`")


def test_the_schema_accepts_every_config_and_rejects_an_unknown_key():
    schema = yaml.safe_load(SCHEMA.read_text())
    for name in ("config", "smoke", "paper"):
        jsonschema.validate(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()), schema)
    bad = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    bad["studies"]["main"]["group_size"] = [4]
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as exc:
        assert "group_size" in str(exc)
    else:
        raise AssertionError("the schema accepted an unknown key")


def test_keys_that_name_other_keys_are_checked():
    import pytest

    from salt.config_spec import ConfigError
    from salt.workflow_config import load_workflow_config

    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg["studies"]["main"]["methods"].append("nope")
    cfg["results_dir"] = "results/smoke/"
    with pytest.raises(ConfigError, match="studies.main.methods: 'nope' is not a key of `methods` \\(known: grpo"):
        load_workflow_config(cfg)
    cfg["studies"]["main"]["methods"].pop()
    assert load_workflow_config(cfg)["results_dir"] == "results/smoke"
