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


GIF_FPS = 24  # the most frames per second a flight's GIF keeps


def frame_stride(control_hz: int) -> int:
    """Control steps per GIF frame. A recorder renders only the frames a GIF keeps: a TinyRenderer frame costs
    ~16 ms, a hundred control steps; rendering all 289 frames of a 6 s flight at 48 Hz, half of them then dropped,
    took ~4.6 s of a training run's wrap-up."""
    return max(1, control_hz // GIF_FPS)


def save_gif(frames: list[np.ndarray], path: str, control_hz: int) -> None:
    """A looping GIF of ``frames``, rendered every `frame_stride(control_hz)` control steps, played in real time."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    duration = round(1000 * frame_stride(control_hz) / control_hz)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
