"""Replication of the claims on disjoint seed sets, their power figures, and the README's generated block."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from salt import metric_names as mn
from salt.cli import main as salt_main
from salt.figures import aggregate, claims, power, replication
from tests.workflow.synthetic import MAIN_ALL, make_runs, rewrite_metric

REPO = Path(__file__).resolve().parents[2]
FOUR = {"main": (*MAIN_ALL["main"][:3], [0, 1, 2, 3], *MAIN_ALL["main"][4:])}


def _part(verdict, est, half, mde, bound=0.0, side=">"):
    return {"measure": "m", "verdict": verdict, "estimate": est, "ci95": half, "mde80": mde, "bound": bound, "side": side}


def _claims(*verdict_parts, seeds=(0, 1)):
    return {"seeds": list(seeds), "study": "main",
            "claims": [{"id": cid, "claim": f"claim {cid}", "verdict": claims.stats.combine([p["verdict"] for p in parts]),
                        "parts": parts} for cid, parts in verdict_parts]}


def test_compare_statuses_and_reasons():
    a = _claims(("a", [_part("holds", 0.05, 0.01, 0.02)]), ("b", [_part("inconclusive", 0.0, 0.03, 0.05)]),
                ("c", [_part("holds", 0.01, 0.005, 0.008)]), ("d", [_part("holds", 0.2, 0.05, 0.05)]),
                ("e", [_part("holds", 0.3, 0.05, 0.06)]))
    b = _claims(("a", [_part("holds", 0.04, 0.01, 0.02)]), ("b", [_part("inconclusive", 0.01, 0.03, 0.05)]),
                ("c", [_part("inconclusive", 0.004, 0.01, 0.02)]), ("d", [_part("does not hold", -0.2, 0.05, 0.05)]),
                ("e", [_part("inconclusive", 0.05, 0.07, 0.09)]), seeds=(2, 3))
    rep = replication.compare(a, b)
    st = {c["id"]: c for c in rep["claims"]}
    assert st["a"]["status"] == replication.REPLICATED and "why" not in st["a"]["parts"][0]
    assert st["b"]["status"] == replication.BOTH_INCONCLUSIVE
    assert st["c"]["status"] == replication.NOT_REPLICATED
    assert "below the other set's MDE 0.02" in st["c"]["parts"][0]["why"]  # 0.01 from the bound < 0.02: near the limit
    assert "real conflict" in st["d"]["parts"][0]["why"]
    assert "differ more than sampling explains" in st["e"]["parts"][0]["why"]  # 0.3 > MDE 0.09, yet inconclusive
    assert not rep["all_agree"] and rep["seeds"] == [[0, 1], [2, 3]]
    md = replication.replication_markdown(rep)
    assert "**not replicated**" in md and "some verdicts differ" in md
    with pytest.raises(ValueError, match=r"claim \(a\) is in set A but not in set B"):
        replication.compare(a, _claims())


def test_halves_are_disjoint_and_cover():
    assert replication.halves([3, 0, 2, 1]) == ([0, 1], [2, 3])
    assert replication.halves([0, 1, 2]) == ([0, 1], [2])
    with pytest.raises(ValueError, match="at least 2 replicates"):
        replication.halves([0])


def _four_replicates(tmp_path, vip_effect):
    manifest = make_runs(tmp_path / "results", studies=FOUR, gram=False, duplicate_step=False,
                         effects={"grpo_salt": 0.1, "dapo_salt": 0.1, "fgrpo": 0.05, "vip": vip_effect})
    for r in manifest["runs"]:
        if r["method"] == "grpo":  # claim a holds in every seed
            rewrite_metric(r["run_dir"], mn.SALT_N_EFF, 4.0 / r["G"] + 0.01 * r["seed"])
            rewrite_metric(r["run_dir"], mn.TRAIN_UPDATE_NORM, 1.0 / r["G"] + 0.02 * r["seed"])
    return manifest


def test_split_claims_measure_each_half_and_find_a_verdict_that_does_not_replicate(tmp_path):
    # VIP helps in replicates 0 and 1 and hurts in 2 and 3: the halves decide opposite verdicts
    manifest = _four_replicates(tmp_path, {0: 0.15, 1: 0.15, 2: -0.15, 3: -0.15})
    a, b = replication.split_claims(manifest)
    assert a["seeds"] == [0, 1] and b["seeds"] == [2, 3] and a["warmups"] == [0, 1]
    whole = aggregate.main(manifest, tmp_path / "tables")
    steps, runs, _, problems, samples = aggregate.load(manifest)
    direct = claims.evaluate_claims(manifest, runs, steps, problems, samples, seeds=[2, 3])
    assert json.dumps(aggregate.nan_to_none(direct), sort_keys=True) == json.dumps(aggregate.nan_to_none(b), sort_keys=True)
    rep = replication.compare(a, b)
    st = {c["id"]: c for c in rep["claims"]}
    assert st["e"]["verdicts"][0] == "holds" and st["e"]["verdicts"][1] != "holds"
    assert st["e"]["status"] == replication.NOT_REPLICATED and st["e"]["parts"][0]["why"]
    assert st["a"]["status"] == replication.REPLICATED
    assert json.loads(whole["claims_json"].read_text())["seeds"] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="overlap"):
        replication.split_claims(manifest, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"seeds \[7\] are not replicates"):
        replication.split_claims(manifest, [[0, 1], [7]])


def test_claims_report_mde_and_components(tmp_path):
    manifest = _four_replicates(tmp_path, 0.0)
    paths = aggregate.main(manifest, tmp_path / "tables")
    result = json.loads(paths["claims_json"].read_text())
    for c in result["claims"]:
        for p in c["parts"]:
            vals = list(p["per_seed"].values())
            assert p["seeds"] == 4 and p["mde80"] == pytest.approx(power.mde(float(np.std(vals, ddof=1)), 4), rel=1e-9)
            assert p["power_reading"]
    e = next(c for c in result["claims"] if c["id"] == "e")["parts"][0]
    comp = e["components"]
    assert comp["warmups"] == 4 and comp["runs"] == 4 and comp["problems"] == 40 and comp["group_sizes"] == 3
    assert math.isnan(comp["var_seed"] if comp["var_seed"] is not None else float("nan"))  # one RL seed per warm-up
    assert comp["var_sample"] > 0  # pass@1 of 4 samples: known sampling variance
    assert result["variance_components"]["method"] == "grpo"
    md = paths["claims_md"].read_text()
    assert "MDE (80% power)" in md and "Variance components" in md and "replicates (RL seed = warm-up seed): 0, 1, 2, 3" in md


def test_cli_fills_the_readme_block(tmp_path, capsys):
    manifest = _four_replicates(tmp_path, 0.1)
    paths = aggregate.main(manifest, tmp_path / "tables")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{replication.BEGIN}\nold typed text\n{replication.END}\n\nafter\n")
    argv = ["replicate", "--manifest", str(paths["manifest"]), "--out", str(tmp_path / "tables"), "--readme", str(readme)]
    assert salt_main(argv) == 0
    text = readme.read_text()
    assert "old typed text" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert "(e) VIP beats uniform allocation at equal budget: **holds**" in text
    assert "Replication (first half = seeds 0,1 vs second half = seeds 2,3): **replicated**" in text
    assert "MDE" in text and "claims block updated" in capsys.readouterr().out
    assert salt_main(argv) == 0 and readme.read_text() == text  # idempotent
    assert "already up to date" in capsys.readouterr().out
    rep = json.loads((tmp_path / "tables" / "replication.json").read_text())
    assert rep["labels"] == ["first half", "second half"]
    # two runs' claims.json compared directly
    assert salt_main(["replicate", "--claims", str(paths["claims_json"]), str(paths["claims_json"]),
                      "--out", str(tmp_path / "two")]) == 0
    assert json.loads((tmp_path / "two" / "replication.json").read_text())["all_agree"] is True
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="no generated claims block"):
        replication.fill_readme(bare, "x")


def test_replicate_config_keeps_the_claims_study_on_disjoint_seeds():
    import yaml

    from salt.figures.replicate_config import replicate_config
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = replicate_config(base, [7, 4, 5, 6])
    assert list(cfg["studies"]) == ["main"] and cfg["studies"]["main"]["seeds"] == [4, 5, 6, 7]
    assert cfg["studies"]["main"]["methods"] == base["studies"]["main"]["methods"]
    assert cfg["results_dir"] == "results/replicate" and cfg["tracking"]["experiment"] == "salt-default-replicate"
    assert cfg["proxy"]["enabled"] is False and base["studies"]["main"]["seeds"] == [0, 1, 2, 3]  # base untouched
    with pytest.raises(ValueError, match=r"disjoint from the base study's \[0, 1, 2, 3\]"):
        replicate_config(base, [3, 4])
    from salt.workflow_config import load_workflow_config

    load_workflow_config(cfg)  # a valid workflow config


def test_mlflow_ui_url_finds_the_experiment_in_the_store(tmp_path):
    import importlib.util
    import sqlite3

    spec = importlib.util.spec_from_file_location("mlflow_ui", REPO / "workflow" / "scripts" / "mlflow_ui.py")
    ui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui)
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
    con.executemany("INSERT INTO experiments VALUES (?, ?, 'active')", [(0, "Default"), (3, "salt-default")])
    con.commit()
    con.close()
    assert ui.experiment_id(db, "salt-default") == "3"
    assert ui.runs_url("127.0.0.1", 5001, "3") == "http://127.0.0.1:5001/#/experiments/3/runs?workflowType=machine_learning"
    assert ui.default_experiment() == "salt-default"
    with pytest.raises(SystemExit, match="no experiment named 'nope'.*Default, salt-default"):
        ui.experiment_id(db, "nope")
    with pytest.raises(SystemExit, match="no MLflow store here"):
        ui.experiment_id(tmp_path / "missing.db", "x")


def test_seed_variance_study_splits_warmup_and_rl_seed(tmp_path):
    studies = {**FOUR, "seedvar": ("seed_variance", ["grpo"], [2, 4], [10, 11, 12], 4, None)}
    manifest = make_runs(tmp_path / "results", studies=studies, gram=False, duplicate_step=False,
                         evaluated=("main", "seed_variance"))
    for r in manifest["runs"]:
        r["warmup"] = 0 if r["study"] == "seedvar" else r["seed"]
    result = json.loads(aggregate.main(manifest, tmp_path / "tables")["claims_json"].read_text())
    split = result["variance_split"]
    assert split["study"] == "seedvar" and split["group_sizes"] == [2, 4]
    assert split["rl_seeds"] == 3 and split["warmups_of_seed_study"] == 1 and split["replicates"] == 4
    # brute force: the estimator on the seed study's own runs (one warm-up: all run variance is RL seed), per G
    _, runs, _, problems, samples = aggregate.load(manifest)
    per_g = []
    for G in (2, 4):
        rows = [{"warmup": 0, "seed": s, "problem": pid, "value": v, "sample_var": None}
                for s, per in problems[("seedvar", "toy", "toy", "grpo", G, "toy_test")].items()
                for pid, v in per["pass@1"].items()]
        per_g.append(power.variance_components(rows).var_seed)
    assert split["var_seed"] == pytest.approx(float(np.mean(per_g)), rel=1e-9)
    assert split["var_warmup"] == pytest.approx(split["var_warmup_plus_seed"] - split["var_seed"], rel=1e-9)
    assert result["variance_components"]["warmups"] == 4  # the main study's replicates, untouched by the split
    md = (tmp_path / "tables" / "claims.md").read_text()
    assert "Warm-up vs RL seed (grpo pass@1, G = [2, 4])" in md and "3 RL seeds on one warm-up" in md
