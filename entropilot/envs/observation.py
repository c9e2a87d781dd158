"""The builder of the observation every drone task emits, in the layout of ``entropilot.vehicle.layout``.

Compiled by Cython in pure-Python mode like ``physics`` (see there): the writers fill a float32 vector (one drone's,
or a row of the vector env's batch) from C, at about half the cost of ``np.array(list_of_floats, dtype=np.float32)``.
"""

from __future__ import annotations

import cython
import numpy as np

if cython.compiled:  # C's libm, not a Python call; the same function either way
    from cython.cimports.libc.math import sqrt
else:
    from math import sqrt

from entropilot.envs.settings import SensorNoise
from entropilot.vehicle.layout import HEADING_NORM_MIN, OBSERVATION_COLUMNS, OBSERVATION_SIZE

assert [c.start for c in OBSERVATION_COLUMNS.values()] == [0, 3, 12, 15, 18], "the writers below fill these columns"


@cython.ccall
@cython.boundscheck(False)
@cython.wraparound(False)
def write_observation(out: cython.float[:], drone, target) -> cython.void:
    """Fill ``out`` (OBSERVATION_SIZE float32, e.g. one row of a batch) with one drone's noise-free observation.
    ``drone``: a simulator ``DroneState``, whose fields are the observation's groups (position where the error
    goes); ``target``: the (x, y, z) reference point."""
    i: cython.Py_ssize_t
    value: cython.double
    reference: cython.double
    position, rotation, velocity, body_rates, action = (
        drone.position,
        drone.rotation,
        drone.velocity,
        drone.body_rates,
        drone.action,
    )
    for i in range(3):
        value, reference = position[i], target[i]
        out[i] = value - reference
    for i in range(9):
        value = rotation[i]
        out[3 + i] = value
    for i in range(3):
        value = velocity[i]
        out[12 + i] = value
        value = body_rates[i]
        out[15 + i] = value
    for i in range(4):
        value = action[i]
        out[18 + i] = value


@cython.ccall
@cython.boundscheck(False)
@cython.wraparound(False)
def write_noisy_observation(out: cython.float[:], drone, target, noise: SensorNoise, z) -> cython.void:
    """``write_observation`` through sensor noise: ``z`` holds 12 standard normals, the position, velocity,
    body-rate and attitude draws in that order, scaled by ``noise``'s standard deviations. The attitude noise is
    a small body-frame rotation R (I + [e]x), which keeps the matrix (nearly) orthonormal, unlike noise on each
    element. Each value is computed in double, as the sum of the true value and its noise, then stored."""
    i: cython.Py_ssize_t
    value: cython.double
    noisy: cython.double
    s_position: cython.double = noise.position
    s_velocity: cython.double = noise.velocity
    s_rates: cython.double = noise.angular_velocity
    s_attitude: cython.double = noise.attitude
    position, rotation, velocity, body_rates, action = (
        drone.position,
        drone.rotation,
        drone.velocity,
        drone.body_rates,
        drone.action,
    )
    for i in range(3):
        value = z[i]
        noisy = position[i] + value * s_position
        value = target[i]
        out[i] = noisy - value
        value = z[3 + i]
        noisy = velocity[i] + value * s_velocity
        out[12 + i] = noisy
        value = z[6 + i]
        noisy = body_rates[i] + value * s_rates
        out[15 + i] = noisy
    value = z[9]
    ex: cython.double = value * s_attitude
    value = z[10]
    ey: cython.double = value * s_attitude
    value = z[11]
    ez: cython.double = value * s_attitude
    a: cython.double
    b: cython.double
    c: cython.double
    for i in range(0, 9, 3):
        a, b, c = rotation[i], rotation[i + 1], rotation[i + 2]
        out[3 + i] = a + b * ez + c * -ey
        out[4 + i] = a * -ez + b + c * ex
        out[5 + i] = a * ey + b * -ex + c
    for i in range(4):
        value = action[i]
        out[18 + i] = value


@cython.ccall
@cython.boundscheck(False)
@cython.wraparound(False)
def to_heading_frame(out: cython.float[:]) -> cython.void:
    """Turn a written observation about z by minus the drone's heading (read from its rotation matrix): the
    position error and velocity in the heading frame, and its rotation seen from there (heading 0), so the observation
    is the same at every heading. Body rates and the previous action are body-frame already. The exported policy
    graph does the same (``deploy.policy_graph.to_heading_frame``), so a vehicle link still sends the world frame."""
    r11: cython.double = out[3]
    r21: cython.double = out[6]
    norm: cython.double = sqrt(r11 * r11 + r21 * r21)
    if norm < HEADING_NORM_MIN:  # the body x axis vertical (a crash long before): as the graph's clamp does
        norm = HEADING_NORM_MIN
    c: cython.double = r11 / norm
    s: cython.double = r21 / norm
    # (x, y) pairs: the position error's and the velocity's horizontal components, then each column of the
    # rotation's first two rows (Rz(-heading) R changes rows 1 and 2 only).
    _turn(out, 0, 1, c, s)
    _turn(out, 12, 13, c, s)
    _turn(out, 3, 6, c, s)
    _turn(out, 4, 7, c, s)
    _turn(out, 5, 8, c, s)
    # r21 is 0 by construction: exactly, so that rounding (float32 in the exported graph, double here) never reaches
    # the policy through the observation filter, whose scale for a constant is its epsilon.
    out[6] = 0.0


@cython.cfunc
@cython.inline
@cython.boundscheck(False)
@cython.wraparound(False)
def _turn(
    out: cython.float[:], i: cython.Py_ssize_t, j: cython.Py_ssize_t, c: cython.double, s: cython.double
) -> cython.void:
    x: cython.double = out[i]
    y: cython.double = out[j]
    out[i] = c * x + s * y
    out[j] = -s * x + c * y


def observe(sim, targets: np.ndarray, noise: SensorNoise, rng: np.random.Generator) -> np.ndarray:
    """(N, OBSERVATION_SIZE) float32 observations of every drone in ``sim`` (a DroneSimulator), each at its
    reference point (``targets``, (N, 3)), all drones' noise from one stream.

    With noise, one draw of (4, N, 3) standard normals gives the position, velocity, body-rate and attitude
    noise of every drone: the same numbers as four ``rng.normal`` draws in that order.
    """
    n = sim.num_drones
    obs = np.empty((n, OBSERVATION_SIZE), dtype=np.float32)
    rows = zip(range(n), sim.drones, np.asarray(targets, dtype=float).reshape(n, 3).tolist())
    if not noise.enabled:
        for i, drone, target in rows:
            write_observation(obs[i], drone, target)
        return obs
    draws = rng.standard_normal((4, n, 3)).transpose(1, 0, 2).reshape(n, 12).tolist()
    for i, drone, target in rows:
        write_noisy_observation(obs[i], drone, target, noise, draws[i])
    return obs
