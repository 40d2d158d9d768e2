"""The report as plain data: sections of paragraphs, tables and figures, rendered twice
(Markdown, HTML) by small renderers that know nothing about runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    """A table of already formatted cells."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG in the report directory."""

    path: Path
    caption: str


@dataclass
class Section:
    """One heading. `empty` says why there is nothing to show, so no section silently vanishes."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    empty: str | None = None


@dataclass
class Report:
    title: str
    meta: list[str]
    sections: list[Section]


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal: 0.417 -> 41.7."""
    return "–" if x is None else f"{100 * x:.1f}"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ci(pair: list[float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not pair or pair[0] is None:
        return ""
    return f"[{pair[0] * scale:.{digits}f}, {pair[1] * scale:.{digits}f}]"


def money(x: float | None) -> str:
    """Dollars: 4 decimals under $1, cents above; two significant digits under $0.0001 (a
    student answering in microseconds costs $0.0000083 per 1,000, not $0.0000)."""
    if x is None:
        return "–"
    if 0 < x < 1e-4:
        return f"${x:.{1 - math.floor(math.log10(x))}f}"
    return f"${x:.4f}" if x < 1 else f"${x:,.2f}"
