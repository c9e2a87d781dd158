"""N independent drones in one PyBullet world as a Gymnasium ``VectorEnv``: one ``stepSimulation`` per control step
advances all of them, and drone i flies as the single env seeded with ``seed + i``.

Each drone runs the single env's episode code (``tasks.py``) with its own random stream, so its start, domain
randomization, gusts and sensor noise are the single env's draw for draw; the drones pass through one another
(Bullet pairs each only with the ground), each in its own frame of the world (see ``pybullet_world``). Autoreset
follows Gymnasium's ``NEXT_STEP`` mode, as ``SyncVectorEnv`` does and RLlib's ``SingleAgentEnvRunner`` expects.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from entropilot.envs import HOVER_ID, SWARM_ID, WAYPOINT_ID
from entropilot.envs.simulator import DroneSimulator
from entropilot.envs.single_drone import HoverEnv, WaypointEnv, drone_spaces
from entropilot.envs.tasks import EpisodeBatch, HoverRules

SINGLE_ENVS: dict[str, type[HoverEnv]] = {HOVER_ID: HoverEnv, WAYPOINT_ID: WaypointEnv}


class DroneVectorEnv(VectorEnv):
    """``num_envs`` drones of ``env_id`` (Hover-v0 or Waypoint-v0, with that env's options) in one world.

    ``step(actions)``: actions (N, 4) in [-1, 1] -> observations (N, 22) float32, rewards (N,) float64 (the
    single env's Python floats, unrounded), terminated and truncated (N,) bool, and infos in Gymnasium's vector
    form (each key with a ``_key`` mask): ``distance`` (float64) for every drone at every step; ``is_success``
    (bool) and, on a crash, ``crash`` (object: the reason) for the drones whose episode ended; Waypoint-v0 adds
    ``waypoint_index`` (int64) for the drones that flew. These are exactly what ``SyncVectorEnv`` of N single
    envs returns. ``reset(seed=s)`` seeds drone i with s + i (or takes a list of N seeds); ``options=
    {"reset_mask": mask}`` resets only the masked drones.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, env_id: str, num_envs: int, render_mode: str | None = None, **env_kwargs):
        if env_id not in SINGLE_ENVS:
            hint = f"; the swarm already holds N drones in one world: make_env({SWARM_ID!r}, num_drones=N)"
            raise ValueError(
                f"DroneVectorEnv batches the single-drone envs {list(SINGLE_ENVS)}, got env_id={env_id!r}"
                + (hint if env_id == SWARM_ID else "")
            )
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is invalid: must be an integer >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r} is not supported; use None or 'rgb_array'")
        single = SINGLE_ENVS[env_id]
        self.env_id = env_id
        self.settings = single.settings_class.from_kwargs(env_kwargs)
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.settings.control_hz}
        self.single_observation_space, self.single_action_space = drone_spaces()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.sim = DroneSimulator(self.settings, num_drones=self.num_envs, drones_collide=False)
        self.rules = HoverRules(self.sim, self.settings)
        self.episodes = [single.episode_class(self.sim, i, self.rules) for i in range(self.num_envs)]
        self._batch = EpisodeBatch(self.sim, self.episodes)
        self._waypoints = env_id == WAYPOINT_ID
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._seeds: list[int | None] = [None] * self.num_envs
        self._started = False  # every drone has been reset once
        self._all = np.ones(self.num_envs, dtype=bool)

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """Every drone's random stream (its start, randomization, gusts and noise), as ``SyncVectorEnv`` has them."""
        return tuple(self._rngs)

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        return tuple(self._seeds)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        n = self.num_envs
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed: a list of seeds needs one per drone, num_envs={n}, got {len(seeds)}")
        mask = self._reset_mask(options)
        indices = np.flatnonzero(mask).tolist()
        for i in indices:
            if seeds[i] is not None or self._rngs[i] is None:  # as gymnasium.Env.reset keeps an unseeded stream
                self._rngs[i], self._seeds[i] = seeding.np_random(seeds[i])
        batch = self._batch
        batch.reset(indices, self._rngs)
        self._started = all(rng is not None for rng in self._rngs)
        infos = {"distance": np.where(mask, batch.distance, 0.0), "_distance": mask.copy()}
        return batch.observations.copy(), infos

    def _reset_mask(self, options: dict | None) -> np.ndarray:
        mask = (options or {}).get("reset_mask")
        if mask is None:
            return self._all.copy()
        mask = np.asarray(mask)
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with at least one True, "
                f"got {mask.dtype} of shape {mask.shape}"
            )
        return mask

    def step(self, actions):
        if not self._started:
            raise ResetNeeded("DroneVectorEnv: call reset() before step()")
        batch = self._batch
        if type(actions) is not np.ndarray or actions.dtype.char not in "fd":  # what policies give passes as it is
            actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, 4):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, 4) for action_mode={self.settings.action_mode!r}, "
                f"got shape {actions.shape}"
            )
        if not np.isfinite(actions).all():
            bad = np.flatnonzero(~np.isfinite(actions).all(axis=1) & ~batch.autoreset)  # a restarting drone's is unused
            if len(bad):
                raise ValueError(f"actions must be finite, got {actions[bad].tolist()} for drone(s) {bad.tolist()}")
        flew = ~batch.autoreset if self._waypoints else None
        ended = batch.step(actions.tolist(), self._rngs)
        infos = {"distance": batch.distance.copy(), "_distance": self._all.copy()}
        if ended:
            self._add_episode_ends(infos, ended)
        if flew is not None:
            indices = [episode.waypoint_index for episode in self.episodes]
            infos["waypoint_index"], infos["_waypoint_index"] = np.where(flew, indices, 0), flew
        return (
            batch.observations.copy(),
            batch.rewards.copy(),
            batch.terminated.copy(),
            batch.truncated.copy(),
            infos,
        )

    def _add_episode_ends(self, infos: dict, ended: list[tuple[int, str | None, bool]]) -> None:
        """``is_success`` for the drones whose episode ended, ``crash`` for those that crashed."""
        n = self.num_envs
        success, success_mask = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        crash, crash_mask = np.full(n, None, dtype=object), np.zeros(n, dtype=bool)
        for i, reason, succeeded in ended:
            success[i], success_mask[i] = succeeded, True
            if reason is not None:
                crash[i], crash_mask[i] = reason, True
        infos["is_success"], infos["_is_success"] = success, success_mask
        if crash_mask.any():
            infos["crash"], infos["_crash"] = crash, crash_mask

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One RGB frame per drone, a chase camera on it."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(self.sim.render(position, drone=i) for i, position in enumerate(self.sim.position))

    def close_extras(self, **kwargs: Any) -> None:
        if hasattr(self, "sim"):  # not when __init__ refused its arguments
            self.sim.close()


# Gymnasium's vector entry points (``gymnasium.make_vec(env_id, num_envs=N, vectorization_mode=
# "vector_entry_point", **kwargs)``): it passes num_envs and the env's options, not the id.
hover_vector_env = functools.partial(DroneVectorEnv, HOVER_ID)
waypoint_vector_env = functools.partial(DroneVectorEnv, WAYPOINT_ID)
