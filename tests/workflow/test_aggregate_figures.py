"""aggregate + figures + report on synthetic run folders (pure functions, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from salt import gram_dump
from salt.algo.decomposition import SaltConfig
from salt.figures import aggregate, figures, report
from tests.workflow.synthetic import STUDIES, make_runs, write_gram_dump


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


def _problems(path):
    import json
    from pathlib import Path

    return {r["id"]: r["correct"] for r in map(json.loads, (Path(path).parent / "problems.jsonl").read_text().splitlines())}


def test_tables_shape_and_values(tables):
    manifest, paths, _ = tables
    n_runs = len(manifest["runs"])
    runs = aggregate.read_csv(paths["runs"])
    steps = aggregate.read_csv(paths["steps"])
    assert len(runs) == n_runs
    assert len(steps) == n_runs * 6  # the repeated step is deduplicated
    table = aggregate.read_csv(paths["results"])
    _, methods, gs, seeds, *_ = STUDIES["main"]
    assert len(table) == len(methods) * len(gs)  # only the main study lists a benchmark
    row = next(r for r in table if r["study"] == "main" and r["method"] == "grpo_salt" and r["G"] == 4)
    evals = {s: next(r for r in manifest["runs"] if r["study"] == "main" and r["method"] == "grpo_salt"
                     and r["G"] == 4 and r["seed"] == s)["evals"]["toy_test"] for s in seeds}
    # brute force from problems.jsonl: pass@1 = mean correctness, pass@4 (n = 4) = any correct
    acc1 = [np.mean([np.mean(c) for c in _problems(evals[s]).values()]) for s in seeds]
    acc4 = [np.mean([float(any(c)) for c in _problems(evals[s]).values()]) for s in seeds]
    mean, half, _ = aggregate.mean_ci(acc1)
    assert row["seeds"] == 3
    assert row["pass@1_mean"] == pytest.approx(mean, abs=1e-6)
    assert row["pass@1_ci95"] == pytest.approx(half, abs=1e-6)
    assert row["pass@4_mean"] == pytest.approx(np.mean(acc4), abs=1e-6)
    assert row["rollouts_used"] == pytest.approx(4 * 4 * 6)  # the cumulative count at the last step
    assert row["wall_time_s"] == pytest.approx(0.5 * 6)  # deduplicated steps
    # final reward = mean of the last 3 steps, the last one replaced by the resumed row (0.99)
    r = next(r for r in runs if r["study"] == "main" and r["method"] == "grpo" and r["G"] == 2 and r["seed"] == 0)
    assert r["final_reward"] == pytest.approx((0.3 + 0.4 + 0.99) / 3)
    assert r["gram_file"].endswith("gram_step_0006.npz")  # the latest dump with a non-zero advantage (0007: all 0)
    budget = [r for r in runs if r["study"] == "budget"]
    assert {(r["G"], r["prompts_per_step"]) for r in budget} == {(2, 4), (4, 2)}
    md = paths["results_md"].read_text()
    assert md.count("\n| main |") == 8 and "±" in md and "pass@4" in md and "Δ pass@1 vs grpo" in md


def test_paired_difference_columns_against_brute_force(tables):
    from scipy import stats as sps

    manifest, paths, _ = tables
    table = aggregate.read_csv(paths["results"])
    _, _, gs, seeds, *_ = STUDIES["main"]

    def ev(method, G, s):
        return _problems(next(r for r in manifest["runs"] if r["study"] == "main" and r["method"] == method
                              and r["G"] == G and r["seed"] == s)["evals"]["toy_test"])

    for G in gs:
        assert next(r for r in table if r["method"] == "grpo" and r["G"] == G)["diff_pass@1_mean"] is None
        row = next(r for r in table if r["method"] == "dapo_salt" and r["G"] == G)
        for metric, k in (("pass@1", 1), ("pass@4", 4)):
            per_seed = []
            for s in seeds:
                a, b = ev("dapo_salt", G, s), ev("grpo", G, s)
                f = (lambda c: np.mean(c)) if k == 1 else (lambda c: float(any(c)))
                per_seed.append(np.mean([f(a[p]) - f(b[p]) for p in a]))
            ci = sps.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
            assert row[f"diff_{metric}_mean"] == pytest.approx(np.mean(per_seed), abs=1e-6)
            assert row[f"diff_{metric}_ci95"] == pytest.approx((ci.high - ci.low) / 2, abs=1e-6)
        assert row["diff_seeds"] == 3 and row["diff_problems"] == 40 and row["diff_baseline"] == "grpo"
        assert row["diff_pass@1_mean"] > 0.05  # the synthetic effect of a SALT method is +0.1 in probability


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
    caps = tmp / "caps"
    caps.mkdir()
    (caps / "toy_task.rst").write_text("The **toy** task.\n")
    (tmp / "README.md").write_text("# readme\n")
    html_path = report.main([out / f"{n}.png" for n in figures.FIGURES], caps, paths["results_md"],
                            paths["manifest"], tmp / "site" / "report.html", title="T",
                            claims_md=paths["claims_md"], readme=tmp / "README.md")
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") == len(figures.FIGURES)
    assert "<table>" in text and "grpo_salt".upper() in text
    assert "<h2>Claims</h2>" in text and "Verdict rule" in text and "(b) SALT raises PR" in text
    assert "<p>The <b>toy</b> task.</p>" in text
    assert "href='../README.md#the-embedded-toy-task-why-rl-can-learn-it'" in text
    assert "How the intervals are computed" in text and "unit of replication is the training seed" in text
    assert text.index("Claims") < text.index("Results table") < text.index("Figures")
    for study in ("budget", "ablation", "focal"):  # no held-out evaluation: their training tables
        assert f"Study {study} (no held-out evaluation)" not in text  # no study_tables in this manifest


def test_report_shows_the_training_tables_of_unevaluated_studies(tmp_path):
    manifest = make_runs(tmp_path / "results")
    manifest["study_tables"] = {s: {"md": str(tmp_path / "results" / s / "table.md"),
                                    "csv": str(tmp_path / "results" / s / "table.csv")} for s in STUDIES}
    paths = aggregate.main(manifest, tmp_path / "tables")
    figures.main(tmp_path / "tables", tmp_path / "figs")
    text = report.main([tmp_path / "figs" / f"{n}.png" for n in figures.FIGURES], tmp_path, paths["results_md"],
                       paths["manifest"], tmp_path / "report.html", claims_md=paths["claims_md"]).read_text()
    for study in ("budget", "ablation", "focal"):
        assert f"Study {study} (no held-out evaluation)" in text
    assert "Study main (no held-out evaluation)" not in text
    assert "FGRPO_GAMMA2" in text  # the gamma sweep's table


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
    two = report.markdown_table_to_html("| a |\n|---|\n| 1 |\n\nbetween\n\n| b |\n|---|\n| 2 |\n")
    assert two.count("<table>") == 2 and two.index("<th>a</th>") < two.index("<p>between</p>") < two.index("<th>b</th>")


def test_study_tables(tmp_path):
    manifest = make_runs(tmp_path / "results")
    manifest["study_tables"] = {s: {"md": str(tmp_path / "results" / s / "table.md"),
                                    "csv": str(tmp_path / "results" / s / "table.csv")} for s in STUDIES}
    aggregate.main(manifest, tmp_path / "tables")
    main = aggregate.read_csv(tmp_path / "results" / "main" / "table.csv")
    assert {r["study"] for r in main} == {"main"} and len(main) == 4 * 2  # methods x G, one benchmark
    assert "pass@1" in (tmp_path / "results" / "main" / "table.md").read_text()
    # a study without evaluation rows gets its training table: final reward over seeds
    budget = aggregate.read_csv(tmp_path / "results" / "budget" / "table.csv")
    assert len(budget) == 2 * 2 and all(r["seeds"] == 1 for r in budget)
    runs = aggregate.read_csv(tmp_path / "tables" / "runs.csv")
    ref = next(r for r in runs if r["study"] == "budget" and r["method"] == "grpo" and r["G"] == 4)
    row = next(r for r in budget if r["method"] == "grpo" and r["G"] == 4)
    assert row["final_train_reward_mean"] == pytest.approx(ref["final_reward"], abs=1e-6)
    assert "final train reward" in (tmp_path / "results" / "budget" / "table.md").read_text()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("opts", [{}, {"rho": 0.5, "k_max": 3}, {"k_fixed": 5}, {"k_min": 4}])
def test_figure_gram_numbers_are_the_algorithms(tmp_path, seed, opts):
    """Figure 1's k and cosine Gram are the algorithm's: the run's SaltConfig read back from its
    config.resolved.yaml, decompose's k, gram_metrics' cosine Gram."""
    import torch
    import yaml

    from salt.algo.decomposition import SaltConfig, decompose
    from salt.algo.gram_metrics import cosine_gram

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(8, 3 + seed))
    K = X @ X.T / 8
    A = rng.normal(size=8)
    run = {"algorithm": {"salt": {"enabled": True, "scope": "global", "gram": "auto", **opts}}}
    (tmp_path / "config.resolved.yaml").write_text(yaml.safe_dump(run))
    cfg = figures.salt_config(tmp_path)
    assert cfg == SaltConfig(**opts)
    assert figures.subspace_k(K, cfg) == decompose(torch.from_numpy(K), torch.from_numpy(A), SaltConfig(**opts)).k
    gram_dump.write(gram_dump.path_of(tmp_path, 1), K, A, A, np.arange(8))
    b = figures.gram_batch(tmp_path / "gram_step_0001.npz", cfg)
    assert b["k"] == decompose(torch.from_numpy(K), torch.from_numpy(A), SaltConfig(**opts)).k
    assert np.array_equal(b["cosine"], cosine_gram(torch.from_numpy(K)).numpy())
    assert figures.salt_config(tmp_path / "absent") == SaltConfig()


def test_gram_batch_orders_by_group(tmp_path):
    rng = np.random.default_rng(3)
    raw = write_gram_dump(tmp_path / "gram_step_0002.npz", G=4, P=3, rng=rng, salt=True)
    b = figures.gram_batch(tmp_path / "gram_step_0002.npz", SaltConfig(rho=1.0))
    g = raw["group_ids"][b["order"]]
    assert list(g) == sorted(g) and b["boundaries"] == [4, 8]
    for i in range(12):  # brute force: entry (i, j) of the ordered Gram is the raw entry of the same rollouts
        for j in range(12):
            assert b["gram"][i, j] == raw["gram"][b["order"][i], b["order"][j]]
            assert b["cosine"][i, j] == pytest.approx(
                raw["gram"][b["order"][i], b["order"][j]]
                / np.sqrt(raw["gram"][b["order"][i], b["order"][i]] * raw["gram"][b["order"][j], b["order"][j]]))
    assert np.allclose(b["advantages"], raw["advantages"][b["order"]])
    assert np.allclose(b["advantages_final"], raw["advantages_final"][b["order"]])
    assert np.all(np.diff(b["eigenvalues"]) <= 1e-12)
    assert np.allclose(np.sort(b["eigenvalues"]), np.linalg.eigvalsh(raw["gram"]))
    assert b["k"] == figures.subspace_k(raw["gram"])
    assert b["rewards"] is not None and np.allclose(b["rewards"], raw["rewards"][b["order"]])


def test_fig1_draws_both_runs_and_the_coefficients(tables):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, paths, tmp = tables
    t = figures.Tables(tmp / "tables")
    picked = figures._pick_gram_runs(t, "grpo", "grpo_salt")
    assert {(r["study"], r["G"], r["seed"]) for r in picked.values()} == {("main", 4, 0)}  # same batch size
    fig = plt.figure(figsize=figures.figure_spec("fig1_gram").size, layout="constrained")
    figures.fig1_gram(t, fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(s.startswith("GRPO: cosine Gram, G=4, step 6") for s in titles)
    assert any(s.startswith("GRPO_SALT: cosine Gram, G=4, step 6") for s in titles)
    spectrum = next(ax for ax in fig.axes if ax.get_title().startswith("eigen-spectrum"))
    assert spectrum.get_yscale() == "log"
    assert sum("k = " in text.get_text() for text in spectrum.get_legend().get_texts()) == 2
    coef = next(ax for ax in fig.axes if "before and after SALT" in ax.get_title())
    assert len(coef.patches) == 2 * 16  # A and A_final bars for the B = 4 x 4 rollouts
    plt.close(fig)


def _drawn(tables_dir, name):
    """(Tables, the matplotlib figure ``name`` drawn from them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = figures.Tables(tables_dir)
    spec = figures.figure_spec(name)
    fig = plt.figure(figsize=spec.size, layout="constrained")
    spec.draw()(t, fig)
    return t, fig


def test_fig2_panels_and_readme_figure(tables):
    import matplotlib.pyplot as plt

    from salt.figures.claims import ClaimsOptions

    _, paths, tmp = tables
    _, fig = _drawn(tmp / "tables", "fig2_dynamics")
    acc, held, pr, neff = fig.axes[:4]
    assert acc.get_ylabel() == ClaimsOptions().curve_metric and "G=4" in acc.get_title()
    assert len(acc.get_lines()) == 4  # every method of the study
    assert len(held.patches) == 4 and held.get_ylabel() == "held-out pass@1 (toy_test)"
    # the bar heights are the table's means at the largest G
    table = {r["method"]: r for r in aggregate.read_csv(paths["results"]) if r["G"] == 4}
    assert [p.get_height() for p in held.patches] == pytest.approx(
        [table[m]["pass@1_mean"] for m in ("grpo", "grpo_salt", "dapo", "dapo_salt")], abs=1e-6)
    assert sum("±" in a.get_text() for a in held.texts) == 3  # paired Δ in every bar but the baseline's
    assert "participation ratio" in pr.get_title() and "coefficients the loss used" in neff.get_title()
    # SALT runs draw n_eff_final, baselines n_eff: the synthetic n_eff_final is ~0.3 larger
    ys = {line.get_label(): line.get_ydata().mean() for line in neff.get_lines()}
    assert ys["GRPO_SALT"] > ys["GRPO"]
    plt.close(fig)
    from salt.figures.figures import cli_main

    assert cli_main(["--tables", str(tmp / "tables"), "--readme-figure", str(tmp / "ex.png")]) == 0
    assert (tmp / "ex.png").read_bytes()[:4] == b"\x89PNG"


def test_fig3_draws_the_gamma_sweep(tables):
    import matplotlib.pyplot as plt

    _, _, tmp = tables
    t, fig = _drawn(tmp / "tables", "fig3_ablations")
    ax = next(a for a in fig.axes if a.get_title().startswith("F-GRPO gamma sweep"))
    assert ax.get_title() == "F-GRPO gamma sweep (G=4)"
    runs = {r["method"]: r["final_reward"] for r in t.runs if r["study"] == "focal"}
    assert [p.get_height() for p in ax.patches] == pytest.approx([runs[m] for m in ("fgrpo_gamma0.5", "fgrpo", "fgrpo_gamma2")])
    plt.close(fig)


def test_problem_interval_against_brute_force():
    rng = np.random.default_rng(3)
    one = {f"p{i}": float(rng.random()) for i in range(30)}
    x = np.array(list(one.values()))
    assert aggregate.problem_interval([one]) == pytest.approx(stats.t.ppf(0.975, 29) * x.std(ddof=1) / np.sqrt(30))
    two = {f"p{i}": float(rng.random()) for i in range(30)}
    y = np.array(list(two.values()))
    se = np.sqrt(x.var(ddof=1) / 30 + y.var(ddof=1) / 30) / 2
    assert aggregate.problem_interval([one, two]) == pytest.approx(stats.t.ppf(0.975, 29) * se)
    assert np.isnan(aggregate.problem_interval([{"p": 1.0}]))


def test_fig3_uses_held_out_pass1_with_intervals(tmp_path):
    import matplotlib.pyplot as plt

    studies = {k: v for k, v in STUDIES.items() if k in ("main", "ablation", "focal", "budget")}
    manifest = make_runs(tmp_path / "results", studies=studies, gram=False,
                         evaluated=("main", "ablation", "focal_sweep", "scaling_budget"))
    aggregate.main(manifest, tmp_path / "tables")
    t, fig = _drawn(tmp_path / "tables", "fig3_ablations")
    res = {(r["study"], r["method"], int(r["G"])): r for r in t.results}
    ax = next(a for a in fig.axes if a.get_title().startswith("F-GRPO gamma sweep"))
    methods = ("fgrpo_gamma0.5", "fgrpo", "fgrpo_gamma2")
    assert [p.get_height() for p in ax.patches] == pytest.approx([res[("focal", m, 4)]["pass@1_mean"] for m in methods])
    assert ax.get_ylabel() == "held-out pass@1 (95% interval over problems)"  # one seed: the evaluation's interval
    segs = [c for c in ax.collections if hasattr(c, "get_segments")]
    halves = [abs(s[1][1] - s[0][1]) / 2 for s in segs[0].get_segments()]
    assert halves == pytest.approx([res[("focal", m, 4)]["pass@1_ci95_problems"] for m in methods])
    assert all(h > 0 for h in halves)
    abl = next(a for a in fig.axes if a.get_title().startswith("fixed vs adaptive alpha"))
    assert abl.get_xlabel() == "held-out pass@1 (95% interval over problems)"
    budget = next(a for a in fig.axes if a.get_title().startswith("fixed rollout budget"))
    assert budget.get_ylabel() == "held-out pass@1 (95% interval over problems)"
    plt.close(fig)
    # with >= 2 seeds the interval is the t-interval over seeds
    mean, half, over = figures.heldout(t, "main", "grpo", 2)
    assert over == "seeds" and half == pytest.approx(res[("main", "grpo", 2)]["pass@1_ci95"])


def test_one_figure_table_for_every_layer():
    """salt/figures/registry.py: each entry's drawer is the function of its name, its caption file exists,
    the workflow declares exactly these figures, and an unknown name is refused naming the known ones."""
    from pathlib import Path

    from salt.figures import registry

    repo = Path(__file__).resolve().parents[2]
    assert len(set(registry.FIGURES)) == len(registry.FIGURE_SPECS) == 7
    for spec in registry.FIGURE_SPECS:
        assert spec.draw().__name__ == spec.name and len(spec.size) == 2
        assert (repo / "workflow" / "report" / spec.caption).stat().st_size > 100
    assert figures.FIGURES is registry.FIGURES
    rules = (repo / "workflow" / "rules" / "analysis.smk").read_text()
    assert "for fig in FIGURE_SPECS" in rules
    with pytest.raises(ValueError, match="unknown figure 'fig9'; known: fig1_gram, "):
        registry.figure_spec("fig9")
