"""Which student to pick, computed from what the variants report measured: test accuracy and
its interval, latency, estimated cost and calibration (ECE), with a line wherever the rows
compared differ (the teacher asked on fewer test rows, a student trained on fewer rows, a
student trained without rationales), so the choice is never read off unlike numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protege.report.model import money, pct

INF = float("inf")


@dataclass
class Candidate:
    """One variant's best checkpoint, as measured on the test set."""

    name: str
    kind: str
    """Student kind (as its config says: `students.kind_from_config`)."""
    format: str | None
    """Target format it was trained on (`label`: no rationale)."""
    accuracy: float | None
    accuracy_ci: list[float] | None
    ece: float | None
    p50_ms: float | None
    cost_per_1k: float | None
    n_test: int | None
    n_train: int | None
    """Training rows it learnt from (read from its checkpoint)."""

    @property
    def rationale(self) -> bool:
        """Whether it writes a rationale: trained with one (a kind that cannot write one
        refuses every format but `label`)."""
        return self.format not in (None, "label")


def _money(x: float | None) -> str:
    return money(x)


def pick_paragraphs(cands: list[Candidate], teacher: dict[str, Any] | None) -> list[str]:
    """The recommendation and its caveats, one paragraph each (empty with nothing scored).

    The pick: among the students whose test accuracy reaches the lower end of the best one's
    95% interval (no measured difference from the best at this test size), the one with the
    lowest estimated cost per 1,000 (then the lowest p50 latency)."""
    scored = [c for c in cands if c.accuracy is not None]
    if not scored:
        return []
    best = max(scored, key=lambda c: c.accuracy or 0.0)
    floor = best.accuracy_ci[0] if best.accuracy_ci else best.accuracy
    close = [c for c in scored if (c.accuracy or 0.0) >= (floor or 0.0)]
    pick = min(close, key=lambda c: (_or_inf(c.cost_per_1k), _or_inf(c.p50_ms)))
    if pick is best:
        why = f"the highest test accuracy ({pct(best.accuracy)}%)"
    else:
        why = (
            f"its test accuracy ({pct(pick.accuracy)}%) is within the 95% interval of the "
            f"best, `{best.name}` ({pct(best.accuracy)}%, from {pct(floor)}%), at a lower "
            f"estimated cost ({_money(pick.cost_per_1k)} vs {_money(best.cost_per_1k)} per "
            f"1,000)"
        )
    text = (
        f"**Which student to pick**, from the measurements above: `{pick.name}` for labels: {why}"
    )
    if len(close) > 1 and pick is best:
        text += f"; {len(close) - 1} other(s) within its 95% interval cost more"
    text += f"; p50 single request {_ms(pick.p50_ms)}"
    calibrated = [c for c in close if c.ece is not None]
    if pick.ece is not None:
        text += f", ECE {pick.ece:.3f}"
    better = min(calibrated, key=lambda c: c.ece or 0.0) if calibrated else None
    if better is not None and better is not pick and (better.ece or 0) + 0.02 < (pick.ece or INF):
        text += (
            f"; `{better.name}` is better calibrated (ECE {better.ece:.3f}): prefer it "
            f"where its label probabilities are used as confidences"
        )
    out = [text + "."]
    trade = tradeoff(scored)
    if trade:
        out.append(trade)
    if not pick.rationale:
        writers = [c for c in scored if c.rationale]
        if writers:
            w = max(writers, key=lambda c: c.accuracy or 0.0)
            out.append(
                f"Where a rationale must come out: `{w.name}` ({pct(w.accuracy)}%, "
                f"{_money(w.cost_per_1k)} per 1,000, p50 {_ms(w.p50_ms)}), the most accurate "
                f"student that writes one."
            )
        else:
            out.append("No student here writes a rationale.")
    out += _caveats(scored, teacher)
    return out


def frontier(scored: list[Candidate]) -> list[Candidate]:
    """The students no other beats on both accuracy and estimated cost (cheapest first):
    every other one is less accurate than a cheaper student, or as accurate and dearer."""
    priced = sorted(
        (c for c in scored if c.cost_per_1k is not None),
        key=lambda c: (c.cost_per_1k, -(c.accuracy or 0.0), _or_inf(c.p50_ms)),
    )
    out: list[Candidate] = []
    for c in priced:
        if not out or (c.accuracy or 0.0) > (out[-1].accuracy or 0.0):
            out.append(c)
    return out


def tradeoff(scored: list[Candidate]) -> str | None:
    """Accuracy against cost and latency along the frontier, each step priced: how many
    points of test accuracy each costlier student buys, for how many times the cost and the
    p50 latency of the one before it. None with fewer than two students on it."""
    steps = frontier(scored)
    if len(steps) < 2:
        return None
    first = steps[0]
    parts = [
        f"`{first.name}` {pct(first.accuracy)}% at {_money(first.cost_per_1k)} per 1,000, "
        f"p50 {_ms(first.p50_ms)}"
    ]
    for prev, c in zip(steps, steps[1:], strict=False):
        gain = 100 * ((c.accuracy or 0.0) - (prev.accuracy or 0.0))
        parts.append(
            f"`{c.name}` {pct(c.accuracy)}% (+{gain:.1f} points) at {_money(c.cost_per_1k)} "
            f"({_times(c.cost_per_1k, prev.cost_per_1k)} the cost), p50 {_ms(c.p50_ms)} "
            f"({_times(c.p50_ms, prev.p50_ms)} the latency)"
        )
    return (
        "Accuracy against cost, from the cheapest student to the most accurate (each one "
        "more accurate than every cheaper one; the others are beaten on both): "
        + "; ".join(parts)
        + "."
    )


def _times(x: float | None, ref: float | None) -> str:
    if x is None or not ref:
        return "? x"
    r = x / ref
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x"


def _caveats(scored: list[Candidate], teacher: dict[str, Any] | None) -> list[str]:
    notes = []
    n_test = max((c.n_test or 0) for c in scored)
    n_teacher = ((teacher or {}).get("metrics") or {}).get("n")
    if n_teacher and n_test and n_teacher < n_test:
        notes.append(
            f"Rows differ: the teacher was asked on the first {n_teacher} of the {n_test} "
            f"test rows, the students on all {n_test}; its row is not a like-for-like "
            f"accuracy."
        )
    trained = [c for c in scored if c.n_train]
    most = max((c.n_train or 0) for c in trained) if trained else 0
    fewer = [c for c in trained if (c.n_train or 0) < most]
    if fewer:
        names = ", ".join(f"`{c.name}` on {c.n_train}" for c in fewer)
        notes.append(
            f"Rows differ: trained on fewer rows ({names}; the others on {most}), so "
            f"its accuracy says less about its kind than about its training set."
        )
    without = [c for c in scored if not c.rationale]
    if without and len(without) < len(scored):
        names = ", ".join(f"`{c.name}`" for c in without)
        notes.append(
            f"{names}: trained on labels only, without the teacher's rationales (the others "
            f"learnt from them too)."
        )
    if any(c.ece is None for c in scored) and any(c.ece is not None for c in scored):
        names = ", ".join(f"`{c.name}`" for c in scored if c.ece is None)
        notes.append(f"No ECE for {names}: it answers by generation, with no label probability.")
    return notes


def _or_inf(x: float | None) -> float:
    return INF if x is None else x


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} ms"
