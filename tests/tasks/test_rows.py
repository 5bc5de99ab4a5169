"""The one row validator (salt.tasks.rows): every field each task needs, reported as FILE:LINE."""

from __future__ import annotations

import json

import pytest

from salt.tasks.datasets import cli_main as prepare_cli
from salt.tasks.rows import DatasetError, read_rows, row_problem, validate_rows

GOOD = {
    "toy": {"id": "t1", "task": "toy", "prompt": "1+2=", "answer": "3"},
    "math": {"id": "m1", "task": "math", "prompt": "What is 1+2?", "answer": "3"},
    "mcq": {"id": "q1", "task": "mcq", "prompt": "Pick", "choices": ["x", "y", "z"], "answer": "B"},
    "code": {"id": "c1", "task": "code", "prompt": "Write f", "tests": ["assert f(1) == 2"], "entry_point": "f"},
}


def drop(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


BAD = [
    (drop(GOOD["toy"], "answer"), "no answer"),
    ({**GOOD["toy"], "answer": "  "}, "no answer"),
    (drop(GOOD["math"], "answer"), "no answer"),
    ({**GOOD["math"], "answer": 3}, "no answer"),
    (drop(GOOD["mcq"], "answer"), r"answer None is not one of \['A', 'B', 'C'\]"),
    ({**GOOD["mcq"], "answer": "D"}, "is not one of"),
    (drop(GOOD["mcq"], "choices"), "'choices' must be a list"),
    ({**GOOD["mcq"], "choices": ["only"]}, "'choices' must be a list of >= 2"),
    (drop(GOOD["code"], "tests"), "empty tests"),
    ({**GOOD["code"], "tests": []}, "empty tests"),
    ({**GOOD["code"], "tests": "assert f(1) == 2"}, "empty tests"),
    ({**GOOD["code"], "entry_point": 3}, "'entry_point' must be a string"),
    (drop(GOOD["toy"], "prompt"), "no prompt"),
    (drop(GOOD["toy"], "id"), "'id' must be a non-empty string"),
    ({**GOOD["toy"], "task": "chess"}, "unknown task 'chess'"),
    (["not", "a", "row"], "must be a JSON object, got list"),
]


@pytest.mark.parametrize("task", sorted(GOOD))
def test_good_rows_pass(task, tmp_path):
    assert row_problem(GOOD[task]) is None
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{i}"}) + "\n" for i, r in enumerate(GOOD.values())))
    assert len(read_rows(path)) == 4


@pytest.mark.parametrize("bad, message", BAD)
def test_the_first_bad_row_is_named_by_file_and_line(bad, message, tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{**GOOD["math"], "id": f"m{i}"} for i in range(5)]
    # line 1, blank line 2, rows on lines 3.., the bad row on line 6, another bad one later
    text = json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:4])
    text += json.dumps(bad) + "\n" + json.dumps(drop(rows[4], "answer")) + "\n"
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"^{path}:6: row .*{message}.*; fix that row or regenerate") as err:
        read_rows(path, what="data.train")
    assert "\n" not in str(err.value)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD["toy"], GOOD["math"], GOOD["toy"]]))
    with pytest.raises(DatasetError, match=rf"^{path}:3: row 't1': duplicate id \(first at line 1\)"):
        read_rows(path)
    with pytest.raises(DatasetError, match=r"dataset 'x', row 't1' \(#2\): duplicate id \(first at row #0\)"):
        validate_rows("x", [GOOD["toy"], GOOD["math"], GOOD["toy"]])


def test_unreadable_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD["toy"]).encode() + b'\n{"id": "t2", "task": "toy", "prompt": "caf\xe9", '
                     b'"answer": "1"}\n')
    with pytest.raises(DatasetError, match=rf"^{path}:2:43: not valid UTF-8 \(byte\(s\) e9\); re-save the file as UTF-8"):
        read_rows(path)
    path.write_text(json.dumps(GOOD["toy"]) + '\n{"id": "t2",\n')
    with pytest.raises(DatasetError, match=rf"^{path}:2: not valid JSON \(Expecting property name"):
        read_rows(path)
    path.write_text("\n\n")
    with pytest.raises(DatasetError, match="data.eval = .* holds no rows; regenerate it with `salt prepare-data"):
        read_rows(path, what="data.eval")
    with pytest.raises(DatasetError, match="--data = .*nope.jsonl' does not exist; create it with `salt prepare-data"):
        read_rows(tmp_path / "nope.jsonl", what="--data")
    with pytest.raises(DatasetError, match="--data = .* cannot be read"):
        read_rows(tmp_path, what="--data")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_prepare_data_names_a_non_utf8_line(suffix, tmp_path, capsys):
    """Was a bare UnicodeDecodeError traceback (no file, no line)."""
    src = tmp_path / f"aime{suffix}"
    good, bad = {"ID": "2024-I-1", "Problem": "What is 1+1?", "Answer": "2"}, "Probl\xe8me".encode("latin-1")
    if suffix == ".jsonl":
        data = json.dumps(good).encode() + b"\n" + json.dumps({**good, "ID": "x"}).encode().replace(b"What", bad) + b"\n"
        line, col = 2, 30
    elif suffix == ".csv":
        data = b"ID,Problem,Answer\n2024-I-1,What is 1+1?,2\nx," + bad + b",3\n"
        line, col = 3, 8
    else:
        data = b'[{"ID": "a", "Problem": "' + bad + b'", "Answer": "2"}]'
        line, col = 1, 31
    src.write_bytes(data)
    assert prepare_cli(["aime24", "--out", str(tmp_path / "out"), "--source", str(src)]) == 2
    err = capsys.readouterr().err
    assert err == (f"salt prepare-data: {src}:{line}:{col}: not valid UTF-8 (byte(s) e8); re-save the file as "
                   "UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove that line\n")
    assert not (tmp_path / "out").exists()
