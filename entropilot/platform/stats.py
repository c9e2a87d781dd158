"""The statistics our claims rest on: binomial confidence intervals, Fisher's exact test, McNemar's exact test on
paired seeds, Kaplan-Meier survival
curves with right-censoring, the log-rank test, and the smallest effect a paired-seed design of n runs can detect.

Plain numpy and scipy; each function says which textbook form it computes so a reader can check it by hand. scipy.stats
is imported on first use (~1.2 s): a training run needs only `wilson_interval`, which the standard library serves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better coverage than the normal interval near 0 and 1,
    where flight success rates live). (nan, nan) for zero trials."""
    if trials == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # At 0 and `trials` successes the bounds are exactly 0 and 1; computed, they come out a rounding error off.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == trials else centre + half)


def fisher_exact(failures_a: int, n_a: int, failures_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test on the 2x2 table [[failures, successes] per arm]."""
    table = [[failures_a, n_a - failures_a], [failures_b, n_b - failures_b]]
    return float(_scipy().fisher_exact(table, alternative="two-sided").pvalue)


def mcnemar_exact(failed_a: Sequence[bool], failed_b: Sequence[bool]) -> tuple[int, int, float]:
    """McNemar's exact test on paired runs (seed i of arm a against seed i of arm b): (a fails where b succeeds,
    a succeeds where b fails, two-sided p). Only the discordant pairs carry information; under the null each is
    either way with odds 1/2, so p is the two-sided binomial test of the first count out of their sum (1 when
    there is no discordant pair). Pairing removes the seed-to-seed spread Fisher's test has to overcome."""
    if len(failed_a) != len(failed_b):
        raise ValueError(f"paired runs need equal lengths; got {len(failed_a)} and {len(failed_b)}")
    worse = sum(bool(a) and not b for a, b in zip(failed_a, failed_b))
    better = sum(bool(b) and not a for a, b in zip(failed_a, failed_b))
    if worse + better == 0:
        return 0, 0, 1.0
    return worse, better, float(_scipy().binomtest(worse, worse + better, 0.5).pvalue)


@dataclass(frozen=True)
class SurvivalCurve:
    """Kaplan-Meier estimate of P(not yet succeeded after t env steps): at each event time in ``times`` the curve
    drops to ``survival``; ``at_risk`` runs had not yet succeeded or been censored just before it."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray

    def median(self) -> float:
        """The first time at which the curve is at or below 0.5 (inf if it never gets there: most runs failed)."""
        below = np.nonzero(self.survival <= 0.5)[0]
        return float(self.times[below[0]]) if len(below) else math.inf

    def step_points(self, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the step function from t = 0 to ``horizon``, for plotting."""
        x = np.concatenate([[0.0], np.repeat(self.times, 2), [horizon]])
        y = np.concatenate([[1.0, 1.0], np.repeat(self.survival, 2)])[: len(x)]
        return x, y


def kaplan_meier(times: Sequence[float], events: Sequence[bool]) -> SurvivalCurve:
    """Product-limit estimator: ``times[i]`` is when run i succeeded (``events[i]`` True) or was censored (the budget
    ran out: False). S(t) = prod over event times t_j <= t of (1 - d_j / n_j)."""
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    event_times = np.unique(times[events])
    survival, at_risk, s = [], [], 1.0
    for t in event_times:
        n = int(np.sum(times >= t))
        d = int(np.sum((times == t) & events))
        s *= 1.0 - d / n
        survival.append(s)
        at_risk.append(n)
    return SurvivalCurve(event_times, np.array(survival), np.array(at_risk, dtype=int))


def logrank(times_a: Sequence[float], events_a: Sequence[bool], times_b: Sequence[float], events_b: Sequence[bool]):
    """Two-sided p-value of the log-rank test that two arms' time-to-success curves are the same (scipy's
    implementation; nan when neither arm has an event, where there is nothing to compare)."""
    if not (np.any(events_a) or np.any(events_b)):
        return math.nan
    return float(_scipy().logrank(_censored(times_a, events_a), _censored(times_b, events_b)).pvalue)


def _censored(times: Sequence[float], events: Sequence[bool]):
    times, events = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    return _scipy().CensoredData(uncensored=times[events], right=times[~events])


def detectable_failure_rate(
    baseline_rate: float, n_per_arm: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The highest failure rate below ``baseline_rate`` that Fisher's exact test with ``n_per_arm`` runs per arm tells
    apart from it with the given power (exact: sums the binomial probabilities of the significant outcomes). None when
    not even a method that never fails would be detected that often: no effect is detectable at this n."""
    outcomes = np.arange(n_per_arm + 1)
    significant = np.array(
        [[fisher_exact(int(i), n_per_arm, int(j), n_per_arm) < alpha for j in outcomes] for i in outcomes]
    )
    p_baseline = _scipy().binom.pmf(outcomes, n_per_arm, baseline_rate)
    for rate in np.linspace(baseline_rate, 0.0, 101)[1:]:
        p_method = _scipy().binom.pmf(outcomes, n_per_arm, rate)
        if float(p_baseline @ significant @ p_method) >= power:
            return float(rate)
    return None


def _scipy():
    from scipy import stats

    return stats
