"""Gymnasium drone environments on PyBullet (Crazyflie 2.x physics) and the RLlib multi-agent swarm.

Importing this package registers the single-drone ids with Gymnasium under the ``entropilot/``
namespace. ``make_env`` builds any id, the multi-agent swarm included; ``make_vector_env`` (or
``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``) N drones of a
single-drone id in one PyBullet world.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from entropilot.envs import compiled

compiled.prefer_current_sources()  # before the compiled modules are first imported

from entropilot.envs.settings import (  # noqa: E402
    ACTION_MODES,
    DroneSettings,
    HoverDiscreteSettings,
    HoverSettings,
    SwarmSettings,
    WaypointSettings,
)
from entropilot.vehicle.airframe import CRAZYFLIE_2X, Airframe  # noqa: E402
from entropilot.vehicle.layout import OBSERVATION_GROUPS, OBSERVATION_NAMES, OBSERVATION_SIZE  # noqa: E402

HOVER_ID = "entropilot/Hover-v0"
WAYPOINT_ID = "entropilot/Waypoint-v0"
SWARM_ID = "entropilot/Swarm-v0"
HOVER_DISCRETE_ID = "entropilot/HoverDiscrete-v0"

# id -> (entry point, settings class); the swarm is an RLlib MultiAgentEnv, so Gymnasium does not make it.
ENVIRONMENTS: dict[str, tuple[str, type[DroneSettings]]] = {
    HOVER_ID: ("entropilot.envs.single_drone:HoverEnv", HoverSettings),
    WAYPOINT_ID: ("entropilot.envs.single_drone:WaypointEnv", WaypointSettings),
    SWARM_ID: ("entropilot.envs.swarm:SwarmEnv", SwarmSettings),
    HOVER_DISCRETE_ID: ("entropilot.envs.discrete:HoverDiscreteEnv", HoverDiscreteSettings),
}
SINGLE_AGENT_IDS = (HOVER_ID, WAYPOINT_ID, HOVER_DISCRETE_ID)
# Single-drone envs whose action is a categorical command flown through an inner loop -> the env of the drone under
# it (the same task, with the simulator's own action): what a vehicle link simulates for a command policy.
COMMAND_ENVS = {HOVER_DISCRETE_ID: HOVER_ID}
# id -> the batched form: N drones in one PyBullet world (vector.py), what gymnasium.make_vec builds with
# vectorization_mode="vector_entry_point".
VECTOR_ENTRY_POINTS = {
    HOVER_ID: "entropilot.envs.vector:hover_vector_env",
    WAYPOINT_ID: "entropilot.envs.vector:waypoint_vector_env",
}

for _id in SINGLE_AGENT_IDS:
    if _id not in gym.registry:
        # No TimeLimit wrapper: the env truncates itself at episode_seconds (a wrapper would not know its rate).
        # No passive env checker: the test suite runs gymnasium's full check_env on every id, and the wrapper
        # would cost every step a call (~4 % of one).
        gym.register(
            id=_id,
            entry_point=ENVIRONMENTS[_id][0],
            vector_entry_point=VECTOR_ENTRY_POINTS.get(_id),  # the command task has no batched form yet
            disable_env_checker=True,
        )


def _known(env_id: str) -> None:
    if env_id not in ENVIRONMENTS:
        raise ValueError(f"unknown env id {env_id!r}; known: {sorted(ENVIRONMENTS)}")


def validate_env_kwargs(env_id: str, kwargs: dict) -> None:
    """Raise ValueError naming the bad option if ``kwargs`` would not build ``env_id`` (no simulator started)."""
    _known(env_id)
    ENVIRONMENTS[env_id][1].from_kwargs({k: v for k, v in kwargs.items() if k != "render_mode"})


def action_space(env_id: str, kwargs: dict | None = None) -> gym.spaces.Space:
    """One agent's action space of ``env_id`` with ``kwargs``, without starting a simulator (config validation
    uses it): Box([-1, 1]^4) in both action modes, MultiDiscrete for a command task."""
    from entropilot.envs.commands import command_space

    _known(env_id)
    settings = ENVIRONMENTS[env_id][1].from_kwargs({k: v for k, v in (kwargs or {}).items() if k != "render_mode"})
    levels = getattr(settings, "velocity_levels", None)
    return command_space(levels) if levels is not None else gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


def vehicle_env(env_id: str, kwargs: dict) -> tuple[str, dict]:
    """(id, kwargs) of the env a command env (``COMMAND_ENVS``) flies over, its command options dropped; any other
    env is its own vehicle."""
    _known(env_id)
    if env_id not in COMMAND_ENVS:
        return env_id, dict(kwargs)
    vehicle = COMMAND_ENVS[env_id]
    options = {f.name for f in dataclasses.fields(ENVIRONMENTS[vehicle][1])} | {"render_mode"}
    return vehicle, {k: v for k, v in kwargs.items() if k in options}


# Options that shape how a policy is trained, not the vehicle or its task: evaluation, export and flight drop them.
TRAINING_ONLY_OPTIONS = ("replay_crash_starts",)


def flight_kwargs(kwargs: dict) -> dict:
    """``kwargs`` of a training config as the env a trained policy is evaluated and flown in."""
    return {k: v for k, v in kwargs.items() if k not in TRAINING_ONLY_OPTIONS}


def make_env(env_id: str, **kwargs):
    """Build any entropilot env by id: a Gymnasium env, or for the swarm an RLlib MultiAgentEnv."""
    _known(env_id)
    if env_id in SINGLE_AGENT_IDS:
        return gym.make(env_id, **kwargs)
    module, name = ENVIRONMENTS[env_id][0].split(":")
    import importlib

    return getattr(importlib.import_module(module), name)(**kwargs)


def make_vector_env(env_id: str, num_envs: int, **kwargs):
    """``num_envs`` independent drones of a single-drone env id in one PyBullet world: a Gymnasium ``VectorEnv``
    (``vector.DroneVectorEnv``) whose drone i is ``make_env(env_id, **kwargs)`` seeded with seed + i."""
    from entropilot.envs.vector import DroneVectorEnv

    return DroneVectorEnv(env_id, num_envs, **kwargs)


__all__ = [
    "ACTION_MODES",
    "CRAZYFLIE_2X",
    "Airframe",
    "DroneSettings",
    "ENVIRONMENTS",
    "action_space",
    "TRAINING_ONLY_OPTIONS",
    "flight_kwargs",
    "COMMAND_ENVS",
    "HOVER_DISCRETE_ID",
    "HOVER_ID",
    "HoverDiscreteSettings",
    "HoverSettings",
    "OBSERVATION_GROUPS",
    "OBSERVATION_NAMES",
    "OBSERVATION_SIZE",
    "SINGLE_AGENT_IDS",
    "SWARM_ID",
    "SwarmSettings",
    "WAYPOINT_ID",
    "WaypointSettings",
    "VECTOR_ENTRY_POINTS",
    "action_space",
    "make_env",
    "make_vector_env",
    "validate_env_kwargs",
    "vehicle_env",
]
