"""Reward, crash and success rules of the drone tasks, vectorized over drones so single and swarm envs share them."""

from __future__ import annotations

import math

import numpy as np

from entropilot.envs.settings import DroneSettings, HoverSettings

CRASH_PENALTY = 2.0


def hover_reward(pos_err: np.ndarray, velocity: np.ndarray, body_rates: np.ndarray, tilt_cos: np.ndarray,
                 action: np.ndarray, prev_action: np.ndarray) -> np.ndarray:
    """(N,) dense reward in (0, 1]: exp(-cost), so staying alive always beats crashing.

    The distance term dominates; velocity, spin, tilt and action changes are small costs that make
    the policy settle instead of orbit the target. Bounded below by 0 so a far-away drone is never
    better off ending the episode.
    """
    change = action - prev_action
    cost = (
        2.0 * norm(pos_err)
        + 0.1 * norm(velocity)
        + 0.05 * norm(body_rates)
        + 0.2 * (1.0 - tilt_cos)
        + 0.05 * np.einsum("ij,ij->i", change, change)
    )
    return np.exp(-cost)


def norm(v: np.ndarray) -> np.ndarray:
    """(N, k) -> (N,) Euclidean norms (einsum: a third of the cost of np.linalg.norm on tiny arrays)."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def crash_reasons(sim, settings: DroneSettings) -> list[str | None]:
    """Why each drone crashed this step (None = it did not): ground hit at speed, tilt past the limit, left the arena."""
    position, velocity = sim.position, sim.velocity
    on_ground = position[:, 2] <= sim.airframe.collision_half_extents[2] + 0.01
    fast = norm(velocity) > settings.crash_speed
    tilted = sim.tilt_cosine() < math.cos(math.radians(settings.max_tilt_deg))
    half = settings.arena_half_size
    outside = (np.abs(position[:, 0]) > half) | (np.abs(position[:, 1]) > half) | (position[:, 2] > 2 * half)
    reasons: list[str | None] = []
    for i in range(sim.num_drones):
        if on_ground[i] and fast[i]:
            reasons.append("ground_impact")
        elif tilted[i]:
            reasons.append("tilt")
        elif outside[i]:
            reasons.append("left_arena")
        else:
            reasons.append(None)
    return reasons


class SuccessTracker:
    """Counts consecutive steps inside the success radius; success = the last `success_seconds` all inside."""

    def __init__(self, settings: HoverSettings, num_drones: int):
        self.radius = settings.success_radius
        self.required_steps = int(round(settings.success_seconds * settings.control_hz))
        self.inside_steps = np.zeros(num_drones, dtype=np.int64)

    def reset(self) -> None:
        self.inside_steps[:] = 0

    def update(self, distance: np.ndarray) -> None:
        inside = distance <= self.radius
        self.inside_steps = np.where(inside, self.inside_steps + 1, 0)

    def succeeded(self) -> np.ndarray:
        return self.inside_steps >= self.required_steps
