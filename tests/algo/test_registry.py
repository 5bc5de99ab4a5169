import pytest

from salt.algo.advantages import ADVANTAGE_ESTIMATORS
from salt.algo.losses import POLICY_LOSSES
from salt.algo.registry import Registry, UnknownNameError
from salt.algo.selection import SELECTION_RULES


def test_register_get_names_contains():
    reg = Registry("widget")

    @reg.register("b")
    def fb():
        return "b"

    @reg.register("a")
    def fa():
        return "a"

    assert reg.get("a") is fa and reg.get("b")() == "b"
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg and 3 not in reg
    assert len(reg) == 2 and list(reg) == ["a", "b"]


def test_reregistering_raises():
    reg = Registry("widget")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        reg.register("x")(lambda: 2)
    assert reg.get("x")() == 1


def test_unknown_name_lists_known_names_and_is_key_and_value_error():
    reg = Registry("widget")
    reg.register("alpha")(len)
    reg.register("beta")(len)
    with pytest.raises(KeyError) as info:
        reg.get("gamma")
    assert str(info.value) == "unknown widget 'gamma'; known: alpha, beta"
    with pytest.raises(ValueError, match="known: alpha, beta"):
        reg.get("gamma")
    assert isinstance(info.value, UnknownNameError)


def test_bad_name_rejected():
    with pytest.raises(ValueError, match="non-empty string"):
        Registry("widget").register("")


def test_project_registries_hold_every_method():
    assert POLICY_LOSSES.names() == ["cispo", "dapo", "dr_grpo", "grpo", "gspo"]
    assert ADVANTAGE_ESTIMATORS.names() == ["batch", "dr_grpo", "grpo", "rloo"]
    assert SELECTION_RULES.names() == ["max_reward", "max_variance", "random"]
