"""Report figures as PNG files (matplotlib, Agg backend: no display needed).

Each function takes plain data already read from the run's files and returns the PNG path,
or None when there is nothing to draw (the section then says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)  # atomic, like every other output
    return path


def eval_vs_test(points: list[dict[str, Any]], path: Path, metric: str) -> Path | None:
    """Paper A Fig. 3: dev ("eval") vs test score of every model, one marker per checkpoint
    kind; the diagonal is where dev predicts test exactly."""
    pts = [p for p in points if p.get("dev") is not None and p.get("test") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = {"best-loss": "o", "best-accuracy": "^"}
    for ckpt, marker in markers.items():
        sel = [p for p in pts if p["checkpoint"] == ckpt]
        for baseline, color in ((True, "tab:gray"), (False, "tab:blue")):
            s = [p for p in sel if p["baseline"] == baseline]
            if s:
                ax.scatter(
                    [p["dev"] for p in s],
                    [p["test"] for p in s],
                    marker=marker,
                    color=color,
                    label=f"{ckpt} ({'baseline' if baseline else 'rationale/other'})",
                    alpha=0.8,
                )
    values = [p["dev"] for p in pts] + [p["test"] for p in pts]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 5.0
    lo, hi = max(0.0, lo - pad), hi + pad  # scores are never negative
    ax.plot([lo, hi], [lo, hi], ls="--", color="black", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"eval (dev) {metric}")
    ax.set_ylabel(f"test {metric}")
    ax.set_title("Eval vs test, both checkpoints")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def curves(
    series: dict[str, list[tuple[float, float]]], path: Path, ylabel: str, title: str
) -> Path | None:
    """One line per configuration: `series[name] = [(epoch, value), ...]` (Paper A Figs 4-5)."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in sorted(series.items()):
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=name, lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(series) > 6 else 1, loc="best")
    return _save(fig, path)


def latency_bars(rows: list[tuple[str, float]], path: Path) -> Path | None:
    """Latency per example (ms, log scale): students next to the teacher."""
    rows = [(n, v) for n, v in rows if v is not None and v > 0]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    names = [n for n, _ in rows]
    colors = ["tab:orange" if n.startswith("teacher") else "tab:blue" for n in names]
    ax.barh(names, [v for _, v in rows], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("latency per example (ms, log scale)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def accuracy_vs_confidence(bins: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy per confidence bin, with the number of answers in each."""
    shown = [b for b in bins if b["n"]]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    names = [f"{b['lo']:.1f}–{b['hi']:.1f}" for b in shown]
    bars = ax.bar(names, [100 * b["accuracy"] for b in shown], color="tab:orange")
    for bar, b in zip(bars, shown, strict=True):
        ax.annotate(f"n={b['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xlabel("teacher confidence")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    return _save(fig, path)
