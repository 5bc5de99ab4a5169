"""The figures: one table of name, drawer, size and caption file, read by every layer.

``salt figures`` (:func:`salt.figures.figures.main`) draws each entry with its drawer at its size;
the workflow (``workflow/rules/common.smk``, ``analysis.smk``) declares ``figures/<name>.png`` and
``.pdf`` for each entry with its caption; the HTML report (:mod:`salt.figures.report`) captions each
figure with the same file. A figure is added here, nowhere else: one drawer ``draw(tables, fig)``
and one caption file ``workflow/report/<caption>``.

This module imports nothing heavy (the Snakefile reads it while parsing); a drawer is named as
``"module:function"`` and imported when it is used, as the commands of :mod:`salt.cli` are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class FigureSpec:
    name: str  # the file stem: figures/<name>.png and .pdf
    drawer: str  # "module:function", called as function(tables, matplotlib_figure)
    size: tuple[float, float]  # inches (matplotlib figsize)
    caption: str  # the caption's file name in workflow/report/ (Snakemake report and report.html)

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
