"""Render a `Report` as one self-contained HTML file: plots embedded as base64 data URIs,
a little CSS, no scripts and nothing fetched, so it can be mailed or archived as is."""

from __future__ import annotations

import base64
import html
import re

from protege.report.model import Report, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: bottom; font-style: italic; font-size: .8rem; padding-top: .3rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #555; }
.empty { color: #8a5a00; background: #fff7e0; padding: .4rem .7rem; border-left: 3px solid #e0a800; }
.meta { color: #555; font-size: .9rem; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""


def _inline(text: str) -> str:
    """Escape, then the bits of Markdown the sections use: `code`, **bold**, [text](link)."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows
    )
    cap = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
    table = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def render_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1><ul class='meta'>",
        *(f"<li>{_inline(m)}</li>" for m in report.meta),
        "</ul>",
    ]
    for s in report.sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.empty:
            parts.append(f"<p class='empty'>No data: {_inline(s.empty)}</p>")
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [table_html(t) for t in s.tables]
        for f in s.figures:
            data = base64.b64encode(f.path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(f.caption)}'>"
                f"<figcaption>{_inline(f.caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
