"""The analysis outputs: one table of figures (name, drawer, size, caption file, formats) and the
file names of the tables, read by every layer.

``salt figures`` (:func:`salt.figures.figures.main`) draws each entry with its drawer at its size
into :meth:`FigureSpec.file` for each of :data:`FIGURE_FORMATS`; the workflow (``workflow/rules/common.smk``,
``analysis.smk``) declares those files for each entry with its caption; the HTML report
(:mod:`salt.figures.report`) captions each figure with the same file. A figure is added here,
nowhere else: one drawer ``draw(tables, fig)`` and one caption file ``workflow/report/<caption>``.

:data:`TABLE_FILES` names what ``salt aggregate`` (:func:`salt.figures.aggregate.main`) writes into
its output folder and :data:`REPLICATION_FILES` what ``salt replicate`` writes
(:func:`salt.figures.replication.write`); :func:`table_paths` / :func:`replication_paths` put them in
a folder. The writers, the readers (:class:`salt.figures.figures.Tables`) and the workflow's
``aggregate`` and ``replication`` rules all take the paths from here.

This module imports nothing heavy (the Snakefile reads it while parsing); a drawer is named as
``"module:function"`` and imported when it is used, as the commands of :mod:`salt.cli` are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FIGURE_FORMATS = ("png", "pdf")  # every figure is written in each


@dataclass(frozen=True)
class FigureSpec:
    name: str  # the file stem: figures/<name>.png and .pdf
    drawer: str  # "module:function", called as function(tables, matplotlib_figure)
    size: tuple[float, float]  # inches (matplotlib figsize)
    caption: str  # the caption's file name in workflow/report/ (Snakemake report and report.html)

    def file(self, out_dir: str | Path, fmt: str) -> Path:
        """The figure's file of format ``fmt`` (one of :data:`FIGURE_FORMATS`) in ``out_dir``."""
        return Path(out_dir) / f"{self.name}.{fmt}"

    def draw(self) -> Callable[[Any, Any], None]:
        """The drawing function (imported now)."""
        from salt.utils import resolve_ref

        return resolve_ref(self.drawer)


def _spec(name: str, module: str, size: tuple[float, float]) -> FigureSpec:
    return FigureSpec(name, f"salt.figures.{module}:{name}", size, f"{name}.rst")


FIGURE_SPECS: tuple[FigureSpec, ...] = (
    _spec("fig1_gram", "figures", (13, 7.5)),
    _spec("fig2_dynamics", "figures", (12, 8)),
    _spec("fig3_ablations", "ablations", (18, 4.2)),
    _spec("fig4_residual", "figures", (11, 4)),
    _spec("fig5_proxy", "figures", (11, 4.2)),
    _spec("fig6_alpha_channels", "figures", (14, 4.2)),
    _spec("fig7_comparison", "figures", (14, 4.2)),
)
FIGURES: tuple[str, ...] = tuple(s.name for s in FIGURE_SPECS)  # in drawing and report order


def figure_spec(name: str) -> FigureSpec:
    """The entry of figure ``name``; ValueError naming the known figures otherwise."""
    for spec in FIGURE_SPECS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")


# what `salt aggregate --out DIR` writes into DIR (besides each study's table, at the manifest's paths)
TABLE_FILES: dict[str, str] = {
    "steps": "steps.csv",
    "runs": "runs.csv",
    "evals": "evals.csv",
    "results": "results.csv",
    "results_md": "results.md",
    "warmups_csv": "warmups.csv",
    "warmups_md": "warmups.md",
    "claims_json": "claims.json",
    "claims_md": "claims.md",
    "manifest": "manifest.json",
}
# what `salt replicate --out DIR` writes into DIR
REPLICATION_FILES: dict[str, str] = {"json": "replication.json", "md": "replication.md"}


def table_paths(out_dir: str | Path) -> dict[str, Path]:
    """Every file of :data:`TABLE_FILES` in ``out_dir``, by key."""
    return {key: Path(out_dir) / name for key, name in TABLE_FILES.items()}


def replication_paths(out_dir: str | Path) -> dict[str, Path]:
    """Every file of :data:`REPLICATION_FILES` in ``out_dir``, by key."""
    return {key: Path(out_dir) / name for key, name in REPLICATION_FILES.items()}
