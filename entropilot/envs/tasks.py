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
    rows = zip(
        np.asarray(pos_err).tolist(),
        np.asarray(velocity).tolist(),
        np.asarray(body_rates).tolist(),
        np.asarray(tilt_cos).tolist(),
        np.asarray(action).tolist(),
        np.asarray(prev_action).tolist(),
    )
    return np.array([_drone_hover_reward(*row) for row in rows])


def _drone_hover_reward(pos_err, velocity, body_rates, tilt_cos: float, action, prev_action) -> float:
    change = 0.0
    for a, b in zip(action, prev_action):
        change += (a - b) * (a - b)
    cost = (
        2.0 * _norm(pos_err)
        + 0.1 * _norm(velocity)
        + 0.05 * _norm(body_rates)
        + 0.2 * (1.0 - tilt_cos)
        + 0.05 * change
    )
    return math.exp(-cost)


def _norm(v) -> float:
    x, y, z = v
    return math.sqrt(x * x + y * y + z * z)


def norm(v: np.ndarray) -> np.ndarray:
    """(N, k) -> (N,) Euclidean norms (einsum: a third of the cost of np.linalg.norm on tiny arrays)."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def crash_reasons(sim, settings: DroneSettings) -> list[str | None]:
    """Why each drone crashed this step (None = it did not): ground hit at speed, tilt past the limit, left the arena."""
    floor = sim.airframe.collision_half_extents[2] + 0.01
    min_tilt_cos = math.cos(math.radians(settings.max_tilt_deg))
    crash_speed = settings.crash_speed
    half = settings.arena_half_size
    reasons: list[str | None] = []
    for (x, y, z), velocity, tilt_cos in zip(sim.position.tolist(), sim.velocity.tolist(), sim.tilt_cosine().tolist()):
        if z <= floor and _norm(velocity) > crash_speed:
            reasons.append("ground_impact")
        elif tilt_cos < min_tilt_cos:
            reasons.append("tilt")
        elif abs(x) > half or abs(y) > half or z > 2 * half:
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
        # Counts up inside, back to 0 outside (an int64 times a bool stays int64).
        self.inside_steps = (self.inside_steps + 1) * (distance <= self.radius)

    def succeeded(self) -> np.ndarray:
        return self.inside_steps >= self.required_steps
