"""Single-drone Gymnasium tasks: hover at a point, and waypoint / reference-curve tracking."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pybullet as p

from entropilot.envs.observation import ObservationWriter, observe
from entropilot.envs.settings import HoverSettings, WaypointSettings
from entropilot.envs.simulator import DroneSimulator, attitude_bounds, uniform
from entropilot.envs.tasks import CRASH_PENALTY, HoverRules, norm3, position_error
from entropilot.vehicle.layout import OBSERVATION_NAMES, OBSERVATION_SIZE


class HoverEnv(gym.Env):
    """Fly from a random start in a box to a target point and hold it.

    Observation: ``OBSERVATION_NAMES`` (22 floats). Action: Box([-1, 1]^4): rotor thrusts over
    [0, max] (``motors``) or collective thrust + body rates (``ctbr``). Reward: ``hover_reward``
    in (0, 1] per step, minus ``CRASH_PENALTY`` on a crash. Terminates on a crash, truncates at
    ``episode_seconds``. ``info["is_success"]`` at the episode's end: inside ``success_radius`` for
    the last ``success_seconds``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 48}
    settings_class = HoverSettings

    def __init__(self, render_mode: str | None = None, **kwargs):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'rgb_array'")
        self.settings = self.settings_class.from_kwargs(kwargs)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.settings.control_hz}
        self.sim = DroneSimulator(self.settings, num_drones=1)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBSERVATION_SIZE,), dtype=np.float32)
        self.observation_names = OBSERVATION_NAMES
        self.rules = HoverRules(self.sim, self.settings)
        self._target = self.settings.target  # (x, y, z) floats: the step reads it every time
        self.noise = self.settings.sensor_noise
        self.observation = ObservationWriter()
        # A start's position, attitude (roll, pitch, yaw) and velocity come from one draw of 9 uniforms: the
        # numbers and stream of three draws of 3, at a third of the calls into numpy.
        s = self.settings
        attitude_low, attitude_high = attitude_bounds(s.start_tilt_deg)
        self._start_low = (*s.start_low, *attitude_low, *(-s.start_velocity,) * 3)
        self._start_high = (*s.start_high, *attitude_high, *(s.start_velocity,) * 3)
        self.steps = 0

    @property
    def target(self) -> np.ndarray:
        """(1, 3) the current reference point."""
        return np.array([self._target])

    # Task hooks: where the target is now (waypoint tracking overrides these).
    moving_target = False  # whether _advance_task moves the target (a hover step skips the call)

    def _reset_task(self) -> None:
        self._target = self.settings.target

    def _advance_task(self, position) -> None:
        """Move the reference after a step that ended at ``position``; hover's target stays where it is."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        s, rng = self.settings, self.np_random
        self.sim.randomize(rng)
        if s.randomization.noise > 0:
            self.noise = s.sensor_noise.scaled(1.0 + rng.uniform(-1, 1) * s.randomization.noise)
        start = uniform(rng, self._start_low, self._start_high)
        attitude = p.getQuaternionFromEuler(start[3:6])
        self.sim.place(rng, [start[:3]], [attitude], [start[6:]], [(0.0, 0.0, 0.0)])
        self._reset_task()
        self.rules.reset()
        self.steps = 0
        drone = self.sim.drones[0]
        return self._observe(drone), {"distance": norm3(position_error(drone.position, self._target))}

    def step(self, action):
        sim = self.sim
        prev_action = sim.drones[0].action
        sim.step_rows([sim.action_row(action)], self.np_random)
        self.steps += 1
        drone = sim.drones[0]
        if self.moving_target:
            self._advance_task(drone.position)
        reward, distance, crash = self.rules.evaluate(0, drone, self._target, prev_action)
        terminated = crash is not None
        truncated = not terminated and self.steps >= self.settings.max_episode_steps
        info = {"distance": distance}
        if terminated:
            reward -= CRASH_PENALTY
            info["crash"] = crash
        if terminated or truncated:
            info["is_success"] = truncated and self.rules.succeeded(0)
        return self._observe(drone), reward, terminated, truncated, info

    def _observe(self, drone) -> np.ndarray:
        if self.noise.enabled:
            return observe(self.sim, self.target, self.noise, self.np_random)[0]
        return self.observation.observe(drone, self._target)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.sim.render(self.sim.position[0])

    def close(self):
        self.sim.close()


class WaypointEnv(HoverEnv):
    """Visit waypoints in order (the target advances within ``switch_radius``), or track a circle.

    Same observation (position error to the current reference point), action and reward as hover;
    success = inside ``success_radius`` of the reference for the last ``success_seconds``, with every
    waypoint visited.
    """

    settings_class = WaypointSettings
    moving_target = True

    def _reset_task(self) -> None:
        s = self.settings
        waypoints = np.array(s.waypoints)
        if s.randomize_waypoints > 0:
            waypoints = waypoints + self.np_random.uniform(
                -s.randomize_waypoints, s.randomize_waypoints, waypoints.shape
            )
            waypoints[:, 2] = np.maximum(waypoints[:, 2], 0.3)
        self.waypoints = waypoints
        self._waypoint_rows = [tuple(w) for w in waypoints.tolist()]
        self.waypoint_index = 0
        self._target = self._reference(0.0)

    def _reference(self, t: float) -> tuple[float, float, float]:
        s = self.settings
        if s.trajectory == "circle":
            centre = self._waypoint_rows[0]
            phase = 2.0 * math.pi * t / s.circle_period
            return (
                centre[0] + s.circle_radius * math.cos(phase) - s.circle_radius,
                centre[1] + s.circle_radius * math.sin(phase),
                centre[2],
            )
        return self._waypoint_rows[self.waypoint_index]

    def _advance_task(self, position) -> None:
        s = self.settings
        reached = norm3(position_error(position, self._target)) <= s.switch_radius
        if s.trajectory == "waypoints" and reached and self.waypoint_index < len(self.waypoints) - 1:
            self.waypoint_index += 1
            self.rules.reset()
        self._target = self._reference(self.steps / s.control_hz)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["waypoint_index"] = self.waypoint_index
        if "is_success" in info and self.settings.trajectory == "waypoints":
            info["is_success"] = info["is_success"] and self.waypoint_index == len(self.waypoints) - 1
        return obs, reward, terminated, truncated, info
