"""RLlib's MeanStdFilter over a whole vector step at once: the same pushes and the same normalization as the
connector's observation-by-observation loop, as array operations on the filter's own RunningStat objects."""

from __future__ import annotations

import numpy as np
from ray.rllib.utils.filter import MeanStdFilter as RunningMeanStd
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.numpy import SMALL_NUMBER


def push_rows(stat: RunningStat, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Push ``rows[0], rows[1], ...`` into ``stat`` as that many `stat.push` calls would, and return the mean and
    std after each push, shaped like ``rows``.

    Welford's recurrence has a closed form over a batch: after j of K pushes onto (n0, m0, S0) the count is
    n0 + j, the mean m_j = m0 + sum_{i<=j} (x_i - m0) / (n0 + j) and S_j = S0 + sum_{i<=j} (x_i - m_{i-1})(x_i - m_i).
    The delta arrays that RLlib merges across runners move as `push` moves them: mean_delta by m_K - m0 (set to
    m_K by a first push), sum_sq_diff_delta by S_K - S0. Equal to K pushes up to float64 rounding.
    """
    x = np.asarray(rows, dtype=np.float64)
    n0, m0 = stat.num_pushes, stat.mean_array
    counts = n0 + np.arange(1, len(x) + 1, dtype=np.float64)[:, None]
    means = m0 + np.cumsum(x - m0, axis=0) / counts
    before = np.concatenate([m0[None], means[:-1]])
    sum_sq = stat.sum_sq_diff_array + np.cumsum((x - before) * (x - means), axis=0)

    stat.mean_delta_array = means[-1] + (stat.mean_delta_array - m0 if n0 > 0 else 0.0)
    stat.sum_sq_diff_delta_array = stat.sum_sq_diff_delta_array + (sum_sq[-1] - stat.sum_sq_diff_array)
    stat.mean_array, stat.sum_sq_diff_array = means[-1].copy(), sum_sq[-1].copy()
    stat.num_pushes += len(x)
    stat.num_pushes_delta += len(x)

    # RunningStat.var: unbiased, 0 up to one push, cast to float32 before the square root.
    var = np.where(counts > 1, sum_sq / np.maximum(counts - 1, 1.0), 0.0).astype(np.float32)
    return means, np.sqrt(np.maximum(0, var))


def filter_rows(mean_std: RunningMeanStd, rows: np.ndarray, update: bool = True) -> np.ndarray:
    """What RLlib's MeanStdFilter connector makes of the observations of one vector step, env by env: each row
    pushed into the running stats (if ``update``) and then normalized with the stats that include it and every row
    before it; (x - mean) / (std + SMALL_NUMBER), clipped, in the rows' dtype.

    The connector also pushes each row into its filter's `buffer`, which nothing in the new API stack reads or
    saves (merges use the running stats' delta arrays, Ray 2.60): that push is left out."""
    rows = np.asarray(rows)
    if update:
        means, stds = push_rows(mean_std.running_stats, rows)
    else:
        means = np.broadcast_to(mean_std.running_stats.mean, rows.shape)
        stds = np.broadcast_to(mean_std.running_stats.std, rows.shape)
    out = rows
    if mean_std.demean:
        out = out - means
    if mean_std.destd:
        out = out / (stds + SMALL_NUMBER)
    if mean_std.clip:
        out = np.clip(out, -mean_std.clip, mean_std.clip)
    return out.astype(rows.dtype)
