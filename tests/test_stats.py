"""Bootstrap intervals, paired tests and seed aggregation on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protege.evaluate import stats as S


def test_mean_ci_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 100)
    large = rng.integers(0, 2, 2000)
    lo_s, hi_s = S.mean_ci(small)
    lo_l, hi_l = S.mean_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # ~ 1/sqrt(n): 20x rows, ~4.5x narrower
    # On 1,000 rows at 40% accuracy the interval is about +-3 points (METHOD.md).
    lo, hi = S.mean_ci([1] * 400 + [0] * 600)
    assert 0.05 < hi - lo < 0.07


def test_bootstrap_ci_of_a_corpus_statistic():
    values = np.arange(10, dtype=float)
    lo, hi = S.bootstrap_ci(10, lambda idx: float(values[idx].max()))
    assert lo <= 9.0 <= hi and hi == 9.0


def test_paired_bootstrap():
    a = [1] * 60 + [0] * 40
    b = [1] * 40 + [0] * 60  # a is right on 20 more rows, never worse
    r = S.paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(0.2)
    assert r["ci_low"] > 0 and r["p_value"] < 0.01
    same = S.paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError):
        S.paired_bootstrap([1], [1, 0])


def test_mcnemar_exact_on_known_tables():
    # 10 rows only a gets right, 2 only b: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 158/4096.
    a = [1] * 10 + [0] * 2 + [1] * 5
    b = [0] * 10 + [1] * 2 + [1] * 5
    r = S.mcnemar(a, b)
    assert (r["a_only"], r["b_only"]) == (10, 2)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert S.mcnemar([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pairs
    assert S.mcnemar_exact_p(3, 3) == 1.0


def test_aggregate_over_seeds():
    agg = S.aggregate([0.40, 0.42, 0.44])
    assert agg["mean"] == pytest.approx(0.42) and agg["n"] == 3
    assert agg["std"] == pytest.approx(0.02)  # sample std
    assert S.aggregate([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert S.aggregate([None, math.nan])["n"] == 0


def test_wilson_interval_textbook_values():
    lo, hi = S.wilson_ci(0.5, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.404, 0.596)
    assert S.wilson_ci(0.0, 10)[0] == 0.0 and S.wilson_ci(0.0, 10)[1] == pytest.approx(
        0.2775, abs=1e-4
    )
