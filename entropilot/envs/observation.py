"""The observation layout every drone task emits (named, ordered: deploy writes it into the ONNX file) and its builder.

Compiled by Cython in pure-Python mode like ``physics`` (see there): ``ObservationWriter`` fills the float32
vector from C, at about half the cost of ``np.array(list_of_floats, dtype=np.float32)``.
"""

from __future__ import annotations

import cython
import numpy as np

from entropilot.envs.settings import SensorNoise

# (group, element names, meaning); order is the order in the observation vector.
OBSERVATION_GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("pos_err", ("pos_err_x", "pos_err_y", "pos_err_z"), "position minus target, world frame (z up), m"),
    (
        "rotation",
        ("r11", "r12", "r13", "r21", "r22", "r23", "r31", "r32", "r33"),
        "body-to-world rotation matrix, row-major",
    ),
    ("velocity", ("vel_x", "vel_y", "vel_z"), "linear velocity, world frame, m/s"),
    ("body_rates", ("rate_x", "rate_y", "rate_z"), "angular velocity, body frame (x forward, y left, z up), rad/s"),
    ("prev_action", ("prev_action_0", "prev_action_1", "prev_action_2", "prev_action_3"), "previous action in [-1, 1]"),
)
OBSERVATION_NAMES: tuple[str, ...] = tuple(name for _, names, _ in OBSERVATION_GROUPS for name in names)
OBSERVATION_SIZE = len(OBSERVATION_NAMES)


# Where each group sits in the observation vector.
OBSERVATION_COLUMNS: dict[str, slice] = {}
_start = 0
for _group, _names, _ in OBSERVATION_GROUPS:
    OBSERVATION_COLUMNS[_group] = slice(_start, _start + len(_names))
    _start += len(_names)
del _start, _group, _names
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
