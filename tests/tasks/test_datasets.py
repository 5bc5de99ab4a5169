"""prepare-data on fixtures in each benchmark's own hub schema (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salt.tasks.datasets import REGISTRY, DatasetError, cli_main, prepare, read_local_file
from salt.utils import read_jsonl

FIX = Path(__file__).resolve().parents[1] / "fixtures"

CASES = {
    "math500": ("math500_sample.jsonl", 3),
    "math_train": ("math_lighteval_sample.jsonl", 3),
    "aime24": ("aime_2024_sample.jsonl", 2),
    "aime25": ("aime_2025_sample.jsonl", 2),
    "gpqa_diamond": ("gpqa_diamond_sample.csv", 3),
    "mbpp": ("mbpp_sanitized_sample.jsonl", 3),
}


def test_registry_names():
    assert set(REGISTRY) == {"toy_train", "toy_rl", "toy_test", "math_train", "math500", "aime24", "aime25",
                             "gpqa_diamond", "mbpp", "humaneval"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_prepares(name, tmp_path):
    fixture, n = CASES[name]
    manifest = prepare(name, tmp_path, source=str(FIX / fixture), seed=1)
    rows = read_jsonl(tmp_path / "data.jsonl")
    assert len(rows) == n == manifest["rows"]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["name"] == name and len(on_disk["sha256"]) == 64 and on_disk["source"].endswith(fixture)
    assert len({r["id"] for r in rows}) == n
    assert all(r["task"] == REGISTRY[name].task for r in rows)


def test_math_answers(tmp_path):
    prepare("math_train", tmp_path / "a", source=str(FIX / "math_lighteval_sample.jsonl"))
    rows = read_jsonl(tmp_path / "a" / "data.jsonl")
    # no answer column: the solution's last \boxed{} (the third has two boxes)
    assert [r["answer"] for r in rows] == ["21", "2\\sqrt{2}", "\\frac{3}{4}"]
    assert rows[0]["meta"]["difficulty"] == 1
    prepare("aime24", tmp_path / "b", source=str(FIX / "aime_2024_sample.jsonl"))
    rows = read_jsonl(tmp_path / "b" / "data.jsonl")
    assert rows[0]["id"] == "aime24-2024-I-1" and rows[0]["answer"] == "24"  # int column -> "24"
    prepare("aime25", tmp_path / "c", source=str(FIX / "aime_2025_sample.jsonl"))
    assert read_jsonl(tmp_path / "c" / "data.jsonl")[0]["answer"] == "033"


def test_gpqa_shuffle_is_seeded_and_keeps_the_answer(tmp_path):
    raw = read_local_file(FIX / "gpqa_diamond_sample.csv")
    orders = {}
    for seed in (0, 1, 2, 3):
        prepare("gpqa_diamond", tmp_path / str(seed), source=str(FIX / "gpqa_diamond_sample.csv"), seed=seed)
        rows = read_jsonl(tmp_path / str(seed) / "data.jsonl")
        for row, src in zip(rows, raw):
            assert row["choices"][ord(row["answer"]) - 65] == src["Correct Answer"]
            assert sorted(row["choices"]) == sorted(
                [src["Correct Answer"]] + [src[f"Incorrect Answer {k}"] for k in (1, 2, 3)])
        orders[seed] = [tuple(r["choices"]) for r in rows]
    prepare("gpqa_diamond", tmp_path / "again", source=str(FIX / "gpqa_diamond_sample.csv"), seed=0)
    assert [tuple(r["choices"]) for r in read_jsonl(tmp_path / "again" / "data.jsonl")] == orders[0]
    assert len({tuple(v) for v in orders.values()}) > 1


def test_mbpp_rows_run_in_the_sandbox(tmp_path):
    from salt.tasks.sandbox import run_tests

    prepare("mbpp", tmp_path, source=str(FIX / "mbpp_sanitized_sample.jsonl"))
    rows = read_jsonl(tmp_path / "data.jsonl")
    raw = read_local_file(FIX / "mbpp_sanitized_sample.jsonl")
    assert rows[2]["setup"] == "import math" and rows[0]["entry_point"] == "similar_elements"
    assert "assert is_not_prime(2) == False" in rows[1]["prompt"]
    for row, src in zip(rows, raw):
        res = run_tests(src["code"], row["tests"], setup=row["setup"], entry_point=row.get("entry_point"))
        assert res.passed, (row["id"], res.stderr)


def test_parquet_and_csv_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = read_local_file(FIX / "math500_sample.jsonl")
    pq.write_table(pa.Table.from_pylist(raw), tmp_path / "m.parquet")
    prepare("math500", tmp_path / "out", source=str(tmp_path / "m.parquet"))
    assert [r["answer"] for r in read_jsonl(tmp_path / "out" / "data.jsonl")] == [r["answer"] for r in raw]
    raw_mbpp = read_local_file(FIX / "mbpp_sanitized_sample.jsonl")
    import csv

    with open(tmp_path / "mbpp.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(raw_mbpp[0]))
        w.writeheader()
        for r in raw_mbpp:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    prepare("mbpp", tmp_path / "out2", source=str(tmp_path / "mbpp.csv"))
    assert read_jsonl(tmp_path / "out2" / "data.jsonl")[1]["tests"] == raw_mbpp[1]["test_list"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        ("math500", lambda rows: [{**rows[0], "answer": "", "solution": "no box"}] + rows[1:], "no answer"),
        ("aime24", lambda rows: [{k: v for k, v in rows[0].items() if k != "Answer"}] + rows[1:], "missing column"),
        ("aime25", lambda rows: [rows[0], {**rows[1], "id": rows[0]["id"]}], "duplicate id"),
        ("mbpp", lambda rows: [rows[0], {**rows[1], "test_list": []}] + rows[2:], "empty tests"),
        ("mbpp", lambda rows: [{k: v for k, v in rows[0].items() if k != "test_list"}], "missing column"),
    ],
)
def test_malformed_rows_stop_preparation(tmp_path, name, mutate, message):
    fixture = {"math500": "math500_sample.jsonl", "aime24": "aime_2024_sample.jsonl",
               "aime25": "aime_2025_sample.jsonl", "mbpp": "mbpp_sanitized_sample.jsonl"}[name]
    rows = mutate(read_local_file(FIX / fixture))
    src = _write(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.jsonl").write_text("previous\n")
    with pytest.raises(DatasetError, match=message) as err:
        prepare(name, out, source=src)
    assert "row" in str(err.value)
    assert (out / "data.jsonl").read_text() == "previous\n"  # nothing half-written, old file intact
    assert not (out / "manifest.json").exists()
    assert [p.name for p in out.iterdir()] == ["data.jsonl"]


def test_gpqa_missing_answer_names_the_row(tmp_path):
    rows = read_local_file(FIX / "gpqa_diamond_sample.csv")
    rows[1]["Correct Answer"] = ""
    with pytest.raises(DatasetError, match="recx0002.*no answer"):
        prepare("gpqa_diamond", tmp_path, source=_write(tmp_path / "g.jsonl", rows))


def test_humaneval_offline(tmp_path):
    prepare("humaneval", tmp_path, limit=5)
    rows = read_jsonl(tmp_path / "data.jsonl")
    assert len(rows) == 5 and rows[0]["id"] == "humaneval-HumanEval/0"
    assert rows[0]["tests"][0].rstrip().endswith("check(has_close_elements)")
    assert rows[0]["meta"]["code_prefix"].startswith("from typing import List")


def test_toy_through_the_cli(tmp_path, capsys):
    assert cli_main(["toy_train", "--out", str(tmp_path / "t"), "--seed", "7", "--set", "n=40",
                     "--set", "levels=[1, 2]"]) == 0
    rows = read_jsonl(tmp_path / "t" / "data.jsonl")
    assert len(rows) == 40 and {r["meta"]["difficulty"] for r in rows} == {1, 2}
    assert cli_main(["toy_test", "--out", str(tmp_path / "v"), "--set", "n=10"]) == 0
    test_prompts = {r["prompt"] for r in read_jsonl(tmp_path / "v" / "data.jsonl")}
    assert not test_prompts & {r["prompt"] for r in rows}
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["rows"] == 40 and manifest["seed"] == 7 and manifest["options"] == {"n": 40, "levels": [1, 2]}


def test_cli_errors(tmp_path, capsys):
    assert cli_main(["nope", "--out", str(tmp_path)]) == 2
    assert "Known datasets" in capsys.readouterr().err
    assert cli_main(["toy_train", "--out", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli_main(["aime24", "--out", str(tmp_path), "--source", str(tmp_path / "missing.xyz")]) == 2
    assert "--source PATH" in capsys.readouterr().err
