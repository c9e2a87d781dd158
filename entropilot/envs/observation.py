"""The builder of the observation every drone task emits, in the layout of ``entropilot.vehicle.layout``.

Compiled by Cython in pure-Python mode like ``physics`` (see there): ``ObservationWriter`` fills the float32
vector from C, at about half the cost of ``np.array(list_of_floats, dtype=np.float32)``.
"""

from __future__ import annotations

import cython
import numpy as np

from entropilot.envs.settings import SensorNoise
from entropilot.vehicle.layout import OBSERVATION_COLUMNS, OBSERVATION_SIZE

_POS_ERR, _ROTATION, _VELOCITY, _BODY_RATES = (
    OBSERVATION_COLUMNS[g] for g in ("pos_err", "rotation", "velocity", "body_rates")
)


def _perturbed_rotation(r, e) -> list[float]:
    """Row-major R (I + [e]x): a small body-frame rotation by ``e`` (rad) applied to R's 9 entries ``r``."""
    ex, ey, ez = e
    out = []
    for i in (0, 3, 6):
        a, b, c = r[i], r[i + 1], r[i + 2]
        out += (a + b * ez + c * -ey, a * -ez + b + c * ex, a * ey + b * -ex + c)
    return out


@cython.cclass
class ObservationWriter:
    """Builds one drone's noise-free observation: OBSERVATION_SIZE float32 in OBSERVATION_NAMES order.

    It writes into a float32 buffer whose memoryview it keeps and hands out a copy: acquiring a view of a new
    array each step would cost more than filling it.
    """

    buffer = cython.declare(object, visibility="readonly")
    _view = cython.declare(cython.float[:])

    def __init__(self):
        self.buffer = np.zeros(OBSERVATION_SIZE, dtype=np.float32)
        self._view = self.buffer

    @cython.ccall
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def write(self, drone, target) -> cython.void:
        """Fill ``buffer``. ``drone``: a simulator ``DroneState``, whose fields are the observation's groups
        (position where the error goes); ``target``: the (x, y, z) reference point."""
        out = self._view
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
    def observe(self, drone, target):
        """The observation as a new array."""
        self.write(drone, target)
        return self.buffer.copy()


def observe(sim, targets: np.ndarray, noise: SensorNoise, rng: np.random.Generator) -> np.ndarray:
    """(N, OBSERVATION_SIZE) float32 observations of every drone in ``sim`` (a DroneSimulator).

    The simulator keeps its state in observation order (``sim.drones`` and ``sim.state``, position where
    the error goes), so without noise this is the position error and a cast. With noise, one draw of
    (4, N, 3) standard normals gives the position, velocity, body-rate and attitude noise: the same
    numbers as four ``rng.normal`` draws in that order.
    """
    if not noise.enabled:
        writer = ObservationWriter()
        rows = zip(sim.drones, np.asarray(targets, dtype=float).tolist())
        return np.array([writer.observe(drone, target) for drone, target in rows])
    n = sim.num_drones
    scale = np.array([noise.position, noise.velocity, noise.angular_velocity, noise.attitude])
    draws = rng.standard_normal((4, n, 3)) * scale[:, None, None]
    obs = sim.state[:, :OBSERVATION_SIZE].copy()
    obs[:, _POS_ERR] = (sim.position + draws[0]) - targets
    obs[:, _VELOCITY] += draws[1]
    obs[:, _BODY_RATES] += draws[2]
    # A small random rotation keeps the matrix (nearly) orthonormal, unlike noise on each element.
    rotations = sim.rotation.reshape(n, 9).tolist()
    obs[:, _ROTATION] = [_perturbed_rotation(r, e) for r, e in zip(rotations, draws[3].tolist())]
    return obs.astype(np.float32)
