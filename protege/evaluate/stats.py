"""Uncertainty: bootstrap 95% intervals, paired tests against the baseline, seed aggregates.

On 1,000 test rows a 95% interval on accuracy is about +-3 points, wider than the gains
Paper A reports; so every headline number carries an interval, every model is tested against
its baseline on the *same* rows (paired), and several seeds are summarised as mean +- std.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_BOOT = 1000
"""Bootstrap resamples: enough for a stable 95% interval, a fraction of a second."""


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `statistic(indices)` over `n_boot` resamples of rows 0..n-1.

    `statistic` receives an index array (with repeats), so corpus-level metrics (BLEU from
    summed statistics) bootstrap as easily as means."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    values = np.array([statistic(row) for row in idx], dtype=float)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def mean_ci(
    values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-example values (vectorised)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def wilson_ci(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson 95% interval of a proportion `p` observed on `n` rows: for scores recorded
    without per-example values (dev accuracy from training), where no bootstrap is possible."""
    if n <= 0:
        return (float("nan"), float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap of mean(a) - mean(b) over the same rows.

    Returns the difference, its 95% interval, and a two-sided p-value: twice the share of
    resamples whose difference falls on the other side of zero (capped at 1)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in size: {x.size} vs {y.size}")
    if x.size == 0:
        nan = float("nan")
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan}
    d = x - y
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    diff = float(d.mean())
    if diff > 0:
        p = 2 * float(np.mean(boots <= 0))
    elif diff < 0:
        p = 2 * float(np.mean(boots >= 0))
    else:
        p = 1.0
    return {
        "diff": diff,
        "ci_low": float(np.quantile(boots, 0.025)),
        "ci_high": float(np.quantile(boots, 0.975)),
        "p_value": min(1.0, p),
    }


def mcnemar(a_correct: Sequence[int], b_correct: Sequence[int]) -> dict[str, float]:
    """Exact McNemar test (two-sided binomial on the discordant pairs) of two classifiers
    scored on the same rows. `a_only`: rows only model a got right; `b_only`: only b."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired samples differ in size: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p_value": mcnemar_exact_p(a_only, b_only)}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact p-value: P(X <= min(b, c)) * 2 for X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean +- sample std (ddof=1) over seeds; std is None with a single seed."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return {"mean": float(np.mean(v)), "std": std, "n": len(v)}
