"""aggregate + figures + report on synthetic run folders (pure functions, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from salt.figures import aggregate, figures, report
from tests.workflow.synthetic import STUDIES, make_runs


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [0.3, 0.31], [5.0, 1.0, 2.0, 9.0, 3.5]])
def test_mean_ci_matches_scipy_t_interval(values):
    mean, half, n = aggregate.mean_ci(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert n == len(values)
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx((hi - lo) / 2, rel=1e-10)


def test_mean_ci_degenerate():
    assert aggregate.mean_ci([2.0])[0] == 2.0 and math.isnan(aggregate.mean_ci([2.0])[1])
    mean, half, n = aggregate.mean_ci([float("nan"), None])
    assert n == 0 and math.isnan(mean) and math.isnan(half)


def test_read_metrics_keeps_last_row_of_a_repeated_step(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 1, "a": 3}\n')
    rows = aggregate.read_metrics(p)
    assert [r["a"] for r in rows] == [1, 3]
    with pytest.raises(FileNotFoundError, match="did not log metrics"):
        aggregate.read_metrics(tmp_path / "missing.jsonl")


@pytest.fixture()
def tables(tmp_path):
    manifest = make_runs(tmp_path / "results")
    paths = aggregate.main(manifest, tmp_path / "tables")
    return manifest, paths, tmp_path


def test_tables_shape_and_values(tables):
    manifest, paths, _ = tables
    n_runs = len(manifest["runs"])
    runs = aggregate.read_csv(paths["runs"])
    steps = aggregate.read_csv(paths["steps"])
    assert len(runs) == n_runs
    assert len(steps) == n_runs * 6  # the repeated step is deduplicated
    table = aggregate.read_csv(paths["results"])
    expected_groups = sum(len(m) * len(g) for _, m, g, *_ in STUDIES.values())
    assert len(table) == expected_groups
    row = next(r for r in table if r["study"] == "main" and r["method"] == "grpo_salt" and r["G"] == 4)
    accs = [0.3 + 0.1 * s for s in (0, 1, 2)]
    mean, half, _ = aggregate.mean_ci(accs)
    assert row["seeds"] == 3
    assert row["pass@1_mean"] == pytest.approx(mean, abs=1e-6)
    assert row["pass@1_ci95"] == pytest.approx(half, abs=1e-6)
    assert row["pass@4_mean"] == pytest.approx(mean + 0.15, abs=1e-6)
    assert row["rollouts_used"] == pytest.approx(4 * 4 * 6)  # per-step counts summed over the 6 distinct steps
    assert row["wall_time_s"] == pytest.approx(0.5 * 6)  # deduplicated steps
    # final reward = mean of the last 3 steps, the last one replaced by the resumed row (0.99)
    r = next(r for r in runs if r["study"] == "main" and r["method"] == "grpo" and r["G"] == 2 and r["seed"] == 0)
    assert r["final_reward"] == pytest.approx((0.3 + 0.4 + 0.99) / 3)
    assert r["gram_file"].endswith("gram_step_0001.npz")
    budget = [r for r in runs if r["study"] == "budget"]
    assert {(r["G"], r["prompts_per_step"]) for r in budget} == {(2, 4), (4, 2)}
    md = paths["results_md"].read_text()
    assert md.count("\n| main |") == 8 and "±" in md and "pass@4" in md


def test_missing_eval_is_a_clear_error(tmp_path):
    manifest = make_runs(tmp_path / "results")
    manifest["runs"][0]["evals"]["toy_test"] = str(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        aggregate.main(manifest, tmp_path / "tables")


def test_cosine_gram_against_brute_force():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 3))
    X[2] = 0.0
    K = X @ X.T
    C = figures.cosine_gram(K)
    for i in range(6):
        for j in range(6):
            ni, nj = np.linalg.norm(X[i]), np.linalg.norm(X[j])
            ref = 0.0 if ni == 0 or nj == 0 else X[i] @ X[j] / (ni * nj)
            assert C[i, j] == pytest.approx(ref, abs=1e-12)


def test_figures_and_report_files(tables):
    manifest, paths, tmp = tables
    out = tmp / "figs"
    written = figures.main(tmp / "tables", out)
    names = {p.name for p in written}
    for name in figures.FIGURES:
        assert f"{name}.png" in names and f"{name}.pdf" in names
        assert (out / f"{name}.png").stat().st_size > 5000
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    html_path = report.main([out / f"{n}.png" for n in figures.FIGURES], tmp / "caps", paths["results_md"],
                            paths["manifest"], tmp / "report.html", title="T")
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") == len(figures.FIGURES)
    assert "<table>" in text and "grpo_salt".upper() in text


def test_figures_without_optional_data(tmp_path):
    manifest = make_runs(tmp_path / "results", gram=False)
    manifest["proxy"] = {}
    manifest["runs"] = [r for r in manifest["runs"] if r["study"] == "main"]
    aggregate.main(manifest, tmp_path / "tables")
    written = figures.main(tmp_path / "tables", tmp_path / "figs")
    assert len(written) == 2 * len(figures.FIGURES)


def test_markdown_to_html_table():
    html = report.markdown_table_to_html("| a | b |\n|---|---|\n| 1 | 2 |\n\nnote\n")
    assert "<th>a</th>" in html and "<td>2</td>" in html and "<p>note</p>" in html
