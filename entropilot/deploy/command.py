"""A command policy on board: the exported file's command indices -> the velocity command they name -> the inner
loop the policy trained over (``envs.pid.VelocityPID``, the same code) -> the vehicle's action. Imports neither
torch, ray nor pybullet."""

from __future__ import annotations

from typing import Any

import numpy as np

from entropilot.deploy.contract import PolicyContractError
from entropilot.deploy.links.base import OBSERVATION_NAMES
from entropilot.envs.commands import velocity_command
from entropilot.envs.pid import VelocityPID

__all__ = ["CommandPolicy", "env_settings", "flight_policy"]


def env_settings(metadata: dict[str, Any]):
    """The validated settings of the env an exported policy names (its kwargs, action mode and rates)."""
    from entropilot.envs import ENVIRONMENTS

    m = metadata
    if m["env_id"] not in ENVIRONMENTS:
        raise PolicyContractError(f"the policy names env {m['env_id']!r}, unknown here; known: {sorted(ENVIRONMENTS)}")
    kwargs = {**m["env_kwargs"], "action_mode": m["action_mode"], "control_hz": m["control_hz"]}
    return ENVIRONMENTS[m["env_id"]][1].from_kwargs({**kwargs, "physics_hz": m["physics_hz"]})


class CommandPolicy:
    """``policy(obs[22]) -> action[4]`` for a policy whose output is command indices: an exported file's
    (``from_onnx``: an ``OnnxPolicy`` with ``command``), or any ``obs -> indices`` callable flying a command env
    with ``settings`` (``NearestCommand``, a test's).

    Every ``settings.command_repeat``-th call (the first after ``reset`` included) asks ``policy`` for indices (one
    per world axis) and maps them by ``velocity_command`` (an index outside [0, K) is a ValueError, which the
    autopilot treats as a policy error: it is never clipped into a valid command); every call runs ``VelocityPID``
    on its observation toward the command held, -> the action in ``action_mode``. That is the env's step, tick by
    tick, with the inner loop the env trained the policy over. ``reset`` (the autopilot calls it on arming) clears
    its integrator and the held command. ``last_command`` holds the latest (indices, velocity command in m/s).
    """

    def __init__(self, policy, settings):
        self.policy = policy
        self.levels = tuple(settings.velocity_levels)
        self.repeat = int(settings.command_repeat)
        self.inner_loop = VelocityPID.for_settings(settings)
        self.action_mode: str = settings.action_mode
        self.control_hz: int = settings.control_hz
        self.observation_names = getattr(policy, "observation_names", OBSERVATION_NAMES)
        self.last_command: tuple[np.ndarray, list[float]] | None = None
        self._ticks = 0

    @classmethod
    def from_onnx(cls, policy) -> CommandPolicy:
        """The command policy of an exported file, its inner loop built from the env settings the file names."""
        command = getattr(policy, "command", None)
        if command is None:
            raise ValueError(f"{policy!r} outputs actions, not command indices: fly it as it is")
        settings = env_settings(policy.metadata)
        written = ([float(v) for v in command["levels"]], command["repeat"])
        expected = (list(getattr(settings, "velocity_levels", ())), getattr(settings, "command_repeat", None))
        if written != expected:
            raise PolicyContractError(
                f"{policy.path}: command levels and repeat {written} differ from its env's velocity_levels and "
                f"command_repeat {expected}: the file is inconsistent"
            )
        return cls(policy, settings)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        if self._ticks % self.repeat == 0 or self.last_command is None:
            indices = self.policy(observation)
            self.last_command = (indices, velocity_command(self.levels, indices, name="the policy's command"))
        self._ticks += 1
        return self.inner_loop(observation, self.last_command[1])

    def reset(self) -> None:
        self.inner_loop.reset()
        self.last_command = None
        self._ticks = 0

    def check(self, expected: dict[str, Any] | None = None) -> None:
        """The wrapped file's contract check (``OnnxPolicy.check``); a plain callable has none."""
        check = getattr(self.policy, "check", None)
        if callable(check):
            check(expected)

    def __repr__(self) -> str:
        return f"CommandPolicy({self.policy!r}, levels={list(self.levels)}, repeat={self.repeat})"


def flight_policy(policy):
    """What the autopilot flies for ``policy``: a command policy through its inner loop, anything else as it is."""
    return CommandPolicy.from_onnx(policy) if getattr(policy, "command", None) is not None else policy
