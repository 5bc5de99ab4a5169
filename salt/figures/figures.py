"""Figures 1-7 of pipeline.md from the aggregated tables (PNG + PDF, matplotlib Agg).

Every figure is drawn from what the runs logged (``results/tables/*.csv``, the Gram dump of one
batch, ``proxy.json``); nothing is recomputed. A figure whose data is absent from the config (e.g.
no ablation study) is still written, with a note saying which study or file would fill it.

``salt figures --tables DIR --out DIR`` is the command line.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from salt import gram_dump
from salt import metric_names as mn
from salt.figures.ablations import fig3_ablations, heldout  # noqa: F401 (Figure 3 lives there)
from salt.figures.aggregate import read_csv
from salt.figures.claims import ClaimsOptions
from salt.figures.registry import (FIGURE_FORMATS, FIGURE_SPECS, FIGURES, FigureSpec,  # noqa: F401 (the one table)
                                   figure_spec, table_paths)
from salt.figures.stats import moving_average
from salt.train.outputs import run_files

if TYPE_CHECKING:
    from salt.algo.decomposition import SaltConfig



class Tables:
    """The aggregated tables plus the manifest, with small query helpers."""

    def __init__(self, tables_dir: str | Path):
        files = table_paths(tables_dir)  # the names salt aggregate writes
        self.steps = read_csv(files["steps"])
        self.runs = read_csv(files["runs"])
        self.evals = read_csv(files["evals"])
        self.results = read_csv(files["results"])
        self.manifest = json.loads(files["manifest"].read_text())
        self.options = self.manifest.get("figures", {})
        self.labels = {r["method"]: r["label"] for r in self.manifest["runs"]}

    def studies(self, kind: str) -> list[str]:
        seen: list[str] = []
        for r in self.manifest["runs"]:
            if r["kind"] == kind and r["study"] not in seen:
                seen.append(r["study"])
        return seen

    def runs_of(self, study: str | None, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.runs if (study is None or r["study"] == study)
                and all(str(r.get(k)) == str(v) for k, v in match.items())]

    def methods_of(self, study: str) -> list[str]:
        out: list[str] = []
        for r in self.manifest["runs"]:
            if r["study"] == study and r["method"] not in out:
                out.append(r["method"])
        return out

    def label(self, method: str) -> str:
        return str(self.labels.get(method, method))


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, color="0.35", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _by_g(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G values, mean over runs, min-max error bars of shape (2, n)) of ``key`` for runs grouped by G."""
    groups: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None and not math.isnan(float(r[key])):
            groups[int(r["G"])].append(float(r[key]))
    gs = sorted(groups)
    mean = np.array([np.mean(groups[g]) for g in gs])
    err = np.array([[np.mean(groups[g]) - min(groups[g]) for g in gs], [max(groups[g]) - np.mean(groups[g]) for g in gs]])
    return np.array(gs), mean, np.clip(err.reshape(2, len(gs)), 0.0, None)  # float round-off never goes below 0


def _spread(values: Sequence[float]) -> tuple[float, list[float]]:
    """Mean and [mean - min, max - mean] of ``values`` (NaNs dropped) for bar charts over seeds."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return float("nan"), [0.0, 0.0]
    m = float(np.mean(xs))
    return m, [max(0.0, m - min(xs)), max(0.0, max(xs) - m)]


# ------------------------------------------------------------------------- Figure 1


def cosine_gram(K: np.ndarray) -> np.ndarray:
    """The algorithm's cosine Gram (:func:`salt.algo.gram_metrics.cosine_gram`) of a numpy K (B, B) -> (B, B)."""
    import torch

    from salt.algo import gram_metrics

    return gram_metrics.cosine_gram(torch.from_numpy(np.asarray(K, dtype=np.float64))).numpy()


def salt_config(run_dir: str | Path) -> SaltConfig:
    """The run's SALT settings (``algorithm.salt`` of its ``config.resolved.yaml``) as the algorithm's
    :class:`~salt.algo.decomposition.SaltConfig`; its defaults where the file is absent."""
    from salt.algo.decomposition import SaltConfig

    path = run_files(run_dir)["config"]
    if not path.exists():
        return SaltConfig()
    import dataclasses

    import yaml

    salt = ((yaml.safe_load(path.read_text()) or {}).get("algorithm") or {}).get("salt") or {}
    names = {f.name for f in dataclasses.fields(SaltConfig)}
    return SaltConfig(**{k: v for k, v in salt.items() if k in names})


def subspace_k(K: np.ndarray, cfg: SaltConfig | None = None) -> int:
    """SALT's subspace size k for Gram ``K`` (B, B), B >= 2: :func:`salt.algo.decomposition.subspace_size`."""
    import torch

    from salt.algo.decomposition import subspace_size

    return subspace_size(torch.from_numpy(np.asarray(K, dtype=np.float64)), cfg)


def gram_batch(path: str | Path, salt: SaltConfig | None = None) -> dict[str, Any]:
    """One Gram dump (:func:`salt.gram_dump.read`), rollouts ordered by prompt group, ready to draw.

    Returns ``order`` (B,) (stable sort of ``group_ids``), ``gram`` (B, B) and ``cosine`` (B, B) in
    that order, ``eigenvalues`` (B,) of K descending, ``k`` (the subspace size SALT picks for this K
    with ``salt``, default settings when None), ``boundaries`` (first row of each group after the
    first), ``advantages`` / ``advantages_final`` (B,) in that order, and ``rewards`` (B,) in that
    order or None (the dump's optional array).
    """
    data = gram_dump.read(path)
    K = np.asarray(data["gram"], dtype=float)
    B = K.shape[0]
    order = np.argsort(data["group_ids"], kind="stable")
    Ko = K[np.ix_(order, order)]  # (B, B) rows and columns by group
    out: dict[str, Any] = {"order": order, "gram": Ko, "cosine": cosine_gram(Ko),
                           "eigenvalues": np.sort(np.linalg.eigvalsh((K + K.T) / 2))[::-1],
                           "k": subspace_k(K, salt) if B >= 2 else 0}
    g = data["group_ids"][order]
    out["boundaries"] = [i for i in range(1, B) if g[i] != g[i - 1]]
    for key in ("advantages", "advantages_final", "rewards"):
        out[key] = np.asarray(data[key], dtype=float)[order] if key in data else None
    return out


def _pick_gram_runs(t: Tables, base: str, salt: str) -> dict[str, dict[str, Any]]:
    """The baseline's and the SALT method's runs with a Gram dump, at the same (study, G, seed) when possible
    (main study first, then the largest G, then the lowest seed)."""
    def rank(r: dict[str, Any]) -> tuple:
        return (r["kind"] != "main", -int(r["G"]), int(r["seed"]), str(r["study"]))

    cands = {m: sorted((r for r in t.runs if r["method"] == m and r.get("gram_file")), key=rank) for m in (base, salt)}
    shared = [r for r in cands[base] if any((s["study"], s["G"], s["seed"]) == (r["study"], r["G"], r["seed"]) for s in cands[salt])]
    if shared:
        b = shared[0]
        return {base: b, salt: next(s for s in cands[salt] if (s["study"], s["G"], s["seed"]) == (b["study"], b["G"], b["seed"]))}
    return {m: rs[0] for m, rs in cands.items() if rs}


def fig1_gram(t: Tables, fig) -> None:
    """Top: cosine Gram of one batch (baseline, SALT) and both eigen-spectra with SALT's k marked;
    bottom: the SALT run's coefficients before (A) and after (A_final) SALT, per rollout and as a scatter."""
    from matplotlib.ticker import MaxNLocator

    base, salt = t.options.get("baseline", "grpo"), t.options.get("salt_method", "grpo_salt")
    axes = fig.subplots(2, 3, height_ratios=[1.25, 1.0])
    picked = _pick_gram_runs(t, base, salt)
    batches: dict[str, dict[str, Any]] = {}
    colors = {base: "tab:blue", salt: "tab:red"}
    for ax, method in zip(axes[0, :2], (base, salt)):
        run = picked.get(method)
        if run is None:
            _note(ax, f"{t.label(method)}:\nno Gram dump ({gram_dump.PATTERN}) with a non-zero advantage\n"
                      "in its run dirs; list more steps in run.train.dump_gram_steps")
            continue
        b = gram_batch(run["gram_file"], salt_config(run["run_dir"]))
        batches[method] = b
        step = gram_dump.step_of(run["gram_file"])
        im = ax.imshow(b["cosine"], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{t.label(method)}: cosine Gram, G={run['G']}, step {step}", fontsize=9)
        ax.set_xlabel("rollout (ordered by prompt group)")
        ax.set_ylabel("rollout")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for edge in b["boundaries"]:  # prompt-group boundaries
            ax.axhline(edge - 0.5, color="k", lw=0.5)
            ax.axvline(edge - 0.5, color="k", lw=0.5)
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[0, 2]
    if batches:
        for method, b in batches.items():
            eig = b["eigenvalues"]
            ax.semilogy(np.arange(1, len(eig) + 1), np.clip(eig, 1e-12, None), marker="o", ms=3,
                        color=colors[method], label=t.label(method))
            if b["k"] >= 1:
                ax.axvline(b["k"] + 0.5, color=colors[method], ls="--", lw=1, label=f"{t.label(method)}: k = {b['k']}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("eigenvalue of K (log)")
        ax.set_title("eigen-spectrum of K (dashed: SALT's k)", fontsize=9)
        ax.legend(fontsize=7)
    else:
        _note(ax, "no spectrum:\nno run wrote a Gram dump")
    b = batches.get(salt)
    if b is None:
        for ax in axes[1]:
            _note(ax, f"{t.label(salt)}: no Gram dump to show the coefficients of")
        return
    gs = axes[1, 0].get_subplotspec().get_gridspec()
    axes[1, 0].remove()
    axes[1, 1].remove()
    ax = fig.add_subplot(gs[1, 0:2])
    x = np.arange(len(b["advantages"]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.bar(x - 0.2, b["advantages"], width=0.4, color="0.6", label="A (group-relative)")
    ax.bar(x + 0.2, b["advantages_final"], width=0.4, color=colors[salt], label="A_final (after SALT)")
    for edge in b["boundaries"]:
        ax.axvline(edge - 0.5, color="k", lw=0.5)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("rollout (ordered by prompt group)")
    ax.set_ylabel("coefficient")
    ax.set_title(f"{t.label(salt)}: coefficients of the same batch before and after SALT", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    a, af = b["advantages"], b["advantages_final"]
    ax.scatter(a, af, s=12, color=colors[salt])
    lim = float(np.nanmax(np.abs(np.concatenate([a, af])))) * 1.1 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8, ls=":", label="A_final = A")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("A")
    ax.set_ylabel("A_final")
    ax.set_title("per-rollout reweighting", fontsize=9)
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------- Figure 2


def _curves(t: Tables, study: str, G: int, method: str, key: str, smooth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    per_seed: dict[int, dict[int, float]] = defaultdict(dict)
    for s in t.steps:
        if s["study"] == study and s["method"] == method and int(s["G"]) == G and s.get(key) is not None:
            per_seed[int(s["seed"])][int(s["step"])] = float(s[key])
    if not per_seed:
        return None
    steps = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    if not steps:
        return None
    Y = np.array([moving_average(np.array([per_seed[sd][st] for st in steps]), smooth) for sd in sorted(per_seed)])
    return np.array(steps), Y.mean(0), Y.min(0), Y.max(0)


def _draw_curves(ax, t: Tables, study: str, G: int, methods: Sequence[str], key_of: Callable[[str], str],
                 colors: Mapping[str, Any]) -> bool:
    """Mean over seeds (line) and min-max band of ``key_of(method)`` per step; False when nothing was logged."""
    drawn = False
    for m in methods:
        c = _curves(t, study, G, m, key_of(m), int(t.options.get("smooth", 1)))
        if c is None:
            continue
        x, mean, lo, hi = c
        ax.plot(x, mean, "-" if "salt" in m else "--", color=colors[m], label=t.label(m))
        ax.fill_between(x, lo, hi, color=colors[m], alpha=0.12)
        drawn = True
    return drawn


def fig2_dynamics(t: Tables, fig) -> None:
    """Main study at its largest G: (a) sampled accuracy per step of every method, (b) held-out accuracy
    at the end (mean and 95% interval over seeds), (c) PR and (d) n_eff of the coefficients the loss used,
    GRPO and DAPO with and without SALT."""
    axes = fig.subplots(2, 2).ravel()
    mains = t.studies("main")
    if not mains:
        for ax in axes:
            _note(ax, "no study of kind 'main' in the config")
        return
    study = mains[0]
    opts = ClaimsOptions.from_manifest(t.manifest)
    G = max(int(r["G"]) for r in t.runs_of(study))
    methods = t.methods_of(study)
    pairs = [m for s, b in opts.salt_pairs.items() for m in (b, s) if m in methods]
    colors = _colors(methods)
    smooth = int(t.options.get("smooth", 1))
    ax = axes[0]
    if _draw_curves(ax, t, study, G, methods, lambda m: opts.curve_metric, colors):
        ax.set_xlabel("step")
        ax.set_ylabel(opts.curve_metric)
        ax.set_title(f"sampled accuracy (T = rollout temperature) on the RL prompts, G={G}"
                     + (f", moving average {smooth}" if smooth > 1 else ""), fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    else:
        _note(ax, f"'{opts.curve_metric}' was not logged (report.claims.curve_metric)")
    ax = axes[1]
    res = [r for r in t.results if r["study"] == study and int(r["G"]) == G]
    metric = opts.accuracy
    if res and any(r.get(f"{metric}_mean") is not None for r in res):
        bench = res[0]["benchmark"]
        rows = {r["method"]: r for r in res if r["benchmark"] == bench}
        shown = [m for m in methods if m in rows]
        means = [rows[m].get(f"{metric}_mean") for m in shown]
        errs = [rows[m].get(f"{metric}_ci95") or 0.0 for m in shown]
        ax.bar(range(len(shown)), [np.nan if v is None else v for v in means],
               yerr=[0.0 if isinstance(e, float) and math.isnan(e) else e for e in errs],
               color=[colors[m] for m in shown], capsize=3)
        for i, m in enumerate(shown):
            d, h = rows[m].get(f"diff_{metric}_mean"), rows[m].get(f"diff_{metric}_ci95")
            if d is not None and not math.isnan(d):
                ax.annotate(f"{d:+.3f}" + ("" if h is None or math.isnan(h) else f"\n±{h:.3f}"), (i, 0.02),
                            ha="center", fontsize=6, color="w")
        start = [c[1][0] for m in shown if (c := _curves(t, study, G, m, opts.curve_metric, 1)) is not None]
        if start:
            ax.axhline(float(np.mean(start)), color="0.3", ls=":", lw=1,
                       label=f"first-step sampled accuracy on the RL prompts (warm-up policy): {np.mean(start):.2f}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xticks(range(len(shown)), [t.label(m) for m in shown], fontsize=7, rotation=20)
        ax.set_ylabel(f"held-out {metric} ({bench})")
        ax.set_title(f"after training, G={G}: mean ± 95% CI over seeds; in bars: paired Δ vs "
                     f"{t.label(t.options.get('baseline', 'grpo'))}", fontsize=9)
    else:
        _note(ax, f"no held-out {metric} of the main study (studies.<main>.benchmarks)")
    for ax, key_of, name in ((axes[2], lambda m: mn.SALT_PARTICIPATION_RATIO, "participation ratio PR of the Gram"),
                             (axes[3], lambda m: mn.SALT_N_EFF_FINAL if _salt_on(m, opts) else mn.SALT_N_EFF,
                              "signed n_eff of the coefficients the loss used")):
        if pairs and _draw_curves(ax, t, study, G, pairs, key_of, colors):
            ax.set_xlabel("step")
            ax.set_title(f"{name} (G={G})", fontsize=9)
            ax.legend(fontsize=7)
        else:
            _note(ax, f"no curve: '{key_of(pairs[0] if pairs else '')}' not logged, or no method of "
                      "report.claims.salt_pairs in the main study")


def _salt_on(method: str, opts: ClaimsOptions) -> bool:
    return method in opts.salt_pairs


# ------------------------------------------------------------------------- Figure 3


# ------------------------------------------------------------------------- Figure 4


def _sweep_rows(t: Tables) -> tuple[str | None, list[dict[str, Any]]]:
    for kind in ("scaling_prompts", "main"):
        studies = t.studies(kind)
        if studies:
            return studies[0], t.runs_of(studies[0])
    return None, []


def fig4_residual(t: Tables, fig) -> None:
    axes = fig.subplots(1, 2)
    study, rows = _sweep_rows(t)
    if not rows:
        for ax in axes:
            _note(ax, "no G sweep (study of kind 'main' or 'scaling_prompts')")
        return
    methods = [m for m in t.methods_of(study) if any(r.get(mn.run_mean(mn.SALT_SHARED_ENERGY_RATIO)) is not None for r in rows if r["method"] == m)]
    colors = _colors(methods)
    ax = axes[0]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        for key, style in ((mn.run_mean(mn.SALT_SHARED_ENERGY_RATIO), "-"), (mn.run_mean(mn.SALT_RESIDUAL_ENERGY_RATIO), ":")):
            g, mean, half = _by_g(rs, key)
            if len(g):
                ax.errorbar(g, mean, yerr=half, fmt=style, marker="o", ms=3, capsize=2, color=colors[m],
                            label=f"{t.label(m)} {'shared' if 'shared' in key else 'residual'}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("G")
    ax.set_ylabel("energy ratio in the Gram geometry")
    ax.set_title("shared (solid) vs residual (dotted) energy", fontsize=9)
    if methods:
        ax.legend(fontsize=6)
    ax = axes[1]
    norm_key = mn.run_mean(mn.TRAIN_UPDATE_NORM) if any(r.get(mn.run_mean(mn.TRAIN_UPDATE_NORM)) is not None for r in rows) else None
    drawn = False
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        g, bound, _ = _by_g(rs, mn.run_mean(mn.SALT_RESIDUAL_BOUND))
        if len(g):
            ax.plot(g, bound, "o-", color=colors[m], label=f"{t.label(m)} residual bound")
            drawn = True
        if norm_key:
            g2, un, _ = _by_g(rs, norm_key)
            ax.plot(g2, un, "s--", color=colors[m], label=f"{t.label(m)} update norm")
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("G")
        ax.set_title("residual bound vs realised update norm", fontsize=9)
        ax.legend(fontsize=6)
    else:
        _note(ax, "'salt/residual_bound' was not logged")


# ------------------------------------------------------------------------- Figure 5


def fig5_proxy(t: Tables, fig) -> None:
    """Left: off-diagonal cosine-Gram entries, last block vs LM head; right: Pearson r against both nulls."""
    axes = fig.subplots(1, 2)
    proxies = t.manifest.get("proxy", {})
    present = {m: json.loads(Path(p).read_text()) for m, p in sorted(proxies.items()) if Path(p).exists()}
    if not present:
        for ax in axes:
            _note(ax, "no proxy validation (set proxy.models and proxy.dataset)")
        return
    colors = _colors(list(present))
    ax = axes[0]
    for model, rec in present.items():
        pairs = rec.get("pairs", {})
        if pairs.get("lm_head"):
            ax.scatter(pairs["lm_head"], pairs["last_block"], s=6, alpha=0.5, color=colors[model],
                       label=f"{model}: r = {rec['pearson']:.2f} ({rec.get('n_rollouts', '?')} rollouts)")
    ax.set_xlabel("LM-head proxy: cosine Gram entry")
    ax.set_ylabel("last transformer block: cosine Gram entry")
    ax.set_title("off-diagonal pairs of the same rollouts", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    names = ["pearson", "null_permutation", "null_gaussian"]
    width = 0.8 / len(present)
    for i, (model, rec) in enumerate(present.items()):
        vals, errs = [], []
        for n in names:
            v = rec.get(n)
            vals.append(float(v["mean"]) if isinstance(v, Mapping) else float(v) if v is not None else np.nan)
            errs.append(float(v.get("std", 0.0)) if isinstance(v, Mapping) else 0.0)
        ax.bar(np.arange(len(names)) + i * width, vals, yerr=errs, width=width, color=colors[model], capsize=3, label=model)
    ax.set_xticks(np.arange(len(names)) + width * (len(present) - 1) / 2,
                  ["LM head vs last block", "null: permuted", "null: Gaussian features"], fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("Pearson r (nulls: mean ± std)")
    ax.set_title("proxy correlation against two nulls", fontsize=9)


# ------------------------------------------------------------------------- Figure 6


def fig6_alpha_channels(t: Tables, fig) -> None:
    axes = fig.subplots(1, 3)
    study, rows = _sweep_rows(t)
    if not rows:
        for ax in axes:
            _note(ax, "no G sweep (study of kind 'main' or 'scaling_prompts')")
        return
    methods = t.methods_of(study)
    colors = _colors(methods)
    clip_key = mn.run_mean(mn.TRAIN_CLIP_FRAC) if any(r.get(mn.run_mean(mn.TRAIN_CLIP_FRAC)) is not None for r in rows) else None
    ax = axes[0]
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        g, mean, half = _by_g(rs, mn.run_mean(mn.SALT_ALPHA))
        if len(g) and "salt" in m:
            ax.errorbar(g, mean, yerr=half, marker="o", capsize=2, color=colors[m], label=f"{t.label(m)} alpha")
        if clip_key:
            g, mean, half = _by_g(rs, clip_key)
            ax.plot(g, mean, "x:", color=colors[m], label=f"{t.label(m)} clip frac")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("G")
    ax.set_title("adaptive alpha (o) and clip fraction (x)", fontsize=9)
    ax.legend(fontsize=5)
    ax = axes[1]
    for m in methods:
        if "salt" not in m:
            continue
        g, mean, half = _by_g([r for r in rows if r["method"] == m], mn.run_mean(mn.SALT_MAIN_CONTRIB_RATIO))
        if len(g):
            ax.errorbar(g, mean, yerr=half, marker="o", capsize=2, color=colors[m], label=t.label(m))
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("G")
    ax.set_ylabel("shared share of the final coefficients")
    ax.set_title("channel contributions vs G", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    ax = axes[2]
    entropy = [r for r in t.runs if "entropy" in r["method"]]
    if not entropy:
        _note(ax, "no entropy-only baseline in any study")
        return
    G = int(entropy[0]["G"])
    compare = ["entropy"] + [m for m in ("grpo", "grpo_salt") if t.runs_of(None, method=m, G=G)]
    vals, labels = [], []
    for m in compare:
        rs = entropy if m == "entropy" else t.runs_of(None, method=m, G=G)
        vals.append(_spread([r["final_reward"] for r in rs]))
        labels.append(t.label(entropy[0]["method"]) if m == "entropy" else t.label(m))
    ax.bar(range(len(vals)), [v[0] for v in vals], yerr=np.array([v[1] for v in vals]).T, color="0.6")
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    ax.set_ylabel("final training reward")
    ax.set_title(f"entropy-only baseline (G={G})", fontsize=9)


# ------------------------------------------------------------------------- Figure 7


def fig7_comparison(t: Tables, fig) -> None:
    axes = fig.subplots(1, 3)
    mains = t.studies("main")
    res = [r for r in t.results if mains and r["study"] == mains[0]]
    if not res:
        for ax in axes:
            _note(ax, "no evaluation of the main study (studies.<main>.benchmarks)")
        return
    study = mains[0]
    bench = res[0]["benchmark"]
    res = [r for r in res if r["benchmark"] == bench]
    methods = t.methods_of(study)
    colors = _colors(methods)
    Gs = sorted({int(r["G"]) for r in res})
    ax = axes[0]
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        rs = {int(r["G"]): r for r in res if r["method"] == m}
        xs = np.arange(len(Gs)) + i * width
        ax.bar(xs, [rs[g].get("pass@1_mean") if g in rs and rs[g].get("pass@1_mean") is not None else np.nan for g in Gs],
               width=width, color=colors[m], label=t.label(m),
               yerr=[rs[g].get("pass@1_ci95") or 0.0 if g in rs else 0.0 for g in Gs], capsize=2)
    ax.set_xticks(np.arange(len(Gs)) + width * (len(methods) - 1) / 2, [f"G={g}" for g in Gs])
    ax.set_ylabel(f"{bench} pass@1 (mean ± 95% CI over seeds)")
    ax.set_title("final accuracy", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1]
    G = Gs[-1]
    for m in methods:
        row = next((r for r in res if r["method"] == m and int(r["G"]) == G), None)
        if row is None:
            continue
        ks = sorted(int(k[len("pass@"):-len("_mean")]) for k in row if k.startswith("pass@") and k.endswith("_mean"))
        ys = [row[f"pass@{k}_mean"] for k in ks]
        ax.plot(ks, ys, "o-", color=colors[m], label=t.label(m))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_title(f"pass@k at G={G}", fontsize=9)
    ax = axes[2]
    for m in methods:
        rs = [r for r in t.runs_of(study) if r["method"] == m]
        ax.scatter(_col(rs, "wall_time_s"), _col(rs, "rollouts_used"), color=colors[m], label=t.label(m), s=18)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("rollouts generated")
    ax.set_title("cost per run", fontsize=9)
    ax.legend(fontsize=6)


def main(tables_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw every figure of the registry (:mod:`salt.figures.registry`) as PNG and PDF into ``out_dir``
    (the workflow's report step logs them to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = Tables(tables_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for spec in FIGURE_SPECS:
        fig = plt.figure(figsize=spec.size, layout="constrained")
        spec.draw()(t, fig)
        for ext in FIGURE_FORMATS:
            path = spec.file(out, ext)
            fig.savefig(path, dpi=120 if ext == "png" else None)
            written.append(path)
        plt.close(fig)
    return written


README_FIGURE = "fig2_dynamics"  # the README's "What you get" image: workflow/report/example_fig2_dynamics.png


def draw_one(tables_dir: str | Path, name: str, out: str | Path, dpi: int = 120) -> Path:
    """Draw one figure of the registry (:mod:`salt.figures.registry`) from the tables to ``out`` (format from its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = figure_spec(name)  # ValueError naming the known figures
    fig = plt.figure(figsize=spec.size, layout="constrained")
    spec.draw()(Tables(tables_dir), fig)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return Path(out)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="salt figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", required=True, help="folder written by `salt aggregate`")
    parser.add_argument("--out", help="output folder of the figures")
    parser.add_argument("--readme-figure", metavar="PNG",
                        help=f"also (or only, without --out) draw {README_FIGURE} to this file, e.g. "
                             "workflow/report/example_fig2_dynamics.png after `make run`")
    args = parser.parse_args(argv)
    if not args.out and not args.readme_figure:
        parser.error("give --out DIR, --readme-figure PNG or both")
    if args.out:
        for path in main(args.tables, args.out):
            print(path)
    if args.readme_figure:
        print(draw_one(args.tables, README_FIGURE, args.readme_figure, dpi=100))
    return 0
