"""Reward, crash and success rules of the drone tasks, per drone: a single-drone env applies them to its drone,
the swarm to each of its drones, so both envs share one rule each.

Compiled by Cython in pure-Python mode like ``physics`` (see there): the ``cython.*`` annotations make the
per-drone rules C arithmetic; uncompiled they run as plain Python with the same numbers.
"""

from __future__ import annotations

import math

import cython

if cython.compiled:  # C's libm, not a Python call; the same functions either way
    from cython.cimports.libc.math import exp, sqrt
else:
    from math import exp, sqrt

from entropilot.envs.settings import HoverSettings

CRASH_PENALTY = 2.0


@cython.ccall
def drone_hover_reward(pos_err, velocity, body_rates, tilt_cos: cython.double, action, prev_action) -> cython.double:
    """Dense reward in (0, 1]: exp(-cost), so staying alive always beats crashing.

    The distance term dominates; velocity, spin, tilt and action changes are small costs that make
    the policy settle instead of orbit the target. Bounded below by 0 so a far-away drone is never
    better off ending the episode.
    """
    d0: cython.double = action[0] - prev_action[0]
    d1: cython.double = action[1] - prev_action[1]
    d2: cython.double = action[2] - prev_action[2]
    d3: cython.double = action[3] - prev_action[3]
    cost: cython.double = (
        2.0 * norm3(pos_err)
        + 0.1 * norm3(velocity)
        + 0.05 * norm3(body_rates)
        + 0.2 * (1.0 - tilt_cos)
        + 0.05 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3)
    )
    return exp(-cost)


@cython.ccall
def norm3(v) -> cython.double:
    """Euclidean norm of one 3-vector of floats."""
    x: cython.double = v[0]
    y: cython.double = v[1]
    z: cython.double = v[2]
    return sqrt(x * x + y * y + z * z)


@cython.ccall
def position_error(position, target) -> tuple:
    """``position - target`` for two 3-vectors of floats."""
    return (position[0] - target[0], position[1] - target[1], position[2] - target[2])


@cython.cclass
class HoverRules:
    """What a step means for each drone of a hover-style task: its reward, whether it crashed (ground hit at
    speed, tilt past the limit, left the arena) and how long it has stayed inside the success radius
    (success = inside for the last ``success_seconds`` of the episode)."""

    floor = cython.declare(cython.double, visibility="readonly")  # m: body centre this low touches the ground
    crash_speed = cython.declare(cython.double, visibility="readonly")  # m/s
    min_tilt_cos = cython.declare(cython.double, visibility="readonly")
    arena_half_size = cython.declare(cython.double, visibility="readonly")  # m
    success_radius = cython.declare(cython.double, visibility="readonly")  # m
    required_steps = cython.declare(cython.Py_ssize_t, visibility="readonly")
    inside_steps = cython.declare(list, visibility="readonly")  # per drone: consecutive steps inside the radius

    def __init__(self, sim, settings: HoverSettings):
        self.floor = sim.airframe.collision_half_extents[2] + 0.01
        self.crash_speed = settings.crash_speed
        self.min_tilt_cos = math.cos(math.radians(settings.max_tilt_deg))
        self.arena_half_size = settings.arena_half_size
        self.success_radius = settings.success_radius
        self.required_steps = int(round(settings.success_seconds * settings.control_hz))
        self.inside_steps = [0] * sim.num_drones

    def reset(self) -> None:
        """A new episode: no drone has been inside the success radius yet."""
        self.inside_steps = [0] * len(self.inside_steps)

    @cython.ccall
    def reset_drone(self, i: cython.Py_ssize_t) -> cython.void:
        """A new episode of drone ``i`` alone (or a new reference point it must reach and hold)."""
        self.inside_steps[i] = 0

    @cython.ccall
    def evaluate(self, i: cython.Py_ssize_t, drone, target, prev_action) -> tuple:
        """Drone ``i`` after a step (a simulator ``DroneState``), its reference point ``target`` and the action
        before this step's -> (reward, distance to the target, crash reason or None). Counts its success steps."""
        position, velocity = drone.position, drone.velocity
        pos_err = position_error(position, target)
        distance: cython.double = norm3(pos_err)
        tilt_cos: cython.double = drone.rotation[8]
        reward = drone_hover_reward(pos_err, velocity, drone.body_rates, tilt_cos, drone.action, prev_action)
        # NaN counts as outside
        self.inside_steps[i] = self.inside_steps[i] + 1 if distance <= self.success_radius else 0
        return reward, distance, self.crash_reason(position, velocity, tilt_cos)

    @cython.ccall
    def crash_reason(self, position, velocity, tilt_cos: cython.double):
        """Why a drone at ``position`` with ``velocity`` and tilt cosine ``tilt_cos`` crashed (None = it did not)."""
        x: cython.double = position[0]
        y: cython.double = position[1]
        z: cython.double = position[2]
        half: cython.double = self.arena_half_size
        if z <= self.floor and norm3(velocity) > self.crash_speed:
            return "ground_impact"
        if tilt_cos < self.min_tilt_cos:
            return "tilt"
        if abs(x) > half or abs(y) > half or z > 2 * half:
            return "left_arena"
        return None

    @cython.ccall
    def succeeded(self, i: cython.Py_ssize_t) -> cython.bint:
        """Whether drone ``i`` has been inside the success radius for the last ``success_seconds``."""
        return self.inside_steps[i] >= self.required_steps
