"""Render a `Report` as GitHub-flavoured Markdown (figures as relative PNG links)."""

from __future__ import annotations

from protege.report.model import Report, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_md(t: Table) -> str:
    lines = ["| " + " | ".join(map(_cell, t.headers)) + " |", "|" + " --- |" * len(t.headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{t.caption}*"]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    out += [f"- {m}" for m in report.meta] + [""]
    for s in report.sections:
        out += [f"## {s.title}", ""]
        if s.empty:
            out += [f"*No data: {s.empty}*", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for t in s.tables:
            out += [table_md(t), ""]
        for f in s.figures:
            out += [f"![{f.caption}]({f.path.name})", "", f"*{f.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"
