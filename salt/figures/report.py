"""A self-contained HTML report: every figure (embedded PNG), its caption, and the results table.

``snakemake --report`` builds Snakemake's own report from the same captions; this page is the one
the ``report`` rule leaves at ``results/report.html`` without extra tooling.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Sequence

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


def markdown_table_to_html(md: str) -> str:
    """Pipe tables to <table>; other lines become paragraphs."""
    rows, extra = [], []
    for line in md.strip().splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-", ":"} for c in cells):
                continue
            rows.append(cells)
        elif line.strip():
            extra.append(f"<p>{html.escape(line.strip())}</p>")
    if not rows:
        return "\n".join(extra)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n" + "\n".join(extra)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
figure{margin:2em 0}figcaption{font-size:14px}"""


def main(figures: Sequence[str | Path], captions_dir: str | Path, table_md: str | Path, manifest: str | Path,
         out: str | Path, title: str = "salt results") -> Path:
    """Write the report to ``out`` and return its path."""
    captions_dir = Path(captions_dir)
    man = json.loads(Path(manifest).read_text())
    studies = sorted({r["study"] for r in man["runs"]})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(man['runs'])} training runs in {len(studies)} studies ({html.escape(', '.join(studies))}); "
             f"MLflow experiment <code>{html.escape(str(man.get('tracking', {}).get('experiment', '')))}</code> at "
             f"<code>{html.escape(str(man.get('tracking', {}).get('uri', '')))}</code>.</p>",
             "<h2>Results table</h2>", markdown_table_to_html(Path(table_md).read_text())]
    if man.get("sandbox", {}).get("allow_unisolated"):  # the opt-in is part of the record
        parts.insert(-2, "<p><b>Code sandbox:</b> <code>sandbox.allow_unisolated: true</code>: where bubblewrap was "
                         "missing, model-generated programs ran in the unisolated fallback (no namespaces).</p>")
    parts.append("<h2>Figures</h2>")
    for fig in figures:
        fig = Path(fig)
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        caption = captions_dir / f"{fig.stem}.rst"
        cap = rst_to_html(caption.read_text()) if caption.exists() else f"<p>{html.escape(fig.stem)}</p>"
        parts.append(f"<figure><img alt='{fig.stem}' src='data:image/png;base64,{data}'><figcaption>{cap}</figcaption></figure>")
    parts.append("</body></html>\n")
    atomic_write_text(out, "\n".join(parts))
    Path(out).chmod(0o644)  # a page to share (the temporary file it was renamed from was private)
    return Path(out)
