"""Hover with discrete velocity commands: a categorical policy picks, per world axis, one of a few speeds, and the
vehicle's velocity loop (``entropilot.vehicle.control.VelocityLoop``, the same code on board) flies it.

Why this task. Jang & Kim's entropy-aware initialization (2021) is defined on categorical policies, and the natural
discrete way to fly a quadrotor is the one a person uses with a gamepad or arrow keys, and the one discrete-action
drone RL usually takes (AirSim-style DQN navigation): velocity commands, tracked by the vehicle's own velocity
controller (PX4 offboard velocity setpoints, the Crazyflie's velocity-world setpoint). Per-axis commands
(``MultiDiscrete``) let all three axes move at once and make the entropy per sub-action meaningful (at most
log K nats each). Two speeds a side plus zero are the fewest that hold 0.1 m: the nearest-command baseline
(``envs.commands.NearestCommand``) succeeds on 19 of 20 held-out starts with the default five levels, on 6 of 20
with three (-0.3, 0, +0.3 m/s) and 4 of 20 with (-0.5, 0, +0.5), where it limit-cycles around the target. The fine
level (0.1 m/s) is what settling needs, the coarse one (0.5 m/s) what crossing the start box in ~1 s needs.
"""

from __future__ import annotations

from entropilot.envs.commands import command_space
from entropilot.envs.settings import HoverDiscreteSettings
from entropilot.envs.single_drone import HoverEnv
from entropilot.vehicle.commands import command_meaning, velocity_command
from entropilot.vehicle.control import VelocityLoop


class HoverDiscreteEnv(HoverEnv):
    """Hover (same start box, target, crash and success rules) with a categorical action.

    Action: ``MultiDiscrete([K, K, K])``: per world axis x, y, z an index into ``velocity_levels`` (default
    -0.5, -0.1, 0, +0.1, +0.5 m/s; K = 5), held for ``command_repeat`` control periods. ``VelocityLoop`` tracks the
    command with yaw held at 0 and emits the simulator's ctbr action (collective thrust + body rates) every control
    period, from the latest observation (as an onboard inner loop reads the state estimate every tick). Reward:
    hover's, summed over the periods of a step. Observation: hover's ``OBSERVATION_NAMES`` (22 floats),
    ``prev_action_*`` being the low-level action the inner loop executed last (as in hover: the previous action
    the simulator ran). ``info["velocity_command"]`` holds the step's command (m/s).
    """

    settings_class = HoverDiscreteSettings

    def __init__(self, render_mode: str | None = None, **kwargs):
        super().__init__(render_mode, **kwargs)
        self.levels = self.settings.velocity_levels
        self.action_space = command_space(self.levels)
        self.inner_loop = velocity_loop(self.settings)
        self._last_observation = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        self.inner_loop.reset()
        self._last_observation = obs
        return obs, info

    def step(self, action):
        if self._last_observation is None:
            raise RuntimeError("call reset() before step()")
        command = velocity_command(self.levels, action)
        total = 0.0
        for _ in range(self.settings.command_repeat):
            obs, reward, terminated, truncated, info = super().step(self.inner_loop(self._last_observation, command))
            self._last_observation = obs
            total += reward
            if terminated or truncated:
                break
        info["velocity_command"] = command
        return obs, total, terminated, truncated, info


def velocity_loop(settings: HoverDiscreteSettings) -> VelocityLoop:
    """The velocity loop a command task with ``settings`` flies through (its airframe, rate and body-rate scale)."""
    airframe = settings.airframe
    return VelocityLoop(airframe.mass, 4.0 * airframe.max_thrust_per_motor, settings.control_hz, settings.max_body_rate)


def command_contract(settings: HoverDiscreteSettings) -> dict:
    """What the indices of a command policy on ``settings`` mean and what flies them, as export writes it into the
    policy file (``deploy.contract.COMMAND_KEYS``) and the onboard runtime reads it (``deploy.command``)."""
    return {
        "type": "velocity",
        "sizes": command_space(settings.velocity_levels).nvec.tolist(),
        "levels": list(settings.velocity_levels),
        "repeat": settings.command_repeat,
        "meaning": command_meaning(settings.velocity_levels),
        "inner_loop": {"name": "VelocityLoop", "parameters": velocity_loop(settings).parameters()},
    }
