"""Reward, crash and success rules of the drone tasks: written per drone in plain floats (a single-drone
step calls them directly), with loops over drones for the swarm, so both envs share one rule each."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from entropilot.envs.settings import DroneSettings, HoverSettings

CRASH_PENALTY = 2.0


def hover_reward(pos_err: np.ndarray, velocity: np.ndarray, body_rates: np.ndarray, tilt_cos: np.ndarray,
                 action: np.ndarray, prev_action: np.ndarray) -> np.ndarray:
    """(N,) ``drone_hover_reward`` of every drone, from (N, k) arrays."""
    rows = zip(
        np.asarray(pos_err).tolist(),
        np.asarray(velocity).tolist(),
        np.asarray(body_rates).tolist(),
        np.asarray(tilt_cos).tolist(),
        np.asarray(action).tolist(),
        np.asarray(prev_action).tolist(),
    )
    return np.array([drone_hover_reward(*row) for row in rows])


def drone_hover_reward(pos_err, velocity, body_rates, tilt_cos: float, action, prev_action) -> float:
    """Dense reward in (0, 1]: exp(-cost), so staying alive always beats crashing.

    The distance term dominates; velocity, spin, tilt and action changes are small costs that make
    the policy settle instead of orbit the target. Bounded below by 0 so a far-away drone is never
    better off ending the episode.
    """
    a0, a1, a2, a3 = action
    b0, b1, b2, b3 = prev_action
    d0, d1, d2, d3 = a0 - b0, a1 - b1, a2 - b2, a3 - b3
    cost = (
        2.0 * norm3(pos_err)
        + 0.1 * norm3(velocity)
        + 0.05 * norm3(body_rates)
        + 0.2 * (1.0 - tilt_cos)
        + 0.05 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3)
    )
    return math.exp(-cost)


def norm3(v) -> float:
    """Euclidean norm of one 3-vector of floats."""
    x, y, z = v
    return math.sqrt(x * x + y * y + z * z)


def norm(v: np.ndarray) -> np.ndarray:
    """(N, k) -> (N,) Euclidean norms (einsum: a third of the cost of np.linalg.norm on tiny arrays)."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


@dataclass(frozen=True)
class CrashRules:
    """Ground hit at speed, tilt past the limit, left the arena: the limits, worked out once per env."""

    floor: float  # m: body centre this low touches the ground
    crash_speed: float  # m/s
    min_tilt_cos: float
    arena_half_size: float  # m

    @classmethod
    def of(cls, sim, settings: DroneSettings) -> "CrashRules":
        floor = sim.airframe.collision_half_extents[2] + 0.01
        return cls(floor, settings.crash_speed, math.cos(math.radians(settings.max_tilt_deg)), settings.arena_half_size)

    def reason(self, position, velocity, tilt_cos: float) -> str | None:
        """Why a drone at ``position`` with ``velocity`` crashed (None = it did not)."""
        x, y, z = position
        half = self.arena_half_size
        if z <= self.floor and norm3(velocity) > self.crash_speed:
            return "ground_impact"
        if tilt_cos < self.min_tilt_cos:
            return "tilt"
        if abs(x) > half or abs(y) > half or z > 2 * half:
            return "left_arena"
        return None


def crash_reasons(sim, settings: DroneSettings) -> list[str | None]:
    """Why each drone crashed this step (None = it did not): ground hit at speed, tilt past the limit, left the arena."""
    rules = CrashRules.of(sim, settings)
    return [rules.reason(d.position, d.velocity, d.rotation[8]) for d in sim.drones]


class SuccessTracker:
    """Counts consecutive steps inside the success radius; success = the last `success_seconds` all inside."""

    def __init__(self, settings: HoverSettings, num_drones: int):
        self.radius = settings.success_radius
        self.required_steps = int(round(settings.success_seconds * settings.control_hz))
        self.num_drones = num_drones
        self.reset()

    def reset(self) -> None:
        self.inside_steps = [0] * self.num_drones

    def update(self, distances) -> None:
        """``distances``: one per drone. Counts up inside, back to 0 outside (NaN counts as outside)."""
        radius = self.radius
        self.inside_steps = [k + 1 if d <= radius else 0 for k, d in zip(self.inside_steps, distances)]

    def succeeded(self) -> list[bool]:
        required = self.required_steps
        return [k >= required for k in self.inside_steps]
