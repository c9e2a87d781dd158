"""The quadrotor physics model shared by every backend: rotors with lag, mixer, rate loop, aerodynamics.
Over 450 lines: the models of one control period in one compiled module, calling each other at C level.

Each model is written once, per drone, in scalar floats, and ``DronePhysics`` chains them into one control
period of one drone (action in, body wrench out). The simulator calls that once per drone, so one code path
serves a single-drone task and a swarm; the array methods (N rows in, N rows out) call the same per-drone
code. Only the pairwise downwash is vectorized with numpy. A backend (PyBullet here) only integrates the
wrench computed here.

This module is compiled: ``setup.py`` runs it through Cython, which reads the ``cython.*`` annotations as C
types (pure-Python mode), so a control period runs as C arithmetic instead of ~100 interpreted float
operations. Without a C compiler it runs as the plain Python it is, with the same numbers, slower. Every
formula keeps its operation order, so both agree to the last bit (the build turns off FMA contraction).
"""

from __future__ import annotations

import math

import cython
import numpy as np

if cython.compiled:  # C's libm, not a Python call; the same functions either way
    from cython.cimports.libc.math import sqrt
else:
    from math import sqrt

from entropilot.vehicle.airframe import Airframe

# X layout, rotors numbered 0 front-right, 1 back-right, 2 back-left, 3 front-left (body x forward,
# y left, z up). Spin +1 = counter-clockwise seen from above; reaction torque on the body is opposite.
_ROTOR_DIRECTIONS = np.array([(1, -1), (-1, -1), (-1, 1), (1, 1)], dtype=float) / math.sqrt(2.0)
# CCW, CW, CCW, CW: as the Crazyflie 2.x firmware's mixer (power_distribution_quadrotor.c) lowers M1 (front
# right) for a positive yaw torque, and as gym-pybullet-drones has it, so a ``motors`` policy sees real yaw.
ROTOR_SPIN = np.array([1.0, -1.0, 1.0, -1.0])

# What the per-drone models return: C tuples of doubles when compiled (no Python objects between them).
Floats3 = cython.typedef(tuple[cython.double, cython.double, cython.double])
Floats4 = cython.typedef(tuple[cython.double, cython.double, cython.double, cython.double])


@cython.cfunc
@cython.inline
def _rotate_to_body(r, v0: cython.double, v1: cython.double, v2: cython.double) -> Floats3:
    """R^T v for one drone: ``r`` the 9 row-major entries of body-to-world R, (v0, v1, v2) a world vector."""
    r0: cython.double = r[0]
    r1: cython.double = r[1]
    r2: cython.double = r[2]
    r3: cython.double = r[3]
    r4: cython.double = r[4]
    r5: cython.double = r[5]
    r6: cython.double = r[6]
    r7: cython.double = r[7]
    r8: cython.double = r[8]
    return (v0 * r0 + v1 * r3 + v2 * r6, v0 * r1 + v1 * r4 + v2 * r7, v0 * r2 + v1 * r5 + v2 * r8)


@cython.cclass
class DroneState:
    """One drone's state after a step or placement, as plain floats: what ``DronePhysics`` and the per-drone task
    code read. Read-only; the simulator makes a new one every step."""

    position = cython.declare(tuple, visibility="readonly")  # m, world
    rotation = cython.declare(tuple, visibility="readonly")  # the 9 entries of body-to-world R, row-major
    velocity = cython.declare(tuple, visibility="readonly")  # m/s, world
    body_rates = cython.declare(tuple, visibility="readonly")  # rad/s, body
    action = cython.declare(list, visibility="readonly")  # the clipped action of the last step
    quaternion = cython.declare(tuple, visibility="readonly")  # (x, y, z, w)

    def __repr__(self) -> str:
        fields = ("position", "rotation", "velocity", "body_rates", "action", "quaternion")
        return "DroneState(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in fields) + ")"


@cython.ccall
def rotation_matrix(quaternion) -> tuple:
    """The 9 row-major entries of the body-to-world rotation of ``quaternion`` (x, y, z, w).

    Bullet's btMatrix3x3::setRotation, as pybullet's getMatrixFromQuaternion writes it: the same numbers,
    without a call into pybullet and its argument parsing."""
    x: cython.double = quaternion[0]
    y: cython.double = quaternion[1]
    z: cython.double = quaternion[2]
    w: cython.double = quaternion[3]
    s: cython.double = 2.0 / (x * x + y * y + z * z + w * w)
    xs: cython.double = x * s
    ys: cython.double = y * s
    zs: cython.double = z * s
    wx: cython.double = w * xs
    wy: cython.double = w * ys
    wz: cython.double = w * zs
    xx: cython.double = x * xs
    xy: cython.double = x * ys
    xz: cython.double = x * zs
    yy: cython.double = y * ys
    yz: cython.double = y * zs
    zz: cython.double = z * zs
    return (1.0 - (yy + zz), xy - wz, xz + wy, xy + wz, 1.0 - (xx + zz), yz - wx, xz - wy, yz + wx, 1.0 - (xx + yy))


@cython.ccall
def drone_state(position, quaternion, velocity, angular_velocity, action):
    """A ``DroneState`` from a backend's pose and twist (world frame) and the action that led there: adds the
    rotation matrix of the quaternion and the body-frame angular velocity (what a gyro measures)."""
    r = rotation_matrix(quaternion)
    w0: cython.double = angular_velocity[0]
    w1: cython.double = angular_velocity[1]
    w2: cython.double = angular_velocity[2]
    state: DroneState = DroneState.__new__(DroneState)  # a compiled class's fast path: no __init__ call
    state.position, state.rotation, state.velocity = position, r, velocity
    state.body_rates, state.action, state.quaternion = _rotate_to_body(r, w0, w1, w2), action, quaternion
    return state


def rotor_positions(airframe: Airframe) -> np.ndarray:
    """(4, 2) rotor (x, y) positions in the body frame, metres."""
    return _ROTOR_DIRECTIONS * airframe.arm


def allocation_matrix(airframe: Airframe) -> np.ndarray:
    """(4, 4) map from rotor thrusts [N] to [collective thrust, tau_x, tau_y, tau_z]."""
    xy = rotor_positions(airframe)
    yaw_per_newton = airframe.km / airframe.kf
    return np.stack([np.ones(4), xy[:, 1], -xy[:, 0], -ROTOR_SPIN * yaw_per_newton])


@cython.cclass
class Wrench:
    """Mean rotor rpm^2 over the period -> body [collective thrust, tau_x, tau_y, tau_z], per drone.

    Rotor thrust T_i = kf rpm_i^2 g_i (g_i the ground-effect gain, 1 without); tau = sum over rotors of
    (y_i T_i, -x_i T_i, -spin_i km rpm_i^2): the rows of ``allocation_matrix``.
    """

    _y = cython.declare(cython.double[4])
    _minus_x = cython.declare(cython.double[4])
    _yaw = cython.declare(cython.double[4])

    def __init__(self, airframe: Airframe):
        xy = rotor_positions(airframe)
        self._y = xy[:, 1].tolist()
        self._minus_x = (-xy[:, 0]).tolist()
        self._yaw = (-ROTOR_SPIN).tolist()

    @cython.ccall
    def of(
        self,
        m0: cython.double,
        m1: cython.double,
        m2: cython.double,
        m3: cython.double,
        kf: cython.double,
        km: cython.double,
        g0: cython.double,
        g1: cython.double,
        g2: cython.double,
        g3: cython.double,
    ) -> Floats4:
        """Mean rpm^2 of the 4 rotors, kf, km and the 4 thrust gains -> (collective, tau_x, tau_y, tau_z)."""
        t0: cython.double = kf * m0 * g0
        t1: cython.double = kf * m1 * g1
        t2: cython.double = kf * m2 * g2
        t3: cython.double = kf * m3 * g3
        y, x, s = self._y, self._minus_x, self._yaw
        return (
            t0 + t1 + t2 + t3,
            t0 * y[0] + t1 * y[1] + t2 * y[2] + t3 * y[3],
            t0 * x[0] + t1 * x[1] + t2 * x[2] + t3 * x[3],
            km * (m0 * s[0] + m1 * s[1] + m2 * s[2] + m3 * s[3]),
        )


@cython.cclass
class RotorLag:
    """One drone's four rotors: first-order speed lag, integrated exactly over the substeps of a control period.

    The backend holds the wrench constant for a control period, so what matters is the mean of
    rpm^2 over the substeps the period spans (that mean gives the same impulse as applying the lagged
    thrust substep by substep). For rpm_k = c + d * a^k, k = 1..S: mean(rpm_k^2) = c^2 + 2 c d p1 + d^2 p2
    with p1 = mean(a^k), p2 = mean(a^2k): closed form, no per-substep loop.
    """

    _rpm = cython.declare(cython.double[4])
    _a_final = cython.declare(cython.double)  # a^S
    _two_p1 = cython.declare(cython.double)
    _p2 = cython.declare(cython.double)

    def __init__(self):
        self._rpm = [0.0, 0.0, 0.0, 0.0]
        self._a_final, self._two_p1, self._p2 = 0.0, 0.0, 0.0

    @property
    def rpm(self) -> list[float]:
        """The 4 current rotor speeds [RPM]."""
        return [self._rpm[0], self._rpm[1], self._rpm[2], self._rpm[3]]

    @rpm.setter
    def rpm(self, value) -> None:
        self._rpm = [float(v) for v in value]

    def set_coefficients(self, a_final: float, two_p1: float, p2: float) -> None:
        self._a_final, self._two_p1, self._p2 = a_final, two_p1, p2

    @cython.ccall
    def advance(self, c0: cython.double, c1: cython.double, c2: cython.double, c3: cython.double) -> Floats4:
        """Advance one control period toward the commanded speeds; returns mean rpm^2 over it."""
        a_final, two_p1, p2, r = self._a_final, self._two_p1, self._p2, self._rpm
        d0: cython.double = r[0] - c0
        d1: cython.double = r[1] - c1
        d2: cython.double = r[2] - c2
        d3: cython.double = r[3] - c3
        self._rpm = [c0 + a_final * d0, c1 + a_final * d1, c2 + a_final * d2, c3 + a_final * d3]
        return (
            c0 * c0 + two_p1 * c0 * d0 + p2 * d0 * d0,
            c1 * c1 + two_p1 * c1 * d1 + p2 * d1 * d1,
            c2 * c2 + two_p1 * c2 * d2 + p2 * d2 * d2,
            c3 * c3 + two_p1 * c3 * d3 + p2 * d3 * d3,
        )

    @cython.ccall
    def rpm_sum(self) -> cython.double:
        r = self._rpm
        return r[0] + r[1] + r[2] + r[3]


class RotorModel:
    """The rotors of N drones (one ``RotorLag`` each), with their time constants and (N, 4) array views."""

    def __init__(self, num_drones: int, substeps: int, physics_dt: float):
        self.substeps = substeps
        self.physics_dt = physics_dt
        self.num_drones = num_drones
        self.drones = [RotorLag() for _ in range(num_drones)]
        self.set_time_constants(np.full(num_drones, 0.05))

    @property
    def rpm(self) -> np.ndarray:
        """(N, 4) current rotor speeds [RPM] (a copy: assign the attribute to change them)."""
        return np.array([d.rpm for d in self.drones])

    @rpm.setter
    def rpm(self, value) -> None:
        for d, row in zip(self.drones, np.broadcast_to(np.asarray(value, dtype=float), (self.num_drones, 4)).tolist()):
            d.rpm = row

    def reset(self, rpm: float) -> None:
        """Every rotor of every drone at ``rpm``."""
        for d in self.drones:
            d.rpm = [float(rpm)] * 4

    def set_time_constants(self, tau: np.ndarray) -> None:
        """Every drone's rotor time constant [s] (``tau``: N values)."""
        for d, coefficients in zip(self.drones, self._lag_coefficients(tau)):
            d.set_coefficients(*coefficients)

    def set_time_constant(self, i: int, tau: float) -> None:
        """Drone ``i``'s rotor time constant [s]: the numbers ``set_time_constants`` gives it."""
        self.drones[i].set_coefficients(*self._lag_coefficients([tau])[0])

    def _lag_coefficients(self, tau) -> list[tuple[float, float, float]]:
        """Per time constant: (a^S, 2 mean(a^k), mean(a^2k)) over the S substeps, a the per-substep decay."""
        decay = np.exp(-self.physics_dt / np.asarray(tau, dtype=float))[:, None]  # (N, 1)
        k = np.arange(1, self.substeps + 1)
        return list(
            zip(
                (decay[:, 0] ** self.substeps).tolist(),
                (2.0 * np.mean(decay**k, axis=1)).tolist(),
                np.mean(decay ** (2 * k), axis=1).tolist(),
            )
        )

    def advance(self, rpm_command: np.ndarray) -> np.ndarray:
        """Advance one control period toward ``rpm_command`` (N, 4); returns (N, 4) mean rpm^2 over it."""
        rows = np.asarray(rpm_command, dtype=float).tolist()
        return np.array([d.advance(*row) for d, row in zip(self.drones, rows)])


@cython.cclass
class Mixer:
    """Nominal thrust/torque allocation, as flight firmware does it (it does not know the true kf, km)."""

    max_thrust = cython.declare(cython.double, visibility="readonly")
    _from_collective = cython.declare(cython.double[4])
    _from_torque = cython.declare(cython.double[12])  # rotor-major (tx, ty, tz) weights
    _kf = cython.declare(cython.double)

    def __init__(self, airframe: Airframe):
        self.max_thrust = airframe.max_thrust_per_motor
        inverse = np.linalg.inv(allocation_matrix(airframe)).T  # rows: [T, tx, ty, tz] -> rotor
        self._from_collective = inverse[0].tolist()
        self._from_torque = inverse[1:].T.ravel().tolist()
        self._kf = airframe.kf

    @cython.ccall
    def drone_rotor_thrusts(
        self, collective: cython.double, tx: cython.double, ty: cython.double, tz: cython.double
    ) -> Floats4:
        """One drone: thrust [N] and torque (tau_x, tau_y, tau_z) [N m] -> 4 rotor thrusts in [0, max].

        Capped as the Crazyflie firmware caps them (``powerDistributionCap``): when a rotor would exceed its maximum,
        every rotor gives up that excess, so the torque survives and the collective thrust yields; then none goes
        below 0. Clipping each rotor on its own instead loses the torque at full thrust (at full collective, all
        four clip to the maximum and no torque is left to stop a rotation), which is not how a vehicle flies."""
        c, w = self._from_collective, self._from_torque
        t0: cython.double = collective * c[0] + (tx * w[0] + ty * w[1] + tz * w[2])
        t1: cython.double = collective * c[1] + (tx * w[3] + ty * w[4] + tz * w[5])
        t2: cython.double = collective * c[2] + (tx * w[6] + ty * w[7] + tz * w[8])
        t3: cython.double = collective * c[3] + (tx * w[9] + ty * w[10] + tz * w[11])
        # max(t0, t1, t2, t3) and max(t - excess, 0), written out: in plain Python a builtin call costs more.
        highest: cython.double = t0 if t0 > t1 else t1
        highest = highest if highest > t2 else t2
        highest = highest if highest > t3 else t3
        excess: cython.double = highest - self.max_thrust
        if excess > 0.0:
            t0, t1, t2, t3 = t0 - excess, t1 - excess, t2 - excess, t3 - excess
        return (
            0.0 if t0 < 0.0 else t0,
            0.0 if t1 < 0.0 else t1,
            0.0 if t2 < 0.0 else t2,
            0.0 if t3 < 0.0 else t3,
        )

    def rotor_thrusts(self, collective: np.ndarray, torque: np.ndarray) -> np.ndarray:
        """(N,) thrust [N] and (N, 3) torque [N m] -> (N, 4) rotor thrusts in [0, max], capped as one drone's."""
        rows = zip(np.asarray(collective, dtype=float).tolist(), np.asarray(torque, dtype=float).tolist())
        return np.array([self.drone_rotor_thrusts(c, *t) for c, t in rows])

    @cython.ccall
    def drone_rpm_from_thrust(
        self, t0: cython.double, t1: cython.double, t2: cython.double, t3: cython.double
    ) -> Floats4:
        """One drone's 4 rotor thrusts [N] -> rotor speeds [RPM] (nominal kf)."""
        kf: cython.double = self._kf
        return sqrt(t0 / kf), sqrt(t1 / kf), sqrt(t2 / kf), sqrt(t3 / kf)

    def rpm_from_thrust(self, thrust: np.ndarray) -> np.ndarray:
        """(N, 4) rotor thrusts [N] -> (N, 4) rotor speeds [RPM] (nominal kf)."""
        return np.array([self.drone_rpm_from_thrust(*row) for row in np.asarray(thrust, dtype=float).tolist()])


@cython.cclass
class RateController:
    """Body-rate P loop with gyroscopic feed-forward: tau = I k (w_des - w) + w x I w.

    It runs once per control step (the firmware runs it at 500 Hz; at 48 Hz a gain of a few
    times the control rate stays stable with rotor lag around 0.05 s).
    """

    _inertia_gain = cython.declare(cython.double[3])
    _gyro = cython.declare(cython.double[3])

    def __init__(self, airframe: Airframe, gain: tuple[float, float, float] = (20.0, 20.0, 8.0)):
        ixx, iyy, izz = airframe.inertia
        self._inertia_gain = [i * k for i, k in zip(airframe.inertia, gain)]
        # w x I w for a diagonal inertia: [(izz - iyy) wy wz, (ixx - izz) wz wx, (iyy - ixx) wx wy]
        self._gyro = [izz - iyy, ixx - izz, iyy - ixx]

    @cython.ccall
    def drone_torque(
        self,
        r0: cython.double,
        r1: cython.double,
        r2: cython.double,
        w0: cython.double,
        w1: cython.double,
        w2: cython.double,
    ) -> Floats3:
        """One drone: desired (r0, r1, r2) and measured (w0, w1, w2) body rates [rad/s] -> body torque [N m]."""
        k, g = self._inertia_gain, self._gyro
        return (
            k[0] * (r0 - w0) + g[0] * w1 * w2,
            k[1] * (r1 - w1) + g[1] * w2 * w0,
            k[2] * (r2 - w2) + g[2] * w0 * w1,
        )

    def torque(self, rate_setpoint: np.ndarray, body_rates: np.ndarray) -> np.ndarray:
        """(N, 3) desired and measured body rates -> (N, 3) torques."""
        rows = zip(np.asarray(rate_setpoint, dtype=float).tolist(), np.asarray(body_rates, dtype=float).tolist())
        return np.array([self.drone_torque(*r, *w) for r, w in rows])


@cython.cclass
class Aerodynamics:
    """State-dependent forces: rotor drag (Forster 2015), ground effect (Shi et al. 2019), downwash.

    Evaluated once per control step from the state at its start and held over the period.
    """

    airframe = cython.declare(object, visibility="readonly")
    drag = cython.declare(cython.bint, visibility="readonly")
    ground_effect = cython.declare(cython.bint, visibility="readonly")
    downwash = cython.declare(cython.bint, visibility="readonly")
    ground_effect_min_height = cython.declare(cython.double, visibility="readonly")
    _drag_per_rpm = cython.declare(cython.double[3])
    _rotor_xy = cython.declare(cython.double[8])  # x0, y0, x1, y1, ...
    _ground_effect_k = cython.declare(cython.double)

    def __init__(self, airframe: Airframe, drag: bool, ground_effect: bool, downwash: bool):
        self.airframe = airframe
        self.drag = drag
        self.ground_effect = ground_effect
        self.downwash = downwash
        # Forster's coefficients multiply rotor speed in rad/s; fold the RPM conversion in once.
        coefficients = np.array([airframe.drag_xy, airframe.drag_xy, airframe.drag_z])
        self._drag_per_rpm = (coefficients * (2.0 * math.pi / 60.0)).tolist()
        self._rotor_xy = rotor_positions(airframe).ravel().tolist()
        self._ground_effect_k = airframe.ground_effect_coeff * (airframe.prop_radius / 4.0) ** 2
        # Below this height the ground-effect fit diverges; clip it there (gain 1 + 1/15). gym-pybullet-drones'
        # formula divides by the total max thrust (4x this), which gives half this height and a gain of 1 + 4/15.
        self.ground_effect_min_height = (
            0.25
            * airframe.prop_radius
            * math.sqrt(
                15 * airframe.max_rpm**2 * airframe.kf * airframe.ground_effect_coeff / airframe.max_thrust_per_motor
            )
        )

    @cython.ccall
    def drone_ground_effect_gain(self, z: cython.double, r) -> Floats4:
        """One drone at height ``z`` with rotation entries ``r`` (row-major): per-rotor thrust gain
        1 + c (prop_radius / 4h)^2 at rotor height h; 1 everywhere when off or not level."""
        r22: cython.double = r[8]
        # The fit holds for a roughly level vehicle only.
        if not self.ground_effect or not r22 > 0.0:
            return 1.0, 1.0, 1.0, 1.0
        r20: cython.double = r[6]
        r21: cython.double = r[7]
        xy = self._rotor_xy
        h0: cython.double = z + (r20 * xy[0] + r21 * xy[1])
        h1: cython.double = z + (r20 * xy[2] + r21 * xy[3])
        h2: cython.double = z + (r20 * xy[4] + r21 * xy[5])
        h3: cython.double = z + (r20 * xy[6] + r21 * xy[7])
        floor: cython.double = self.ground_effect_min_height
        h0, h1 = (floor if h0 < floor else h0), (floor if h1 < floor else h1)
        h2, h3 = (floor if h2 < floor else h2), (floor if h3 < floor else h3)
        k: cython.double = self._ground_effect_k
        return 1.0 + k / (h0 * h0), 1.0 + k / (h1 * h1), 1.0 + k / (h2 * h2), 1.0 + k / (h3 * h3)

    def ground_effect_gain(self, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(N, 4) multiplicative thrust gain per rotor (1 = none)."""
        rows = zip(np.asarray(position)[:, 2].tolist(), np.reshape(rotation, (-1, 9)).tolist())
        return np.array([self.drone_ground_effect_gain(z, r) for z, r in rows])

    @cython.ccall
    def drone_body_force(self, r, velocity, air_velocity, rpm_sum: cython.double, downwash: cython.double) -> Floats3:
        """One drone: body-frame force [N] from drag (against the air-relative velocity) and a downwash
        force ``downwash`` along world z. ``r``: rotation entries, row-major; ``rpm_sum``: sum of rotor RPMs."""
        fx: cython.double = 0.0
        fy: cython.double = 0.0
        fz: cython.double = 0.0
        if downwash:  # R^T [0, 0, f] is f times the bottom row of R.
            fx, fy, fz = r[6] * downwash, r[7] * downwash, r[8] * downwash
        if self.drag:
            vx: cython.double = velocity[0]
            vy: cython.double = velocity[1]
            vz: cython.double = velocity[2]
            ax: cython.double = air_velocity[0]
            ay: cython.double = air_velocity[1]
            az: cython.double = air_velocity[2]
            bx: cython.double
            by: cython.double
            bz: cython.double
            bx, by, bz = _rotate_to_body(r, vx - ax, vy - ay, vz - az)
            k = self._drag_per_rpm
            fx, fy, fz = fx - k[0] * rpm_sum * bx, fy - k[1] * rpm_sum * by, fz - k[2] * rpm_sum * bz
        return fx, fy, fz

    def body_force(
        self,
        rotation: np.ndarray,
        velocity: np.ndarray,
        air_velocity: np.ndarray,
        rpm: np.ndarray,
        position: np.ndarray,
    ) -> np.ndarray:
        """(N, 3) body-frame force from drag and downwash."""
        n = len(position)
        downwash = self.downwash_forces(position).tolist() if self.downwash and n > 1 else [0.0] * n
        air = np.broadcast_to(air_velocity, (n, 3)).tolist()
        rotations, velocities = np.reshape(rotation, (-1, 9)).tolist(), np.asarray(velocity).tolist()
        rows = zip(rotations, velocities, air, np.sum(rpm, axis=1).tolist(), downwash)
        return np.array([self.drone_body_force(r, v, a, s, d) for r, v, a, s, d in rows])

    def downwash_forces(self, position: np.ndarray) -> np.ndarray:
        """(N,) vertical force on each drone from the wakes of the drones above it."""
        a = self.airframe
        position = np.asarray(position)
        dz = position[None, :, 2] - position[:, None, 2]  # [i, j]: how far j is above i
        dxy = np.linalg.norm(position[None, :, :2] - position[:, None, :2], axis=-1)
        above = dz > 1e-3
        dz_safe = np.where(above, dz, 1.0)
        alpha = a.downwash_c1 * (a.prop_radius / (4.0 * dz_safe)) ** 2
        beta = a.downwash_c2 * dz_safe + a.downwash_c3
        beta = np.where(np.abs(beta) < 1e-6, 1e-6, beta)
        push = alpha * np.exp(-0.5 * (dxy / beta) ** 2)
        return -np.sum(np.where(above & (dxy < 10.0), push, 0.0), axis=1)


@cython.cclass
class DronePhysics:
    """One drone over one control period: action in [-1, 1]^4 -> body force and torque for the backend.

    Chains the models above: clip the action; hold it back ``action_delay`` control periods if there is a delay;
    map it to rotor speed commands (``motors``: thrust per rotor over [0, max]; ``ctbr``: collective thrust and body
    rates through the nominal rate loop and mixer, as flight firmware does), capped at the true motors' top speed;
    advance this drone's rotors; apply the true kf, km and the ground-effect gains; add drag and downwash. The
    controllers are shared and nominal; ``kf``/``km``, the top speed and the rotors are this drone's true ones
    (domain randomization draws them per episode).
    """

    rotors = cython.declare(RotorLag, visibility="readonly")
    _mixer = cython.declare(Mixer)
    _rates = cython.declare(RateController)
    _aero = cython.declare(Aerodynamics)
    _wrench = cython.declare(Wrench)
    _motors = cython.declare(cython.bint)
    _half_max_thrust = cython.declare(cython.double)
    _two_max_thrust = cython.declare(cython.double)
    _max_body_rate = cython.declare(cython.double)
    _kf = cython.declare(cython.double)
    _km = cython.declare(cython.double)
    _max_rpm = cython.declare(cython.double)
    _pending = cython.declare(list)  # the delayed actions, oldest first; empty without a delay

    def __init__(
        self,
        motors: bool,
        max_body_rate: float,
        mixer: Mixer,
        rates: RateController,
        aero: Aerodynamics,
        wrench: Wrench,
        rotors: RotorLag,
        airframe: Airframe,
    ):
        self._motors = motors
        self._max_body_rate = max_body_rate
        self._mixer, self._rates, self._aero, self._wrench, self.rotors = mixer, rates, aero, wrench, rotors
        self._half_max_thrust = 0.5 * mixer.max_thrust
        self._two_max_thrust = 2.0 * mixer.max_thrust
        self._pending = []
        self.set_true_airframe(airframe)

    def set_true_airframe(self, airframe: Airframe) -> None:
        """This episode's true thrust and torque coefficients and motor top speed (the rotors' time constant is set
        on ``rotors``)."""
        self._kf, self._km, self._max_rpm = airframe.kf, airframe.km, airframe.max_rpm

    @property
    def action_delay(self) -> int:
        """Control periods between an action and the rotors receiving it."""
        return len(self._pending)

    def reset_action_delay(self, steps: int, action) -> None:
        """Delay actions by ``steps`` control periods from now on, the rotors receiving ``action`` (4 floats, the
        hover action at a reset) until the first commanded one arrives."""
        self._pending = [list(action) for _ in range(steps)]

    @cython.ccall
    def rpm_command(
        self,
        a0: cython.double,
        a1: cython.double,
        a2: cython.double,
        a3: cython.double,
        w0: cython.double,
        w1: cython.double,
        w2: cython.double,
    ) -> Floats4:
        """A clipped action and the measured body rates (w0, w1, w2) -> the 4 rotor speed commands [RPM]."""
        t0: cython.double
        t1: cython.double
        t2: cython.double
        t3: cython.double
        if self._motors:
            h: cython.double = self._half_max_thrust
            t0, t1, t2, t3 = (a0 + 1.0) * h, (a1 + 1.0) * h, (a2 + 1.0) * h, (a3 + 1.0) * h
        else:
            m: cython.double = self._max_body_rate
            tx: cython.double
            ty: cython.double
            tz: cython.double
            tx, ty, tz = self._rates.drone_torque(a1 * m, a2 * m, a3 * m, w0, w1, w2)
            t0, t1, t2, t3 = self._mixer.drone_rotor_thrusts((a0 + 1.0) * self._two_max_thrust, tx, ty, tz)
        return self._mixer.drone_rpm_from_thrust(t0, t1, t2, t3)

    @cython.ccall
    def control(self, action, drone: DroneState, air_velocity, downwash: cython.double) -> tuple:
        """Advance this drone's rotors one control period under ``action`` (4 floats).

        ``drone``: its state at the period's start (a simulator ``DroneState``); ``air_velocity``: the wind
        there (world, m/s); ``downwash``: the world-z force from drones above [N]. Returns (the clipped action
        as a list: the one commanded now, also under a delay; the body-frame force, the body-frame torque).
        """
        # np.clip(a, -1, 1), written out (NaN passes through as it does there)
        a0: cython.double = action[0]
        a1: cython.double = action[1]
        a2: cython.double = action[2]
        a3: cython.double = action[3]
        a0 = -1.0 if a0 < -1.0 else 1.0 if a0 > 1.0 else a0
        a1 = -1.0 if a1 < -1.0 else 1.0 if a1 > 1.0 else a1
        a2 = -1.0 if a2 < -1.0 else 1.0 if a2 > 1.0 else a2
        a3 = -1.0 if a3 < -1.0 else 1.0 if a3 > 1.0 else a3
        commanded = [a0, a1, a2, a3]
        if self._pending:  # the rotors get the action of ``action_delay`` periods ago
            self._pending.append(commanded)
            delayed = self._pending.pop(0)
            a0, a1, a2, a3 = delayed[0], delayed[1], delayed[2], delayed[3]
        position, r, velocity, body_rates = drone.position, drone.rotation, drone.velocity, drone.body_rates
        c0: cython.double
        c1: cython.double
        c2: cython.double
        c3: cython.double
        c0, c1, c2, c3 = self.rpm_command(a0, a1, a2, a3, body_rates[0], body_rates[1], body_rates[2])
        top: cython.double = self._max_rpm  # the mixer caps at the nominal top speed; true motors may stop short
        c0, c1 = (top if c0 > top else c0), (top if c1 > top else c1)
        c2, c3 = (top if c2 > top else c2), (top if c3 > top else c3)
        m0: cython.double
        m1: cython.double
        m2: cython.double
        m3: cython.double
        m0, m1, m2, m3 = self.rotors.advance(c0, c1, c2, c3)
        g0: cython.double
        g1: cython.double
        g2: cython.double
        g3: cython.double
        g0, g1, g2, g3 = self._aero.drone_ground_effect_gain(position[2], r)
        collective: cython.double
        tau_x: cython.double
        tau_y: cython.double
        tau_z: cython.double
        collective, tau_x, tau_y, tau_z = self._wrench.of(m0, m1, m2, m3, self._kf, self._km, g0, g1, g2, g3)
        fx: cython.double
        fy: cython.double
        fz: cython.double
        fx, fy, fz = self._aero.drone_body_force(r, velocity, air_velocity, self.rotors.rpm_sum(), downwash)
        return commanded, (fx, fy, fz + collective), (tau_x, tau_y, tau_z)


@cython.ccall
def drone_control(physics, action, drone, air_velocity, downwash: cython.double) -> tuple:
    """``physics.control(action, drone, air_velocity, downwash)`` for a ``DronePhysics``: the entry point the
    compiled simulator calls as a C function (declared in physics.pxd; a method of a class that a .pxd does not
    declare is reachable from another module only through Python's call machinery, ~0.1 us a call)."""
    model: DronePhysics = physics
    return model.control(action, drone, air_velocity, downwash)


@cython.cclass
class Wind:
    """Constant wind plus Ornstein-Uhlenbeck gusts, per drone, in world frame [m/s].

    Each drone's gust draws from the random stream it is handed: its own in the vector env, the env's in a
    single-drone env, one shared by all drones in the swarm (drone by drone, the numbers of one (N, 3) draw). A
    drone's steady wind is ``mean`` plus the extra one of its episode (``set_extra_wind``: domain randomization).
    """

    mean = cython.declare(tuple, visibility="readonly")
    gust_std = cython.declare(cython.double, visibility="readonly")
    gust_time_constant = cython.declare(cython.double, visibility="readonly")
    gusts = cython.declare(list, visibility="readonly")  # per drone: [x, y, z]
    means = cython.declare(list, visibility="readonly")  # per drone: its steady wind [x, y, z]

    def __init__(self, num_drones: int, mean=(0.0, 0.0, 0.0), gust_std: float = 0.0, gust_time_constant: float = 1.0):
        if gust_std < 0 or gust_time_constant <= 0:
            raise ValueError(
                f"wind: gust_std must be >= 0 and gust_time_constant > 0, got {gust_std!r}, {gust_time_constant!r}"
            )
        self.mean = tuple(np.asarray(mean, dtype=float).reshape(3).tolist())
        self.gust_std = float(gust_std)
        self.gust_time_constant = float(gust_time_constant)
        self.gusts = [[0.0, 0.0, 0.0] for _ in range(num_drones)]
        self.means = [self.mean] * num_drones

    @property
    def gust(self) -> np.ndarray:
        """(N, 3) every drone's gust."""
        return np.array(self.gusts)

    def set_extra_wind(self, i: int, extra) -> None:
        """Drone ``i``'s steady wind is ``mean`` plus ``extra`` (3 floats, world m/s) from now on."""
        m = self.mean
        self.means[i] = (m[0] + extra[0], m[1] + extra[1], m[2] + extra[2])

    @cython.ccall
    def air_velocity(self, i: cython.Py_ssize_t) -> list:
        """The air's velocity at drone ``i``: its steady wind plus its gust."""
        m, g = self.means[i], self.gusts[i]
        return [m[0] + g[0], m[1] + g[1], m[2] + g[2]]

    def reset_drone(self, i: int, rng: np.random.Generator) -> None:
        """Drone ``i``'s gust at the start of an episode: one draw of N(0, gust_std) per axis."""
        self.gusts[i] = rng.normal(0.0, self.gust_std, 3).tolist() if self.gust_std > 0 else [0.0, 0.0, 0.0]

    @cython.ccall
    def step_drone(self, i: cython.Py_ssize_t, dt: cython.double, rng) -> list:
        """Advance drone ``i``'s gust by ``dt`` (one draw of 3 standard normals) and return its air velocity."""
        if self.gust_std > 0:
            decay: cython.double = math.exp(-dt / self.gust_time_constant)
            scale: cython.double = self.gust_std * math.sqrt(1 - decay * decay)
            z = rng.normal(size=3).tolist()
            g = self.gusts[i]
            self.gusts[i] = [decay * g[0] + scale * z[0], decay * g[1] + scale * z[1], decay * g[2] + scale * z[2]]
        return self.air_velocity(i)
