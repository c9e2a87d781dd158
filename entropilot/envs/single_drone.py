"""Single-drone Gymnasium tasks: hover at a point, and waypoint / reference-curve tracking.

Each env is a thin Gymnasium face on one drone's episode (``tasks.py``), which the vector env (``vector.py``)
runs once per drone of its world: the two share every rule and random draw.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from entropilot.envs.settings import HoverSettings, SensorNoise, WaypointSettings
from entropilot.envs.simulator import DroneSimulator
from entropilot.envs.tasks import HoverEpisode, HoverRules, WaypointEpisode
from entropilot.vehicle.layout import OBSERVATION_NAMES, OBSERVATION_SIZE


def drone_spaces() -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """(observation space, action space) of one drone: ``OBSERVATION_NAMES`` floats, and [-1, 1]^4."""
    observation = gym.spaces.Box(-np.inf, np.inf, shape=(OBSERVATION_SIZE,), dtype=np.float32)
    return observation, gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


class HoverEnv(gym.Env):
    """Fly from a random start in a box to a target point and hold it.

    Observation: ``OBSERVATION_NAMES`` (22 floats). Action: Box([-1, 1]^4): rotor thrusts over
    [0, max] (``motors``) or collective thrust + body rates (``ctbr``). Reward: ``hover_reward``
    in (0, 1] per step, minus ``crash_penalty`` (2) on a crash. Terminates on a crash, truncates at
    ``episode_seconds``. ``info["is_success"]`` at the episode's end: inside ``success_radius`` for
    the last ``success_seconds``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 48}
    settings_class = HoverSettings
    episode_class = HoverEpisode

    def __init__(self, render_mode: str | None = None, **kwargs):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'rgb_array'")
        self.settings = self.settings_class.from_kwargs(kwargs)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.settings.control_hz}
        self.sim = DroneSimulator(self.settings, num_drones=1)
        self.observation_space, self.action_space = drone_spaces()
        self.observation_names = OBSERVATION_NAMES
        self.rules = HoverRules(self.sim, self.settings)
        self.episode = self.episode_class(self.sim, 0, self.rules)

    @property
    def target(self) -> np.ndarray:
        """(1, 3) the current reference point."""
        return np.array([self.episode.target])

    @property
    def noise(self) -> SensorNoise:
        """This episode's sensor noise."""
        return self.episode.noise

    @property
    def steps(self) -> int:
        """Control steps since the reset."""
        return self.episode.steps

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self.episode.reset(rng)
        return self.episode.observe(rng), {"distance": self.episode.distance()}

    def step(self, action):
        sim, episode, rng = self.sim, self.episode, self.np_random
        sim.step_rows([sim.action_row(action)], [rng])
        reward, distance, crash, terminated, truncated = episode.step()
        info = {"distance": distance}
        if terminated:
            info["crash"] = crash
        if terminated or truncated:
            info["is_success"] = episode.succeeded()
        return episode.observe(rng), reward, terminated, truncated, info

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
    waypoint visited. ``info["waypoint_index"]``: the waypoint flown to.
    """

    settings_class = WaypointSettings
    episode_class = WaypointEpisode

    @property
    def waypoints(self) -> np.ndarray:
        """(W, 3) this episode's waypoints."""
        return self.episode.waypoints

    @property
    def waypoint_index(self) -> int:
        return self.episode.waypoint_index

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["waypoint_index"] = self.episode.waypoint_index
        return obs, reward, terminated, truncated, info
