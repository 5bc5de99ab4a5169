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


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_gives_the_usual_permissions(tmp_path, umask):
    import os
    import stat

    from salt.utils import _read_umask, atomic_write_bytes

    old = os.umask(umask)
    try:
        assert _read_umask() == umask
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
        with open(tmp_path / "plain.txt", "w") as fh:  # what open() gives under this umask
            fh.write("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("a.txt", "b.bin", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert (tmp_path / "a.txt").read_text() == "x" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "plain.txt"]
