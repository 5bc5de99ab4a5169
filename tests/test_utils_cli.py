import json

import pytest

from salt import cli
from salt.utils import (
    append_jsonl,
    atomic_write_text,
    deep_merge,
    parse_set_overrides,
    read_jsonl,
    write_jsonl_atomic,
)


def test_deep_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = deep_merge(base, {"a": {"b": 5}, "e": 3})
    assert out == {"a": {"b": 5, "c": 2}, "d": [1], "e": 3}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_parse_set_overrides_parses_yaml_values():
    out = parse_set_overrides(["a.b=1", "a.c=true", "d=[1, 2]", "e=null", "f=text"])
    assert out == {"a": {"b": 1, "c": True}, "d": [1, 2], "e": None, "f": "text"}


def test_parse_set_overrides_rejects_missing_equals():
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_set_overrides(["a.b"])


def test_jsonl_roundtrip_and_atomic(tmp_path):
    path = tmp_path / "sub" / "x.jsonl"
    assert write_jsonl_atomic(path, [{"a": 1}, {"b": "é"}]) == 2
    append_jsonl(path, {"c": 3})
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}, {"c": 3}]
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temp file left


def test_read_jsonl_names_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    atomic_write_text(path, json.dumps({"ok": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(path)


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    assert cli.main(["no-such-command"]) == 2
    assert "Known commands" in capsys.readouterr().err


def test_every_cli_entry_resolves():
    import importlib

    for name, (target, _) in cli.COMMANDS.items():
        module_name, func_name = target.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func_name)), name
