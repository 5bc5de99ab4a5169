"""Paths and malformed YAML in a workflow config are reported while the DAG is planned (`snakemake -n`),
naming the key (or file, line and column) and the path; `salt check-config` says the same without Snakemake."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from salt.cli import main as salt_main
from tests.workflow.test_config_dag import REPO, snakemake


def smoke_with(tmp_path, edit) -> str:
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_dry_run_reports_every_path_that_cannot_be_used(tmp_path, capsys):
    """Was: `snakemake -n` accepted all of these; the jobs failed one by one when they ran."""
    workdir = tmp_path / "wd"
    (workdir / "models" / "empty").mkdir(parents=True)  # a model folder without config.json

    def edit(cfg):
        cfg["datasets"]["aime"] = {"name": "aime24", "source": "data/aime24.jsonl"}  # does not exist
        cfg["datasets"]["toy_test"]["set"]["nn"] = 3  # a misspelt loader option (n)
        cfg["models"]["toy"]["path"] = "models/empty"
        cfg["models"]["toy2"] = {"path": None, "sft_config": "config/sft_nope.yaml"}
        cfg["compute"].update(launcher="accelerate", accelerate_config="config/accelerate/nope.yaml")

    config = smoke_with(tmp_path, edit)
    res = snakemake("-n", "--configfile", config, workdir=workdir)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    for line in [
        "config error: inputs that cannot be used (checked while the DAG is planned):",
        "  datasets.toy_test.set has unknown option(s) ['nn']; valid: ['config', 'levels', 'n', 'revision', 'split']",
        "  datasets.aime.source = 'data/aime24.jsonl' does not exist; fix the path (a local .jsonl/.json/.parquet/"
        ".csv file or snapshot directory) or give a hub id",
        "  models.toy.path = 'models/empty' has no config.json; point it at a Hugging Face model dir (with "
        "config.json) or a hub id, or set it to null for the toy model the workflow builds (warmup_sft)",
        f"  models.toy2.sft_config = 'config/sft_nope.yaml' does not exist (relative paths start at the working "
        f"directory or the repository {REPO}); fix the path",
        "  compute.accelerate_config = 'config/accelerate/nope.yaml' does not exist",
    ]:
        assert line in out, out[-3000:]
    assert "Job stats" not in out  # nothing was planned

    # the same report without Snakemake, from the same working directory
    assert salt_main(["check-config", "-d", str(workdir), config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("salt check-config: inputs that cannot be used") and "models.toy.path = 'models/empty'" in err

    # fixed: a readable local source, a model dir with config.json, the repository's accelerate config
    (workdir / "data").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "aime_2024_sample.jsonl", workdir / "data" / "aime24.jsonl")
    (workdir / "models" / "empty" / "config.json").write_text("{}")

    def fixed(cfg):
        edit(cfg)
        del cfg["datasets"]["toy_test"]["set"]["nn"]
        del cfg["models"]["toy2"]
        cfg["compute"]["accelerate_config"] = "config/accelerate/ddp.yaml"

    assert salt_main(["check-config", "-d", str(workdir), smoke_with(tmp_path, fixed)]) == 0
    assert os.getcwd() != str(workdir)  # the calls above left the process where it was
    assert "valid (5 studies, 18 training jobs)" in capsys.readouterr().out


def test_check_config_directory_leaves_the_working_directory(tmp_path, capsys):
    """Was: `salt check-config -d DIR` did os.chdir(DIR) in the calling process and never went back.
    Relative paths are now read from DIR (a model dir that exists only there passes, one missing there
    fails) while the process's working directory stays where it was."""
    workdir = tmp_path / "wd"
    (workdir / "models" / "m").mkdir(parents=True)
    (workdir / "models" / "m" / "config.json").write_text("{}")
    (workdir / "data").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "aime_2024_sample.jsonl", workdir / "data" / "aime24.jsonl")

    def edit(cfg):
        cfg["models"]["toy"]["path"] = "./models/m"  # ./: a local dir, never a hub id
        cfg["datasets"]["aime"] = {"name": "aime24", "source": "data/aime24.jsonl"}

    config = smoke_with(tmp_path, edit)
    here = os.getcwd()
    assert not (Path(here) / "models" / "m").exists()  # only DIR has it
    assert salt_main(["check-config", "-d", str(workdir), config]) == 0, capsys.readouterr().err
    assert os.getcwd() == here
    assert salt_main(["check-config", "-d", str(tmp_path), config]) == 2  # not there
    err = capsys.readouterr().err
    assert "models.toy.path = './models/m' does not exist" in err and "data/aime24.jsonl' does not exist" in err
    assert os.getcwd() == here


def test_malformed_yaml_names_file_line_and_column(tmp_path, capsys):
    """Was: Snakemake's "Config file is not valid JSON or YAML" (no file, no line)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("results_dir: results/x\nrun: {train: {steps: 3}\nmodels: {}\n")
    assert salt_main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"salt check-config: {bad}:3:1: not valid YAML: expected ',' or '}}', but got '<scalar>' (while parsing a "
        "flow mapping started at line 2, column 6); fix the file there (close every bracket and quote, quote "
        "values holding ': ' or ' #', indent with spaces)\n")
    # the embedded default config (no --configfile) is read by the Snakefile itself: same message
    workdir = tmp_path / "wd"
    (workdir / "config").mkdir(parents=True)
    shutil.copy(bad, workdir / "config" / "config.yaml")
    res = snakemake("-n", workdir=workdir)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "config/config.yaml:3:1: not valid YAML: expected ',' or '}', but got '<scalar>'" in out, out
