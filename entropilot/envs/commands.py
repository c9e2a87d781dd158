"""Discrete velocity commands: what a command policy's indices mean (per world axis, an index into a table of
speeds). No simulator: the env that trains the policy and the onboard runtime that flies it read indices here."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

AXES = ("x", "y", "z")
INNER_LOOP = "entropilot.envs.pid.VelocityPID: world velocity command -> action_mode action, yaw held at 0"


def velocity_command(levels: tuple[float, ...], index, name: str = "action") -> list[float]:
    """One drone's command indices (one per world axis) -> its velocity command (m/s, world frame, z up).

    A ValueError names ``name`` and what is wrong: an index must be an integer in [0, len(levels)).
    """
    array = np.asarray(index)
    if array.shape != (len(AXES),):
        raise ValueError(f"{name} must have shape ({len(AXES)},) (one command index per axis), got {array.shape}")
    if array.dtype.kind not in "iu" and not (
        array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
    ):
        raise ValueError(f"{name} must hold integer command indices, got {array.tolist()}")
    rows = [int(i) for i in array.tolist()]
    if any(not 0 <= i < len(levels) for i in rows):
        raise ValueError(f"{name} indices must be in [0, {len(levels) - 1}], got {rows}")
    return [levels[i] for i in rows]


def command_meaning(levels: tuple[float, ...]) -> list[str]:
    """What each sub-action's index commands, one line per axis (what export writes into the policy file)."""
    table = ", ".join(f"{i} -> {v:+g}" for i, v in enumerate(levels))
    return [f"velocity command along world {axis} (z up), m/s: {table}" for axis in AXES]


def command_space(levels: tuple[float, ...]) -> gym.spaces.MultiDiscrete:
    """The action space of a command task: one index into ``levels`` per world axis."""
    return gym.spaces.MultiDiscrete([len(levels)] * len(AXES))


class NearestCommand:
    """obs -> command indices: per axis the level nearest to ``-gain * position error`` (a proportional position
    loop quantized to the table). The discrete tasks' baseline, and the check that their tables can hold a point:
    with the default five levels it holds every hover start within 0.1 m, with three (one speed a side) it
    limit-cycles outside (tests/test_envs.py)."""

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
