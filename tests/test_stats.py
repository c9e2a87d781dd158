"""The study's and the readiness report's statistics against values worked out by hand."""

import math

import numpy as np
import pytest

from entropilot.platform.stats import (
    detectable_failure_rate,
    fisher_exact,
    kaplan_meier,
    logrank,
    mcnemar_exact,
    wilson_interval,
)


def test_wilson_interval_matches_the_formula_and_stays_inside_zero_one():
    # p = 0.95, n = 100, z = 1.95996: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (...)
    low, high = wilson_interval(95, 100)
    assert (low, high) == pytest.approx((0.88825, 0.97846), abs=1e-5)
    assert wilson_interval(100, 100)[1] == pytest.approx(1.0) and wilson_interval(0, 100)[0] == pytest.approx(0.0)
    assert wilson_interval(100, 100)[0] == pytest.approx(0.96301, abs=1e-5)  # 100/100 is not proof of 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_fisher_exact_two_sided_by_hypergeometric_enumeration():
    # 3 of 4 vs 0 of 4 failures; the tables as or more extreme, both tails, are (3, 0) and (0, 3),
    # each with probability C(4,3) C(4,0) / C(8,3) = 4/56.
    assert fisher_exact(3, 4, 0, 4) == pytest.approx(8 / 56)
    assert fisher_exact(2, 4, 2, 4) == pytest.approx(1.0)


def test_mcnemar_exact_counts_discordant_pairs_and_tests_them_binomially():
    # Pairs (a failed, b failed): two where only a fails, five where only b fails, concordant ones ignored.
    a = [True, True, False, False, False, False, False, True, False]
    b = [False, False, True, True, True, True, True, True, False]
    worse, better, p = mcnemar_exact(a, b)
    assert (worse, better) == (2, 5)
    # Two-sided binomial(7, 1/2) at 2: P(X <= 2) + P(X >= 5) = 2 * (1 + 7 + 21) / 128.
    assert p == pytest.approx(58 / 128)
    assert mcnemar_exact([True] * 6, [False] * 6)[2] == pytest.approx(2 / 64)  # six of six one way: p = 0.031
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])


def test_kaplan_meier_product_limit_with_censoring():
    # Successes at 1, 2, 3; censored at 2, 5, 5. S(1) = 5/6, S(2) = 5/6 * 4/5, S(3) = 2/3 * 2/3.
    curve = kaplan_meier([1, 2, 2, 3, 5, 5], [True, True, False, True, False, False])
    np.testing.assert_allclose(curve.times, [1, 2, 3])
    np.testing.assert_allclose(curve.survival, [5 / 6, 2 / 3, 4 / 9])
    np.testing.assert_array_equal(curve.at_risk, [6, 5, 3])
    assert curve.median() == 3.0
    assert kaplan_meier([4, 4], [False, False]).median() == math.inf  # nobody succeeded within the budget
    x, y = curve.step_points(horizon=6)
    assert x[0] == 0 and x[-1] == 6 and y[0] == 1.0 and y[-1] == pytest.approx(4 / 9) and len(x) == len(y)


def test_logrank_tells_clearly_different_arms_apart_and_not_equal_ones():
    fast, slow = [1, 2, 3, 4, 5, 6], [20, 21, 22, 23, 24, 25]
    assert logrank(fast, [True] * 6, slow, [True] * 6) < 0.01
    assert logrank(fast, [True] * 6, fast, [True] * 6) == pytest.approx(1.0)
    assert math.isnan(logrank([5, 5], [False, False], [5, 5], [False, False]))


def test_the_smallest_detectable_effect_of_a_design():
    # Half the runs of the baseline fail. With 12 seeds per arm Fisher's test sees, at 80 % power, only a method that
    # (almost) never fails; with 3 seeds, nothing at all.
    assert detectable_failure_rate(0.5, 3) is None
    rate_12 = detectable_failure_rate(0.5, 12)
    assert rate_12 is not None and rate_12 <= 0.05
    rate_24 = detectable_failure_rate(0.5, 24)
    assert rate_24 is not None and rate_24 > rate_12
