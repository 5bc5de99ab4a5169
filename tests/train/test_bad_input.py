"""Bad input to `salt train` / `salt evaluate` / `salt sft` stops before any work with one line
naming the file, line (and column) and the fix; SALT_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salt.tasks.toy import generate_problems
from tests.train.test_trainer import build_policy, run_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("policy"))


def rows_without_answer_at(path: Path, line: int, n: int = 100) -> Path:
    rows = generate_problems(n, "rl", seed=0, levels=(1,))
    del rows[line - 1]["answer"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the data was checked")


def test_a_training_row_without_answer_stops_train_before_the_first_step(policy, tmp_path, capsys, monkeypatch):
    """Was: KeyError: 'answer' at step 30, after 29 steps and two checkpoints."""
    from transformers import AutoModelForCausalLM

    from salt.train.trainer import cli_main

    data = rows_without_answer_at(tmp_path / "train.jsonl", 60)
    cfg = run_config(policy, data={"train": str(data), "shuffle": False},
                     rollout={"group_size": 2, "prompts_per_step": 2},
                     algorithm={"salt": {"enabled": False}},
                     train={"steps": 40, "checkpoint_every": 10, "keep_checkpoints": 2})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
    out = tmp_path / "run"
    assert cli_main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    row_id = generate_problems(100, "rl", seed=0, levels=(1,))[59]["id"]
    assert err == (f"salt train: {data}:60: row '{row_id}': no answer (a toy row needs 'answer', a non-empty "
                   "string); fix that row or regenerate the file with `salt prepare-data NAME --out DIR` "
                   "(row schema: salt/ARCHITECTURE.md, Rows)\n")
    assert not out.exists()
    # the same for data.eval
    cfg["data"].update(train=str(policy.parent / "rows.jsonl"), eval=str(data))
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["--config", str(config), "--out", str(out)]) == 2
    assert f"{data}:60: row '{row_id}': no answer" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_utf8_training_row_names_file_line_and_column(policy, tmp_path, capsys):
    from salt.train.trainer import cli_main

    data = tmp_path / "train.jsonl"
    rows = generate_problems(5, "rl", seed=0, levels=(1,))
    lines = [json.dumps(r).encode() for r in rows]
    lines[3] = lines[3].replace(b'"prompt": "', b'"prompt": "\xff')
    data.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(policy, data={"train": str(data)})))
    assert cli_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    column = lines[3].index(b"\xff") + 1
    assert capsys.readouterr().err == (f"salt train: {data}:4:{column}: not valid UTF-8 (byte(s) ff); re-save the "
                                       "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove that line\n")


def test_an_evaluation_row_without_answer_stops_evaluate_before_the_model(policy, tmp_path, capsys, monkeypatch):
    import salt.eval.evaluate as ev

    data = rows_without_answer_at(tmp_path / "test.jsonl", 3, n=6)
    monkeypatch.setattr(ev, "load_model", no_model)
    assert ev.cli_main(["--model", str(policy), "--benchmark", "toy", "--data", str(data), "--out",
                        str(tmp_path / "eval"), "--n", "2", "--max-new-tokens", "4", "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"salt evaluate: {data}:3: row ") and "no answer (a toy row needs 'answer'" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "eval" / "problems.jsonl").exists()


BAD_YAML = "seed: 3\nmodel:\n  path: x\ntrain: {steps: 3\nrollout: {group_size: 2}\n"


def salt_cli(*args: str, debug: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SALT_DEBUG"}
    if debug:
        env["SALT_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "salt.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)


def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path):
    """Was a 55-line ScannerError / ParserError traceback."""
    from salt.train.config import ConfigError, load_run_config

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    with pytest.raises(ConfigError, match=rf"^run config {bad}:5:8: not valid YAML: expected ',' or '}}', but got "
                                          r"':' \(while parsing a flow mapping started at line 4, column 8\)"):
        load_run_config(bad, check_paths=False)
    with pytest.raises(ConfigError, match=r"^--set 'train.dump_gram_steps=\[1,': the value is not valid YAML at "
                                          r"column 26: expected the node content, but found '<stream end>'"):
        load_run_config(None, ["train.dump_gram_steps=[1,"], check_paths=False)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"seed: 3\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^run config {latin}:2:6: not valid UTF-8"):
        load_run_config(latin, check_paths=False)

    # through the command line: exactly one line on stderr, exit code 2; SALT_DEBUG=1: the traceback
    res = salt_cli("train", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"salt train: config error: run config {bad}:5:8: not valid YAML")
    assert len(res.stderr.splitlines()) == 1
    res = salt_cli("train", "--config", str(bad), "--set", "train.dump_gram_steps=[1,")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1  # the file is read first
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(run_config(tmp_path / "nope")))
    res = salt_cli("train", "--config", str(good), "--set", "train.dump_gram_steps=[1,")
    assert res.returncode == 2 and res.stderr.splitlines() == [
        "salt train: config error: --set 'train.dump_gram_steps=[1,': the value is not valid YAML at column 26: "
        "expected the node content, but found '<stream end>' (while parsing a flow node started at line 1, "
        "column 26); complete or quote the value, e.g. --set 'train.dump_gram_steps=[1, 2]'"]
    res = salt_cli("sft", "--out", str(tmp_path / "sft"), "--config", str(bad))
    assert res.returncode == 2 and res.stderr.splitlines() == [
        f"salt sft: {bad}:5:8: not valid YAML: expected ',' or '}}', but got ':' (while parsing a flow mapping "
        "started at line 4, column 8); fix the file there (close every bracket and quote, quote values holding "
        "': ' or ' #', indent with spaces)"]
    res = salt_cli("train", "--config", str(bad), debug=True)
    assert res.returncode != 0 and "Traceback (most recent call last)" in res.stderr
    assert f"{bad}:5:8: not valid YAML" in res.stderr


def test_validate_proxy_checks_its_rows_before_the_model(tmp_path):
    from salt.tasks.rows import DatasetError
    from salt.train.proxy import validate_proxy

    data = rows_without_answer_at(tmp_path / "test.jsonl", 3, n=6)
    with pytest.raises(DatasetError, match=rf"^{data}:3: row .*no answer"):
        validate_proxy(str(tmp_path / "no-model"), str(data), str(tmp_path / "out"), n_prompts=4, group_size=2)


def test_model_path_local_dir_or_hub_id(tmp_path, monkeypatch):
    """model.path: a local dir needs config.json; `owner/name` is a hub id, which offline must be cached."""
    from huggingface_hub import constants

    from salt.train.config_checks import model_path_problem

    (tmp_path / "empty").mkdir()
    assert model_path_problem(str(tmp_path / "empty")) == "has no config.json"
    assert model_path_problem(str(tmp_path / "nope")) == "does not exist"
    assert model_path_problem("models/a/b") == "does not exist"  # not of the hub id form
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert model_path_problem("acme/tiny") is None  # online: the job downloads it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_path_problem("acme/tiny").startswith("is a hub id missing from the local Hugging Face cache")
    assert model_path_problem("acme/tiny", check_cache=False) is None  # planning: the job's host decides
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    assert model_path_problem("acme/tiny") is None  # cached
