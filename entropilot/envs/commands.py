"""The action space of the discrete velocity-command tasks and their baseline (what the indices mean, and the loop
that flies them, are the vehicle's: ``entropilot.vehicle.commands``, ``entropilot.vehicle.control``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from entropilot.vehicle.commands import AXES


def command_space(levels: tuple[float, ...]) -> gym.spaces.MultiDiscrete:
    """The action space of a command task: one index into ``levels`` per world axis."""
    return gym.spaces.MultiDiscrete([len(levels)] * len(AXES))


class NearestCommand:
    """obs -> command indices: per axis the level nearest to ``-gain * position error`` (a proportional position
    loop quantized to the table). The discrete tasks' baseline, and the check that their tables can hold a point:
    with the default five levels it succeeds on 19 of 20 held-out hover starts, with three (one speed a side) it
    limit-cycles around the target (``envs.discrete``; tests/test_discrete.py)."""

    def __init__(self, levels: tuple[float, ...], gain: float = 1.5):
        self.levels = np.asarray(levels, dtype=np.float64)
        self.gain = gain

    @classmethod
    def for_env(cls, env, **kwargs) -> NearestCommand:
        return cls(env.unwrapped.settings.velocity_levels, **kwargs)

    def reset(self) -> None:
        """Stateless: nothing to clear (here so it flies like the PID baselines)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        wanted = -self.gain * np.asarray(obs[0:3], dtype=np.float64)
        return np.abs(wanted[:, None] - self.levels[None, :]).argmin(axis=1)
