"""Swarm: N drones in one PyBullet world as an RLlib MultiAgentEnv, each hovering at its own target.

Downwash between drones is on; two drones closer than ``collision_distance`` both crash. Agents are
``drone_0`` .. ``drone_{N-1}``, each with the single-drone observation layout and action space, so one
shared policy flies all of them.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from entropilot.envs.observation import observe
from entropilot.envs.settings import SwarmSettings
from entropilot.envs.simulator import DroneSimulator, random_attitude
from entropilot.envs.tasks import HoverRules
from entropilot.vehicle.layout import OBSERVATION_SIZE


class SwarmEnv(MultiAgentEnv):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: dict | None = None, render_mode: str | None = None, **kwargs):
        super().__init__()
        # RLlib passes an EnvContext (a dict) positionally; plain Python callers pass keywords.
        options = {**dict(config or {}), **kwargs}
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'rgb_array'")
        self.render_mode = render_mode
        self.settings = SwarmSettings.from_kwargs(options)
        s = self.settings
        self.sim = DroneSimulator(s, num_drones=s.num_drones, downwash=s.downwash)
        self.possible_agents = [f"drone_{i}" for i in range(s.num_drones)]
        self.agents = list(self.possible_agents)
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBSERVATION_SIZE,), dtype=np.float32)
        act_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: act_space for a in self.possible_agents}
        offsets = (np.arange(s.num_drones) - (s.num_drones - 1) / 2.0) * s.spacing
        self.targets = np.array(s.target) + np.stack([offsets, np.zeros_like(offsets), np.zeros_like(offsets)], axis=1)
        self.rules = HoverRules(self.sim, s)
        self.rng = np.random.default_rng()
        self.alive = np.ones(s.num_drones, dtype=bool)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        s, rng = self.settings, self.rng
        self.sim.randomize(rng)
        low = np.array(s.start_low) - np.array(s.target)
        high = np.array(s.start_high) - np.array(s.target)
        starts = self._separated_starts(low, high)
        attitudes = [random_attitude(rng, s.start_tilt_deg) for _ in range(s.num_drones)]
        velocities = rng.uniform(-s.start_velocity, s.start_velocity, size=(s.num_drones, 3))
        self.sim.place(rng, starts, attitudes, velocities, np.zeros((s.num_drones, 3)))
        self.rules.reset()
        self.alive[:] = True
        self.agents = list(self.possible_agents)
        self.steps = 0
        obs = observe(self.sim, self.targets, s.sensor_noise, rng)
        return {a: obs[i] for i, a in enumerate(self.possible_agents)}, {a: {} for a in self.possible_agents}

    def _separated_starts(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Start boxes around each target, re-drawn until no two drones start in collision."""
        min_gap = 2.0 * self.settings.collision_distance
        for _ in range(100):
            starts = self.targets + self.rng.uniform(low, high, size=self.targets.shape)
            gaps = np.linalg.norm(starts[:, None] - starts[None, :], axis=-1) + np.eye(len(starts)) * 1e9
            if gaps.min() > min_gap:
                return starts
        return self.targets.copy()  # the targets themselves are spacing apart, which validation keeps > collision

    def step(self, action_dict: dict):
        s = self.settings
        actions = self.sim.last_action.copy()
        for agent, action in action_dict.items():
            if agent not in self.agents:
                raise ValueError(f"action for {agent!r}, which is not an active agent (active: {self.agents})")
            actions[int(agent.split("_")[1])] = self.sim.action_row(action, f"action for {agent!r}")
        # Crashed drones idle with rotors off, so the live ones keep flying around them.
        actions[~self.alive] = -1.0 if s.action_mode == "motors" else [-1.0, 0.0, 0.0, 0.0]
        prev_actions = [drone.action for drone in self.sim.drones]
        self.sim.step(actions, self.rng)
        self.steps += 1
        sim = self.sim
        outcomes = [
            self.rules.evaluate(i, drone, target, prev)
            for i, (drone, target, prev) in enumerate(zip(sim.drones, self.targets.tolist(), prev_actions))
        ]
        gaps = np.linalg.norm(sim.position[:, None] - sim.position[None, :], axis=-1)
        gaps[~self.alive, :] = np.inf
        gaps[:, ~self.alive] = np.inf
        np.fill_diagonal(gaps, np.inf)
        collided = gaps.min(axis=1) < s.collision_distance
        truncated_all = self.steps >= s.max_episode_steps
        obs = observe(sim, self.targets, s.sensor_noise, self.rng)
        out_obs, out_rew, terminateds, truncateds, infos = {}, {}, {}, {}, {}
        for i, agent in enumerate(self.possible_agents):
            if not self.alive[i]:
                continue
            reward, distance, crash = outcomes[i]
            crash = "collision" if collided[i] else crash
            info = {"distance": distance}
            if crash is not None:
                reward -= self.settings.crash_penalty
                info["crash"] = crash
                self.alive[i] = False
            if crash is not None or truncated_all:
                info["is_success"] = crash is None and self.rules.succeeded(i)
            out_obs[agent], out_rew[agent], infos[agent] = obs[i], reward, info
            terminateds[agent], truncateds[agent] = crash is not None, truncated_all and crash is None
        self.agents = [a for i, a in enumerate(self.possible_agents) if self.alive[i]] if not truncated_all else []
        terminateds["__all__"] = not self.alive.any()
        truncateds["__all__"] = truncated_all
        return out_obs, out_rew, terminateds, truncateds, infos

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.sim.render(
            self.targets.mean(axis=0), distance=0.5 + self.settings.spacing * self.settings.num_drones
        )

    def close(self):
        self.sim.close()
