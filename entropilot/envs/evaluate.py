"""Fly a controller (any obs -> action callable) for whole episodes and report what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    length: int
    final_distance: float
    crash: str | None
    positions: np.ndarray = field(repr=False)  # (T + 1, 3) world positions
    targets: np.ndarray = field(repr=False)  # (T + 1, 3) the reference point at each step
    frames: list = field(default_factory=list, repr=False)


def run_episodes(env, controller: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
                 record_frames: bool = False, reset_controller: Callable[[], None] | None = None) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with seeds ``seed, seed + 1, ...`` on a single-drone env."""
    sim = env.unwrapped.sim
    results = []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        if reset_controller is not None:
            reset_controller()
        positions, targets = [sim.position[0].copy()], [env.unwrapped.target[0].copy()]
        frames = [env.render()] if record_frames else []
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(controller(obs))
            total += reward
            steps += 1
            positions.append(sim.position[0].copy())
            targets.append(env.unwrapped.target[0].copy())
            if record_frames:
                frames.append(env.render())
            done = terminated or truncated
        results.append(
            EpisodeResult(seed + k, bool(info.get("is_success", False)), total, steps, info["distance"],
                          info.get("crash"), np.array(positions), np.array(targets), frames)
        )
    return results


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    return {
        "success_rate": float(np.mean([r.success for r in results])),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        "mean_length": float(np.mean([r.length for r in results])),
        "mean_final_distance": float(np.mean([r.final_distance for r in results])),
        "crash_rate": float(np.mean([r.crash is not None for r in results])),
    }
