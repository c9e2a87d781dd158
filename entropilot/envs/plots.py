"""Pictures of flights: trajectory plots and GIF videos of rendered frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_trajectories(results, path: str, title: str = "") -> None:
    """Top view and height over time of each episode, with its reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, height) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in results:
        (line,) = top.plot(r.positions[:, 0], r.positions[:, 1], label=f"seed {r.seed}{' ✓' if r.success else ''}")
        top.plot(r.positions[0, 0], r.positions[0, 1], "o", color=line.get_color())
        top.plot(r.targets[:, 0], r.targets[:, 1], "x--", color="k", markersize=4, linewidth=0.6)
        t = np.arange(len(r.positions))
        height.plot(t, r.positions[:, 2], color=line.get_color())
        height.plot(t, r.targets[:, 2], "--", color="k", linewidth=0.6)
    top.set_xlabel("x [m]")
    top.set_ylabel("y [m]")
    top.set_aspect("equal", adjustable="datalim")
    top.legend(fontsize=8)
    top.set_title("top view (x = target)")
    height.set_xlabel("control step")
    height.set_ylabel("z [m]")
    height.set_title("height")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # the commands checked beforehand that it can be made
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_gif(frames: list[np.ndarray], path: str, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames[:: max(1, fps // 24)]]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / min(fps, 24)), loop=0)
