"""salt.config_spec: the one way every config section is declared, built and checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from salt import config_spec as spec
from salt.config_spec import ConfigError, fields_of, names_of, option, option_like, section


@dataclass
class Inner:
    size: int = option(2, "A size.", ge=1)
    kind: str = option("a", "A kind.", choices=("a", "b"))


@dataclass
class Open:
    __extra__ = ("options", fields_of("salt.algo.decomposition:SaltConfig"))

    enabled: bool = option(False, "On or off.")
    options: dict = option({}, "Any SaltConfig field.")


@dataclass(kw_only=True)
class Outer:
    name: str = option(help="Required name.", pattern=r"^[a-z]+$")
    inner: Inner = section(Inner, "Nested.")
    ratio: float = option(0.5, "A ratio.", gt=0, le=1)
    levels: list = option([1], "Levels.", min_items=1, items={"choices": (1, 2, 3)})
    by_key: dict[str, Inner] = option({}, "Entries by key.", key_pattern=r"^[a-z]+$")
    loss: dict = option({}, "Loss keys.", keys=fields_of("salt.algo.losses:LossConfig"))
    salt: Open = section(Open, "Open section.")


def test_defaults_types_and_round_trip():
    cfg = spec.load(Outer, {"name": "x", "ratio": "1e-1", "inner": {"size": 3.0}, "by_key": {"ab": {"kind": "b"}},
                            "salt": {"enabled": True, "rho": 0.5}})
    assert cfg.ratio == pytest.approx(0.1) and cfg.inner.size == 3 and isinstance(cfg.inner.size, int)
    assert cfg.by_key["ab"] == Inner(2, "b") and cfg.salt.options == {"rho": 0.5}
    d = spec.to_dict(cfg)
    assert d["salt"] == {"enabled": True, "rho": 0.5} and "options" not in d["salt"]
    assert spec.to_dict(spec.load(Outer, d)) == d


@pytest.mark.parametrize("data, needles", [
    ({"name": "x", "inner": {"sise": 1}},
     ["unknown config key 'inner.sise'", "valid keys under 'inner': size, kind", "did you mean 'size'?"]),
    ({"name": "x", "by_key": {"ab": {"kin": "a"}}}, ["'by_key.ab.kin'", "size, kind"]),
    ({"name": "x", "loss": {"clip": 1}}, ["'loss.clip'", "LossConfig", "clip_eps_high"]),
    ({"name": "x", "salt": {"rhoo": 1}}, ["'salt.rhoo'", "enabled", "SaltConfig", "k_max"]),
    ({"name": "x", "salt": {"options": {}}}, ["'salt.options'"]),  # the collector is not a key
    ({}, ["config key 'name' is required", "Required name."]),
    ({"name": "x", "inner": {"size": "big"}}, ["'inner.size'", "integer", "'big'"]),
    ({"name": "x", "inner": {"size": 0}}, ["'inner.size' = 0 must be >= 1"]),
    ({"name": "x", "inner": {"kind": "c"}}, ["'inner.kind' = 'c' is not allowed; use one of a, b"]),
    ({"name": "x", "ratio": 0}, ["'ratio' = 0.0 must be in (0, 1]"]),
    ({"name": "X"}, ["'name' = 'X' must match"]),
    ({"name": "x", "levels": []}, ["'levels'", "at least 1"]),
    ({"name": "x", "levels": [1, 5]}, ["'levels[1]' = 5 is not allowed; use one of 1, 2, 3"]),
    ({"name": "x", "by_key": {"A b": {}}}, ["'by_key.A b'", "must match"]),
])
def test_errors_name_the_key_the_value_and_the_fix(data, needles):
    with pytest.raises(ConfigError) as err:
        spec.load(Outer, data)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_allowed_values_are_read_from_the_owner_each_time(monkeypatch):
    from salt.algo import selection

    @dataclass
    class Pick:
        rule: str = option("none", "A rule.", choices=names_of("salt.algo.selection:SELECTION_RULES", before=("none",)))

    with pytest.raises(ConfigError, match="use one of none, max_reward, max_variance, random$"):
        spec.load(Pick, {"rule": "newest"})
    monkeypatch.setitem(selection.SELECTION_RULES._items, "newest", lambda *a: None)  # registered later
    assert spec.load(Pick, {"rule": "newest"}).rule == "newest"


def test_a_failed_import_fails_loudly(monkeypatch):
    """Unknown keys of an open section are never skipped because the library did not import."""
    monkeypatch.setitem(sys.modules, "salt.algo.decomposition", None)  # import now raises ImportError
    with pytest.raises(ImportError):
        spec.build(Outer, {"name": "x", "salt": {"rho": 1}})


def test_option_like_shares_help_and_checks():
    @dataclass
    class Copy:
        size: int = option_like(Inner, "size", 7)

    assert spec.load(Copy, {}).size == 7
    with pytest.raises(ConfigError, match="'size' = 0 must be >= 1"):
        spec.load(Copy, {"size": 0})


def test_json_schema_and_describe_follow_the_declarations():
    schema = spec.json_schema(Outer, definitions={"inner": Inner})
    props = schema["properties"]
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert props["inner"]["$ref"] == "#/definitions/inner"
    assert schema["definitions"]["inner"]["properties"]["kind"]["enum"] == ["a", "b"]
    assert props["ratio"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5,
                              "description": "A ratio."}
    assert props["by_key"]["additionalProperties"] == {"$ref": "#/definitions/inner"}
    assert props["salt"]["additionalProperties"] is True and "clip_eps_high" in props["loss"]["properties"]
    text = spec.describe(Outer)
    assert "  name (required)  Required name." in text and "inner.kind = 'a'  A kind. [one of: a, b]" in text
