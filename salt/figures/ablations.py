"""Figure 3 (ablations) on held-out data: held-out pass@1 per variant with its interval, from results.csv.

The interval is the 95% t-interval over seeds when a study has two or more seeds, else the
evaluation's own interval over the held-out problems (``pass@1_ci95_problems`` of
:func:`salt.figures.aggregate.results_table`: problem and sampling noise of one run, not training
noise); the axis label says which. Shared helpers come from :mod:`salt.figures.figures`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from salt import metric_names as mn


HELDOUT = mn.pass_at(1)


def heldout(t, study: str, method: str, G: int | None = None) -> tuple[float, float, str]:
    """Held-out pass@1 of (study, method[, G]) from results.csv: (mean, half-width of the 95% interval, what the
    interval is over: 'seeds' with >= 2 seeds, else 'problems', the evaluation's own interval); NaNs when
    the study was not evaluated."""
    rows = [r for r in t.results if r["study"] == study and r["method"] == method and (G is None or int(r["G"]) == int(G))]
    if not rows or rows[0].get(f"{HELDOUT}_mean") is None:
        return float("nan"), float("nan"), ""
    r = rows[0]
    half = r.get(f"{HELDOUT}_ci95")
    if half is not None and not math.isnan(float(half)):
        return float(r[f"{HELDOUT}_mean"]), float(half), "seeds"
    half = r.get(f"{HELDOUT}_ci95_problems")
    return float(r[f"{HELDOUT}_mean"]), float("nan") if half is None else float(half), "problems"


def _score_bars(t, study: str, methods: Sequence[str], G: int | None = None):
    """(means, half-widths, y label) of held-out pass@1 per method, or of the final training reward (min-max over
    seeds) when the study has no held-out evaluation."""
    from salt.figures.figures import _spread

    got = [heldout(t, study, m, G) for m in methods]
    if all(not math.isnan(g[0]) for g in got):
        over = sorted({g[2] for g in got})
        return ([g[0] for g in got], np.array([[g[1], g[1]] for g in got]).T,
                f"held-out {HELDOUT} (95% interval over {' / '.join(over)})")
    spreads = [_spread([r["final_reward"] for r in t.runs_of(study, method=m) if G is None or int(r["G"]) == int(G)])
               for m in methods]
    return ([sp[0] for sp in spreads], np.array([sp[1] for sp in spreads]).T,
            "final training reward (no held-out evaluation; min-max over seeds)")


def fig3_ablations(t, fig) -> None:
    from salt.figures.figures import _col, _colors, _note

    axes = fig.subplots(1, 4)
    abl = t.studies("ablation")
    if abl:
        rows = t.runs_of(abl[0])
        methods = t.methods_of(abl[0])
        colors = _colors(methods)
        ax = axes[0]
        for m in methods:
            rs = [r for r in rows if r["method"] == m]
            ax.scatter(_col(rs, mn.run_mean(mn.SALT_PARTICIPATION_RATIO)), _col(rs, mn.run_mean(mn.SALT_N_EFF)), color=colors[m], label=t.label(m), s=30)
        ax.set_xlabel("participation ratio PR (mean over steps)")
        ax.set_ylabel("n_eff (mean over steps)")
        ax.set_title("PR vs n_eff per variant", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[1]
        means, err, label = _score_bars(t, abl[0], methods)
        ax.barh(range(len(methods)), means, xerr=np.nan_to_num(err), color=[colors[m] for m in methods], capsize=3)
        ax.set_yticks(range(len(methods)), [t.label(m) for m in methods], fontsize=7)
        ax.set_xlabel(label, fontsize=7)
        ax.set_title("fixed vs adaptive alpha, ReLU, subspace, channels", fontsize=8)
    else:
        _note(axes[0], "no study of kind 'ablation'")
        _note(axes[1], "no study of kind 'ablation'")
    ax = axes[2]
    bud = t.studies("scaling_budget")
    if bud:
        rows = t.runs_of(bud[0])
        methods = t.methods_of(bud[0])
        colors = _colors(methods)
        gs = sorted({int(r["G"]) for r in rows})
        label = ""
        for m in methods:
            cols = [_score_bars(t, bud[0], [m], g) for g in gs]
            label = cols[0][2] if cols else label
            ax.errorbar(gs, [c[0][0] for c in cols], yerr=np.nan_to_num(np.hstack([c[1] for c in cols])),
                        marker="o", capsize=3, color=colors[m], label=t.label(m))
        budget = rows[0]["G"] * rows[0]["prompts_per_step"] if rows else "?"
        ax.set_xscale("log", base=2)
        ax.set_xlabel("G (P = budget / G)")
        ax.set_ylabel(label, fontsize=7)
        ax.set_title(f"fixed rollout budget P x G = {budget}", fontsize=9)
        ax.legend(fontsize=7)
    else:
        _note(ax, "no study of kind 'scaling_budget'")
    ax = axes[3]
    focal = t.studies("focal_sweep")
    if focal:
        methods = t.methods_of(focal[0])
        rows = t.runs_of(focal[0])
        means, err, label = _score_bars(t, focal[0], methods)
        ax.bar(range(len(methods)), means, yerr=np.nan_to_num(err), color=[_colors(methods)[m] for m in methods], capsize=3)
        ax.set_xticks(range(len(methods)), [t.label(m) for m in methods], fontsize=7, rotation=15)
        ax.set_ylabel(label, fontsize=7)
        ax.set_title(f"F-GRPO gamma sweep (G={rows[0]['G']})" if rows else "F-GRPO gamma sweep", fontsize=9)
    else:
        _note(ax, "no study of kind 'focal_sweep'")
