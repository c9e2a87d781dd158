"""Training-progress figures (PNG) from a metrics history: one dict of metrics per iteration.
Keys a history lacks are left out of the figure, so any stage of a run can be plotted."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Figure without pyplot renders with Agg and leaves the process's backend and pyplot state alone
# (no display needed on cluster nodes, no figures kept alive, safe from any thread).
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from entropilot.platform.names import ENTROPY_PER_DIM, Metric

__all__ = ["finite_or_none", "plot_entropy", "plot_learning", "save_progress_plots"]

_PER_DIM = re.compile(rf"^{re.escape(ENTROPY_PER_DIM)}(\d+)$")


def save_progress_plots(history: Sequence[Mapping[str, Any]], folder: Path, title: str = "") -> list[Path]:
    """`entropy.png` and `learning.png` in `folder` (replacing what is there), drawn from the history so far."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "entropy.png", folder / "learning.png"]
    plot_entropy(history, str(paths[0]), title)
    plot_learning(history, str(paths[1]), title)
    return paths


def plot_entropy(history: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
    """Measured policy entropy against its target over env steps, per-action-dim entropies as thin lines,
    and the entropy coefficient on a second y axis."""
    fig = Figure(figsize=(9, 5.2), layout="constrained")
    ax = fig.subplots()
    dims = sorted({int(m.group(1)) for row in history for k in row if (m := _PER_DIM.match(k))})
    for d in dims:
        x, y = _series(history, f"{ENTROPY_PER_DIM}{d}")
        _plot(ax, x, y, linewidth=0.8, alpha=0.6, label=f"action dim {d}")
    x, y = _series(history, Metric.ENTROPY)
    if x:
        _plot(ax, x, y, color="black", linewidth=2.0, label="entropy (measured)")
    x, y = _series(history, Metric.ENTROPY_TARGET)
    if x:
        _plot(ax, x, y, color="tab:red", linestyle="--", linewidth=1.6, label="target")
    _label_x(ax, history)
    ax.set_ylabel("policy entropy [nats]")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    x, y = _series(history, Metric.ENTROPY_COEFF)
    if x:
        coeff_ax = ax.twinx()
        _plot(
            coeff_ax, x, y, color="tab:purple", linewidth=1.2, linestyle="-.", label="entropy coefficient (right axis)"
        )
        coeff_ax.set_ylabel("entropy coefficient", color="tab:purple")
        coeff_ax.tick_params(axis="y", colors="tab:purple")
        coeff_ax.set_ylim(bottom=min(0.0, min(y)))
        more_handles, more_labels = coeff_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        # Below the plot: inside it would cover one of the two y axes' lines.
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=min(4, len(handles)))
    else:
        _no_data(ax, f"{Metric.ENTROPY}, {Metric.ENTROPY_TARGET}, {Metric.ENTROPY_COEFF}, {ENTROPY_PER_DIM}*")
    ax.set_title(title or "policy entropy")
    _save(fig, path)


def plot_learning(history: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
    """Mean episode return (top) and success rate (bottom) over env steps."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ret_ax, success_ax = fig.subplots(2, 1, sharex=True)
    x, y = _series(history, Metric.EPISODE_RETURN_MEAN)
    if x:
        _plot(ret_ax, x, y, color="tab:blue", linewidth=1.6)
    else:
        _no_data(ret_ax, Metric.EPISODE_RETURN_MEAN)
    ret_ax.set_ylabel("mean episode return")
    ret_ax.grid(alpha=0.3)
    x, y = _series(history, Metric.SUCCESS_RATE)
    if x:
        _plot(success_ax, x, y, color="tab:green", linewidth=1.6)
        success_ax.set_ylim(-0.03, 1.03)
    else:
        _no_data(success_ax, Metric.SUCCESS_RATE)
    success_ax.set_ylabel("success rate")
    _label_x(success_ax, history)
    success_ax.grid(alpha=0.3)
    ret_ax.set_title(title or "learning progress")
    _save(fig, path)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the iterations that have a finite `key`; x is env steps, or the iteration index without them."""
    xs, ys = [], []
    for i, row in enumerate(history):
        y = finite_or_none(row.get(key))
        x = finite_or_none(row.get(Metric.ENV_STEPS, i))
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _plot(ax, x: list[float], y: list[float], **style) -> None:
    # A one-point series draws no line: mark the point so it is not lost.
    ax.plot(x, y, marker="o" if len(x) == 1 else None, **style)


def _label_x(ax, history: Sequence[Mapping[str, Any]]) -> None:
    if any(Metric.ENV_STEPS in row for row in history):
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(EngFormatter())  # 120 k, not 120000 or 1.2e5
    else:
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def finite_or_none(value: Any) -> float | None:
    """A metric value as a float, or None if it is missing, not a number, NaN or infinite (a gap in a history)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _no_data(ax, keys: str) -> None:
    ax.text(0.5, 0.5, f"no data ({keys})", ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
