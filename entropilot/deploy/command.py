"""A command policy on board: the exported file's command indices -> the velocity command they name -> the inner
loop the policy trained over (``vehicle.control.VelocityLoop``, rebuilt from the parameters in the file) -> the
vehicle's ctbr action. Imports only numpy and the dependency-free ``entropilot.vehicle``."""

from __future__ import annotations

from typing import Any

import numpy as np

from entropilot.deploy.contract import PolicyContractError
from entropilot.vehicle.commands import velocity_command
from entropilot.vehicle.control import VelocityLoop
from entropilot.vehicle.layout import OBSERVATION_NAMES

__all__ = ["CommandPolicy", "flight_policy"]

INNER_LOOPS = {"VelocityLoop": VelocityLoop}


class CommandPolicy:
    """``policy(obs[22]) -> action[4]`` (ctbr) for a policy whose output is command indices: an exported file's
    (``from_onnx``: an ``OnnxPolicy`` with ``command``), or any ``obs -> indices`` callable with a ``command`` in the
    metadata's form (``envs.discrete.command_contract``: ``NearestCommand``, a test's).

    Every ``command["repeat"]``-th call (the first after ``reset`` included) asks ``policy`` for indices (one per
    world axis) and maps them by ``velocity_command`` (an index outside [0, K) is a ValueError, which the autopilot
    treats as a policy error: it is never clipped into a valid command); every call runs the inner loop on its
    observation toward the command held. That is the env's step, tick by tick, with the loop the env trained the
    policy over. ``reset`` (the autopilot calls it on arming) clears the loop's integrator and the held command.
    ``last_command`` holds the latest (indices, velocity command in m/s).
    """

    action_mode = "ctbr"

    def __init__(self, policy, command: dict[str, Any], control_hz: int, observation_names=OBSERVATION_NAMES):
        loop = command["inner_loop"]
        if not isinstance(loop, dict) or loop.get("name") not in INNER_LOOPS:
            raise PolicyContractError(f"command inner loop {loop!r}: this runtime flies {sorted(INNER_LOOPS)}")
        try:
            self.inner_loop = INNER_LOOPS[loop["name"]](**loop["parameters"])
        except (KeyError, TypeError, ValueError) as err:
            raise PolicyContractError(f"command inner loop parameters {loop.get('parameters')!r}: {err}") from None
        self.policy = policy
        self.levels = tuple(float(v) for v in command["levels"])
        self.repeat = int(command["repeat"])
        self.control_hz = int(control_hz)
        self.observation_names = tuple(observation_names)
        self.last_command: tuple[Any, list[float]] | None = None
        self._ticks = 0

    @classmethod
    def from_onnx(cls, policy) -> CommandPolicy:
        """The command policy of an exported file (an ``OnnxPolicy`` whose ``command`` is not None)."""
        if getattr(policy, "command", None) is None:
            raise ValueError(f"{policy!r} outputs actions, not command indices: fly it as it is")
        return cls(policy, policy.command, policy.control_hz, policy.observation_names)

    def __call__(self, observation: np.ndarray) -> list[float]:
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
