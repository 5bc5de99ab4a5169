"""The workflow's ``sandbox.allow_unisolated`` reaches every run config and every evaluation, and is
off by default (code jobs then stop at start-up when bubblewrap is missing)."""

from __future__ import annotations

import yaml

from tests.workflow.test_config_dag import snakemake, write_config

TARGET = "results/smoke/budget/configs/toy/toy/grpo_salt/G4/seed0.yaml"


def test_opt_in_reaches_run_configs_and_evaluations(tmp_path):
    def edit(c):
        c["tracking"].update(enabled=False)
        c["sandbox"] = {"allow_unisolated": True}

    cfg = write_config(tmp_path, "smoke.yaml", edit)
    res = snakemake(TARGET, "--cores", "1", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    assert yaml.safe_load((tmp_path / TARGET).read_text())["sandbox"] == {"allow_unisolated": True}
    res = snakemake("-n", "-p", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    evals = [line for line in res.stdout.splitlines() if "salt.cli evaluate" in line]
    assert evals and all("--allow-unisolated" in line for line in evals)


def test_off_by_default(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["tracking"].update(enabled=False))
    res = snakemake("-n", "-p", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    evals = [line for line in res.stdout.splitlines() if "salt.cli evaluate" in line]
    assert evals and not any("--allow-unisolated" in line for line in evals)
