"""The workflow plans: schema errors at parse time, the grids of the three configs, SLURM resources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, workdir: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-s", str(REPO / "workflow" / "Snakefile")]
    if workdir is not None:
        cmd += ["-d", str(workdir)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def write_config(tmp_path: Path, base: str, edit) -> Path:
    cfg = yaml.safe_load((REPO / "config" / base).read_text())
    edit(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_default_config_grid(tmp_path):
    res = snakemake("-n", "--configfile", str(REPO / "config" / "config.yaml"), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    counts = job_counts(res.stdout)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    main = cfg["studies"]["main"]
    for method in ("grpo", "grpo_salt", "dapo", "dapo_salt", "pods", "fgrpo"):
        assert method in main["methods"]
    # docs/design.md: a G sweep of two values (claim (a)'s slope against log2 G) and 4 replicates, each its
    # own warm-up; G in {4, 8} since the 45-minute budget was measured (G = 16 runs cost 1.6x G = 8 ones)
    assert len(main["group_sizes"]) >= 2 and max(main["group_sizes"]) >= 2 * min(main["group_sizes"])
    assert len(main["seeds"]) >= 4
    expected = sum(len(s["methods"]) * len(s["group_sizes"]) * len(s.get("seeds", [0])) for s in cfg["studies"].values())
    assert counts["train"] == expected == counts["make_run_config"]
    assert counts["mlflow_parent"] == len(cfg["studies"])
    warmups = {s["warmup_seed"] if s.get("warmup_seed") is not None else seed
               for s in cfg["studies"].values() for seed in s.get("seeds", [0])} | {0}  # 0: proxy validation
    assert counts["warmup_sft"] == len(warmups) == 4  # one warm-up SFT per replicate seed
    assert [s["kind"] for s in cfg["studies"].values()].count("seed_variance") == 1  # splits warm-up / RL seed
    for rule in ("prepare_data", "warmup_sft", "evaluate", "validate_proxy", "aggregate", "figures", "report"):
        assert counts.get(rule, 0) >= 1, rule


def test_paper_config_plans_without_gpu(tmp_path):
    res = snakemake("-n", "-p", "--configfile", str(REPO / "config" / "paper.yaml"), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    counts = job_counts(res.stdout)
    assert counts["train"] >= 40 and counts["evaluate"] > counts["train"]
    assert "warmup_sft" not in counts  # hub models: no toy warm-up
    # the accelerate config is found in the repository (the working directory is elsewhere): the jobs get its path
    assert f"accelerate launch --config_file {REPO}/config/accelerate/fsdp.yaml -m salt.cli train" in res.stdout
    assert "--backend vllm" in res.stdout and "--top-p 0.7" in res.stdout
    assert (REPO / "config" / "accelerate" / "fsdp.yaml").exists()


def test_slurm_profile_resources(tmp_path):
    # the profile as shipped: no conda forced, squeue status (works without accounting), no placeholders
    profile = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert not re.search(r"(?m)^software-deployment-method:", profile)
    assert re.search(r"(?m)^slurm-status-command: squeue$", profile) and "MY_" not in profile
    site = tmp_path / "site.yaml"
    site.write_text("slurm: {account: acme, cpu_partition: cpuq, gpu_partition: gpuq}\n")
    res = snakemake("-n", "--configfile", str(REPO / "config" / "paper.yaml"), str(site),
                    "--profile", str(REPO / "profiles" / "slurm"), workdir=tmp_path / "wd")
    assert res.returncode == 0, res.stderr + res.stdout
    train = [b for b in res.stdout.split("\n\n") if "rule train:" in b]
    assert train
    assert all("gpu=8" in b and "gpu_model=a100" in b and "slurm_partition=gpuq" in b and "slurm_account=acme" in b
               for b in train)
    data = [b for b in res.stdout.split("\n\n") if "rule prepare_data:" in b]
    assert data and all("gpu=0" in b and "slurm_partition=cpuq" in b and "slurm_account=acme" in b for b in data)


def test_wrong_key_fails_at_parse_time_naming_allowed_keys(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["studies"]["main"].update(group_size=[4]))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode != 0
    err = res.stderr + res.stdout
    assert "unknown config key 'studies.main.group_size'; valid keys under 'studies.main'" in err
    assert "group_sizes" in err and "prompts_per_step" in err


def test_enum_and_reference_errors(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["compute"].update(env="tpu"))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode != 0 and "config key 'compute.env' = 'tpu' is not allowed; use one of cpu, gpu" in res.stderr + res.stdout
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["studies"]["main"]["methods"].append("nope"))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode != 0 and "studies.main.methods: 'nope' is not a key of `methods`" in res.stderr + res.stdout


def test_bad_run_override_names_the_job(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml",
                       lambda c: c["methods"]["grpo"]["run"]["algorithm"].update(selection={"rule": "best"}))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    err = res.stderr + res.stdout
    assert res.returncode != 0
    assert "results/smoke/main/runs/toy/toy/grpo/G2/seed0" in err and "algorithm.selection.rule" in err


def test_budget_must_divide(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["studies"]["budget"].update(rollout_budget=6))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode != 0 and "rollout_budget=6 is not divisible by G=4" in res.stderr + res.stdout


def test_run_config_is_base_plus_method_plus_wildcards(tmp_path):
    """make_run_config writes one plain YAML: overrides deep-merged, P from the budget, PODS n = factor x G."""
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c["tracking"].update(enabled=False))
    targets = ["results/smoke/budget/configs/toy/toy/grpo_salt/G4/seed0.yaml",
               "results/smoke/ablation/configs/toy/toy/pods/G2/seed0.yaml"]
    res = snakemake(*targets, "--cores", "1", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    salt = yaml.safe_load((tmp_path / targets[0]).read_text())
    assert salt["rollout"]["group_size"] == 4 and salt["rollout"]["prompts_per_step"] == 2  # budget 8 / G 4
    assert salt["algorithm"]["salt"]["enabled"] is True
    assert salt["train"]["steps"] == 3 and salt["model"]["path"] == "results/smoke/models/toy/warmup0/final"
    assert salt["tracking"]["run_name"] == "budget/toy/toy/grpo_salt/G4/seed0"
    assert salt["tracking"]["parent_run_id"] is None
    pods = yaml.safe_load((tmp_path / targets[1]).read_text())
    assert pods["algorithm"]["selection"] == {"rule": "max_variance", "n": 4}
    assert "salt" not in pods["algorithm"]


def test_lint():
    res = snakemake("--lint", "--configfile", str(REPO / "config" / "smoke.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml", "paper.yaml"])
def test_configs_have_captions_and_envs(name):
    for fig in ("fig1_gram", "fig2_dynamics", "fig3_ablations", "fig4_residual", "fig5_proxy",
                "fig6_alpha_channels", "fig7_comparison", "table"):
        assert (REPO / "workflow" / "report" / f"{fig}.rst").stat().st_size > 100
    env = yaml.safe_load((REPO / "config" / name).read_text())["compute"]["env"]
    assert (REPO / "envs" / f"{env}.yaml").exists()


def planned_files(out: str) -> set[str]:
    """Every output, log and benchmark file of a dry run's job blocks (and each training job's run dir)."""
    files: set[str] = set()
    for line in out.splitlines():
        m = re.match(r"^    (output|log|benchmark): (.+)$", line)
        if m:
            for path in m.group(2).split(", "):
                files.add(path.strip())
                if path.endswith("/DONE"):
                    files.add(path[: -len("/DONE")])  # the run dir the trainer fills (checkpoints, metrics)
    return files


def test_two_configs_in_one_checkout_have_disjoint_outputs(tmp_path):
    """Default and smoke planned in one working dir: no file in common, each under its results_dir,
    one shared MLflow database."""
    plans = {}
    for name in ("config.yaml", "smoke.yaml"):
        res = snakemake("-n", "--configfile", str(REPO / "config" / name), workdir=tmp_path)
        assert res.returncode == 0, res.stderr + res.stdout
        plans[name] = planned_files(res.stdout)
    default, smoke = plans["config.yaml"], plans["smoke.yaml"]
    assert len(default) > 100 and len(smoke) > 50
    assert not default & smoke
    assert all(p.startswith("results/") and not p.startswith("results/smoke/") for p in default)
    assert all(p.startswith("results/smoke/") for p in smoke)
    # what `make run` leaves for the default config
    assert {"results/report.html", "results/main/table.md", "results/tables/results.md"} <= default
    assert {"results/smoke/report.html", "results/smoke/main/table.md"} <= smoke
    for kind in ("logs/train/", "benchmarks/train/", "data/", "models/", "figures/", "main/runs/", "main/eval/"):
        assert any(p.startswith("results/" + kind) for p in default), kind
        assert any(p.startswith("results/smoke/" + kind) for p in smoke), kind
    cfgs = [yaml.safe_load((REPO / "config" / n).read_text()) for n in ("config.yaml", "smoke.yaml", "paper.yaml")]
    assert [c["results_dir"] for c in cfgs] == ["results", "results/smoke", "results/paper"]
    assert len({c["tracking"]["uri"] for c in cfgs}) == 1 and len({c["tracking"]["experiment"] for c in cfgs}) == 3


def test_results_dir_moves_every_output(tmp_path):
    cfg = write_config(tmp_path, "smoke.yaml", lambda c: c.update(results_dir="out/x/"))
    res = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    files = planned_files(res.stdout)
    assert files and all(p.startswith("out/x/") for p in files)
    assert "out/x/report.html" in files
    bad = write_config(tmp_path, "smoke.yaml", lambda c: c.update(results_dir="res/{study}"))
    res = snakemake("-n", "--configfile", str(bad), workdir=tmp_path)
    assert res.returncode != 0 and "results_dir='res/{study}' must be a folder path" in res.stderr + res.stdout
    clash = write_config(tmp_path, "smoke.yaml", lambda c: c["studies"].update(figures=c["studies"].pop("focal")))
    res = snakemake("-n", "--configfile", str(clash), workdir=tmp_path)
    assert res.returncode != 0 and "studies: figures would share a folder" in res.stderr + res.stdout
