"""A self-contained HTML report: the toy task, the claims, the results table, how intervals are
computed, and every figure (embedded PNG) with its caption.

``snakemake --report`` builds Snakemake's own report from the same captions; this page is the one
the ``report`` rule leaves at ``results/report.html`` without extra tooling.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Sequence

from salt.figures.registry import figure_spec
from salt.utils import atomic_write_text


def rst_to_html(text: str) -> str:
    """The small rst subset of the captions: paragraphs, **bold**, *italic*, ``code``."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        p = html.escape(" ".join(line.strip() for line in para.splitlines()))
        p = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", p)
        p = re.sub(r"``(.+?)``", r"<code>\1</code>", p)
        p = re.sub(r"\*(.+?)\*", r"<i>\1</i>", p)
        out.append(f"<p>{p}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then the markdown inline marks the tables use: **bold**, `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def markdown_table_to_html(md: str) -> str:
    """Pipe tables to <table> (each run of consecutive ``|`` lines is one table, in place); other lines
    become paragraphs."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            rows.clear()

    for line in md.strip().splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
    flush()
    return "\n".join(out) + "\n"


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
figure{margin:2em 0}figcaption{font-size:14px}td:nth-child(1),td:nth-child(3){text-align:left}"""
README_TOY_ANCHOR = "the-embedded-toy-task-why-rl-can-learn-it"  # README section "The embedded toy task: why RL can learn it"


def intervals_html() -> str:
    """How the intervals are computed: the docstring of :mod:`salt.figures.stats` (one source)."""
    from salt.figures import stats

    return rst_to_html(stats.__doc__.split("\n\n", 1)[1])


def main(figures: Sequence[str | Path], captions_dir: str | Path, table_md: str | Path, manifest: str | Path,
         out: str | Path, title: str = "salt results", claims_md: str | Path | None = None,
         readme: str | Path | None = None, replication_md: str | Path | None = None,
         warmups_md: str | Path | None = None) -> Path:
    """Write the report to ``out`` and return its path.

    ``claims_md``: the claims section (``claims.md`` of ``salt aggregate``), followed by
    ``replication_md`` (``salt replicate``: the verdicts on two disjoint sets of replicates) and
    ``warmups_md`` (each warm-up model's held-out scores); ``readme``: the
    repository's README, linked (relative to ``out``) from the toy task paragraph
    (``captions_dir/toy_task.rst``)."""
    captions_dir = Path(captions_dir)
    man = json.loads(Path(manifest).read_text())
    studies = sorted({r["study"] for r in man["runs"]})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(man['runs'])} training runs in {len(studies)} studies ({html.escape(', '.join(studies))}); "
             f"MLflow experiment <code>{html.escape(str(man.get('tracking', {}).get('experiment', '')))}</code> at "
             f"<code>{html.escape(str(man.get('tracking', {}).get('uri', '')))}</code>.</p>"]
    if man.get("sandbox", {}).get("allow_unisolated"):  # the opt-in is part of the record
        parts.append("<p><b>Code sandbox:</b> <code>sandbox.allow_unisolated: true</code>: where bubblewrap was "
                     "missing, model-generated programs ran in the unisolated fallback (no namespaces).</p>")
    toy = captions_dir / "toy_task.rst"
    if toy.exists():
        parts += ["<h2>The task</h2>", rst_to_html(toy.read_text())]
        if readme is not None:
            rel = os.path.relpath(Path(readme).resolve(), Path(out).resolve().parent)
            parts.append(f"<p>Details: <a href='{html.escape(rel)}#{README_TOY_ANCHOR}'>README, “The embedded toy "
                         "task: why RL can learn it”</a>.</p>")
    if claims_md is not None:
        parts += ["<h2>Claims</h2>", "<p>Each published claim measured on these runs, computed by "
                  "<code>salt.figures.claims</code> from the logged metrics and evaluations (never written by hand).</p>",
                  markdown_table_to_html(Path(claims_md).read_text())]
    if replication_md is not None:
        parts += ["<h3>Replication</h3>", markdown_table_to_html(Path(replication_md).read_text())]
    if warmups_md is not None:
        parts += ["<h3>The warm-up models (one per replicate)</h3>", markdown_table_to_html(Path(warmups_md).read_text())]
    parts += ["<h2>Results table</h2>", markdown_table_to_html(Path(table_md).read_text())]
    evaluated = {r["study"] for r in man["runs"] if r.get("evals")}
    for study in [s for s in studies if s not in evaluated]:  # their final training reward (salt aggregate)
        md = Path(man.get("study_tables", {}).get(study, {}).get("md", ""))
        if md.is_file():
            parts += [f"<h3>Study {html.escape(study)} (no held-out evaluation)</h3>", markdown_table_to_html(md.read_text())]
    parts += ["<h2>How the intervals are computed</h2>", intervals_html()]
    parts.append("<h2>Figures</h2>")
    for fig in figures:
        fig = Path(fig)
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        caption = captions_dir / figure_spec(fig.stem).caption
        cap = rst_to_html(caption.read_text()) if caption.exists() else f"<p>{html.escape(fig.stem)}</p>"
        parts.append(f"<figure><img alt='{fig.stem}' src='data:image/png;base64,{data}'><figcaption>{cap}</figcaption></figure>")
    parts.append("</body></html>\n")
    atomic_write_text(out, "\n".join(parts))
    Path(out).chmod(0o644)  # a page to share (the temporary file it was renamed from was private)
    return Path(out)
