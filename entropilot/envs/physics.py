"""The quadrotor physics model shared by every backend: rotors with lag, mixer, rate loop, aerodynamics.

Each model is written once, per drone, in plain Python floats: at the sizes involved (4 rotors, 3
axes) numpy's per-call cost (~1 us) exceeds the arithmetic many times over. The simulator loops over
its drones, so one code path serves a single-drone task and a swarm; the array methods (N rows in,
N rows out) call the same per-drone code. Only the pairwise downwash is vectorized with numpy.
A backend (PyBullet here) only integrates the wrench computed here.
"""

from __future__ import annotations

import math

import numpy as np

from entropilot.envs.airframe import Airframe

# X layout, rotors numbered 0 front-right, 1 back-right, 2 back-left, 3 front-left (body x forward,
# y left, z up). Spin +1 = counter-clockwise seen from above; reaction torque on the body is opposite.
_ROTOR_DIRECTIONS = np.array([(1, -1), (-1, -1), (-1, 1), (1, 1)], dtype=float) / math.sqrt(2.0)
# CCW, CW, CCW, CW: as the Crazyflie 2.x firmware's mixer (power_distribution_quadrotor.c) lowers M1 (front
# right) for a positive yaw torque, and as gym-pybullet-drones has it, so a ``motors`` policy sees real yaw.
ROTOR_SPIN = np.array([1.0, -1.0, 1.0, -1.0])


def to_body(rotation: np.ndarray, world: np.ndarray) -> np.ndarray:
    """(N, 3, 3) body-to-world rotations and (N, 3) world vectors -> (N, 3) body-frame vectors (R^T v)."""
    rows = zip(np.reshape(rotation, (-1, 9)).tolist(), np.asarray(world).tolist())
    return np.array([rotate_to_body(r, v) for r, v in rows])


def rotate_to_body(r, v) -> tuple[float, float, float]:
    """R^T v for one drone: ``r`` the 9 row-major entries of body-to-world R, ``v`` a world vector."""
    v0, v1, v2 = v
    return (v0 * r[0] + v1 * r[3] + v2 * r[6], v0 * r[1] + v1 * r[4] + v2 * r[7], v0 * r[2] + v1 * r[5] + v2 * r[8])


def rotor_positions(airframe: Airframe) -> np.ndarray:
    """(4, 2) rotor (x, y) positions in the body frame, metres."""
    return _ROTOR_DIRECTIONS * airframe.arm


def allocation_matrix(airframe: Airframe) -> np.ndarray:
    """(4, 4) map from rotor thrusts [N] to [collective thrust, tau_x, tau_y, tau_z]."""
    xy = rotor_positions(airframe)
    yaw_per_newton = airframe.km / airframe.kf
    return np.stack([np.ones(4), xy[:, 1], -xy[:, 0], -ROTOR_SPIN * yaw_per_newton])


class Wrench:
    """Mean rotor rpm^2 over the period -> body [collective thrust, tau_x, tau_y, tau_z], per drone.

    Rotor thrust T_i = kf rpm_i^2 (times the ground-effect gain); tau = sum over rotors of
    (y_i T_i, -x_i T_i, -spin_i km rpm_i^2): the rows of ``allocation_matrix``.
    """

    def __init__(self, airframe: Airframe):
        xy = rotor_positions(airframe)
        self._y = tuple(xy[:, 1].tolist())
        self._minus_x = tuple((-xy[:, 0]).tolist())
        self._yaw = tuple((-ROTOR_SPIN).tolist())

    def of(self, rpm_sq, kf: float, km: float, gains=None) -> tuple[float, float, float, float]:
        m0, m1, m2, m3 = rpm_sq
        if gains is None:
            t0, t1, t2, t3 = kf * m0, kf * m1, kf * m2, kf * m3
        else:
            g0, g1, g2, g3 = gains
            t0, t1, t2, t3 = kf * m0 * g0, kf * m1 * g1, kf * m2 * g2, kf * m3 * g3
        y0, y1, y2, y3 = self._y
        x0, x1, x2, x3 = self._minus_x
        s0, s1, s2, s3 = self._yaw
        return (
            t0 + t1 + t2 + t3,
            t0 * y0 + t1 * y1 + t2 * y2 + t3 * y3,
            t0 * x0 + t1 * x1 + t2 * x2 + t3 * x3,
            km * (m0 * s0 + m1 * s1 + m2 * s2 + m3 * s3),
        )


class RotorModel:
    """First-order rotor-speed lag, integrated exactly over the substeps of one control period.

    The backend holds the wrench constant for a control period, so what matters is the mean of
    rpm^2 over the substeps the period spans (that mean gives the same impulse as applying the lagged
    thrust substep by substep). For rpm_k = c + d * a^k, k = 1..S: mean(rpm_k^2) = c^2 + 2 c d p1 + d^2 p2
    with p1 = mean(a^k), p2 = mean(a^2k): closed form, no per-substep loop.
    """

    def __init__(self, num_drones: int, substeps: int, physics_dt: float):
        self.substeps = substeps
        self.physics_dt = physics_dt
        self.num_drones = num_drones
        self.rpm = np.zeros((num_drones, 4))
        self.set_time_constants(np.full(num_drones, 0.05))

    @property
    def rpm(self) -> np.ndarray:
        """(N, 4) current rotor speeds [RPM] (a copy: assign the attribute to change them)."""
        return np.array(self._rpm)

    @rpm.setter
    def rpm(self, value) -> None:
        self._rpm = np.broadcast_to(np.asarray(value, dtype=float), (self.num_drones, 4)).tolist()

    def reset(self, rpm: float) -> None:
        """Every rotor of every drone at ``rpm``."""
        self._rpm = [[float(rpm)] * 4 for _ in range(self.num_drones)]

    def set_time_constants(self, tau: np.ndarray) -> None:
        decay = np.exp(-self.physics_dt / np.asarray(tau, dtype=float))[:, None]  # (N, 1)
        k = np.arange(1, self.substeps + 1)
        # Per drone (a_final, 2 p1, p2): the factors of advance_drone.
        self._coefficients = list(
            zip(
                (decay[:, 0] ** self.substeps).tolist(),
                (2.0 * np.mean(decay**k, axis=1)).tolist(),
                np.mean(decay ** (2 * k), axis=1).tolist(),
            )
        )

    def advance_drone(self, i: int, rpm_command) -> tuple[float, float, float, float]:
        """Advance drone ``i``'s 4 rotors one control period toward ``rpm_command``; returns mean rpm^2 over it."""
        a_final, two_p1, p2 = self._coefficients[i]
        r0, r1, r2, r3 = self._rpm[i]
        c0, c1, c2, c3 = rpm_command
        d0, d1, d2, d3 = r0 - c0, r1 - c1, r2 - c2, r3 - c3
        self._rpm[i] = [c0 + a_final * d0, c1 + a_final * d1, c2 + a_final * d2, c3 + a_final * d3]
        return (
            c0 * c0 + two_p1 * c0 * d0 + p2 * d0 * d0,
            c1 * c1 + two_p1 * c1 * d1 + p2 * d1 * d1,
            c2 * c2 + two_p1 * c2 * d2 + p2 * d2 * d2,
            c3 * c3 + two_p1 * c3 * d3 + p2 * d3 * d3,
        )

    def advance(self, rpm_command: np.ndarray) -> np.ndarray:
        """Advance one control period toward ``rpm_command`` (N, 4); returns (N, 4) mean rpm^2 over it."""
        return np.array([self.advance_drone(i, row) for i, row in enumerate(np.asarray(rpm_command, dtype=float).tolist())])

    def rpm_sum(self, i: int) -> float:
        r = self._rpm[i]
        return r[0] + r[1] + r[2] + r[3]


class Mixer:
    """Nominal thrust/torque allocation, as flight firmware does it (it does not know the true kf, km)."""

    def __init__(self, airframe: Airframe):
        self.airframe = airframe
        self.max_thrust = airframe.max_thrust_per_motor
        inverse = np.linalg.inv(allocation_matrix(airframe)).T  # rows: [T, tx, ty, tz] -> rotor
        self._from_collective = tuple(inverse[0].tolist())
        self._from_torque = tuple(inverse[1:].T.ravel().tolist())  # rotor-major (tx, ty, tz) weights
        self._kf = airframe.kf

    def drone_rotor_thrusts(self, collective: float, torque) -> list[float]:
        """One drone: thrust [N] and (tau_x, tau_y, tau_z) [N m] -> 4 rotor thrusts clipped to [0, max]."""
        tx, ty, tz = torque
        c0, c1, c2, c3 = self._from_collective
        w = self._from_torque
        t0 = collective * c0 + (tx * w[0] + ty * w[1] + tz * w[2])
        t1 = collective * c1 + (tx * w[3] + ty * w[4] + tz * w[5])
        t2 = collective * c2 + (tx * w[6] + ty * w[7] + tz * w[8])
        t3 = collective * c3 + (tx * w[9] + ty * w[10] + tz * w[11])
        top = self.max_thrust
        # min(max(t, 0), top), written out: a builtin call costs more than the comparison.
        return [
            0.0 if t0 < 0.0 else top if t0 > top else t0,
            0.0 if t1 < 0.0 else top if t1 > top else t1,
            0.0 if t2 < 0.0 else top if t2 > top else t2,
            0.0 if t3 < 0.0 else top if t3 > top else t3,
        ]

    def rotor_thrusts(self, collective: np.ndarray, torque: np.ndarray) -> np.ndarray:
        """(N,) thrust [N] and (N, 3) torque [N m] -> (N, 4) rotor thrusts clipped to [0, max]."""
        return np.array(
            [self.drone_rotor_thrusts(c, t) for c, t in zip(np.asarray(collective).tolist(), np.asarray(torque).tolist())]
        )

    def drone_rpm_from_thrust(self, thrusts) -> list[float]:
        t0, t1, t2, t3 = thrusts
        kf, sqrt = self._kf, math.sqrt
        return [sqrt(t0 / kf), sqrt(t1 / kf), sqrt(t2 / kf), sqrt(t3 / kf)]

    def rpm_from_thrust(self, thrust: np.ndarray) -> np.ndarray:
        """(N, 4) rotor thrusts [N] -> (N, 4) rotor speeds [RPM] (nominal kf)."""
        return np.array([self.drone_rpm_from_thrust(row) for row in np.asarray(thrust, dtype=float).tolist()])


class RateController:
    """Body-rate P loop with gyroscopic feed-forward: tau = I k (w_des - w) + w x I w.

    It runs once per control step (the firmware runs it at 500 Hz; at 48 Hz a gain of a few
    times the control rate stays stable with rotor lag around 0.05 s).
    """

    def __init__(self, airframe: Airframe, gain: tuple[float, float, float] = (20.0, 20.0, 8.0)):
        ixx, iyy, izz = airframe.inertia
        self.inertia_gain = tuple(i * k for i, k in zip(airframe.inertia, gain))
        # w x I w for a diagonal inertia: [(izz - iyy) wy wz, (ixx - izz) wz wx, (iyy - ixx) wx wy]
        self.gyro = (izz - iyy, ixx - izz, iyy - ixx)

    def drone_torque(self, rate_setpoint, body_rates) -> tuple[float, float, float]:
        """One drone: desired and measured (x, y, z) body rates [rad/s] -> body torque [N m]."""
        r0, r1, r2 = rate_setpoint
        w0, w1, w2 = body_rates
        k, g = self.inertia_gain, self.gyro
        return (
            k[0] * (r0 - w0) + g[0] * w1 * w2,
            k[1] * (r1 - w1) + g[1] * w2 * w0,
            k[2] * (r2 - w2) + g[2] * w0 * w1,
        )

    def torque(self, rate_setpoint: np.ndarray, body_rates: np.ndarray) -> np.ndarray:
        """(N, 3) desired and measured body rates -> (N, 3) torques."""
        return np.array(
            [self.drone_torque(r, w) for r, w in zip(np.asarray(rate_setpoint).tolist(), np.asarray(body_rates).tolist())]
        )


class Aerodynamics:
    """State-dependent forces: rotor drag (Forster 2015), ground effect (Shi et al. 2019), downwash.

    Evaluated once per control step from the state at its start and held over the period.
    """

    def __init__(self, airframe: Airframe, drag: bool, ground_effect: bool, downwash: bool):
        self.airframe = airframe
        self.drag = drag
        self.ground_effect = ground_effect
        self.downwash = downwash
        # Forster's coefficients multiply rotor speed in rad/s; fold the RPM conversion in once.
        self._drag_per_rpm = tuple(
            (np.array([airframe.drag_xy, airframe.drag_xy, airframe.drag_z]) * (2.0 * math.pi / 60.0)).tolist()
        )
        self._rotor_xy = tuple(rotor_positions(airframe).ravel().tolist())  # x0, y0, x1, y1, ...
        self._ground_effect_k = airframe.ground_effect_coeff * (airframe.prop_radius / 4.0) ** 2
        # Below this height the ground-effect fit diverges; clip it there (gain 1 + 1/15). gym-pybullet-drones'
        # formula divides by the total max thrust (4x this), which gives half this height and a gain of 1 + 4/15.
        self.ground_effect_min_height = 0.25 * airframe.prop_radius * math.sqrt(
            15 * airframe.max_rpm**2 * airframe.kf * airframe.ground_effect_coeff / airframe.max_thrust_per_motor
        )

    def drone_ground_effect_gain(self, z: float, r) -> list[float] | None:
        """One drone at height ``z`` with rotation entries ``r`` (row-major): per-rotor thrust gain
        1 + c (prop_radius / 4h)^2 at rotor height h, or None (= 1 everywhere) when off or not level."""
        # The fit holds for a roughly level vehicle only.
        if not self.ground_effect or not r[8] > 0.0:
            return None
        r20, r21 = r[6], r[7]
        x0, y0, x1, y1, x2, y2, x3, y3 = self._rotor_xy
        h0, h1 = z + (r20 * x0 + r21 * y0), z + (r20 * x1 + r21 * y1)
        h2, h3 = z + (r20 * x2 + r21 * y2), z + (r20 * x3 + r21 * y3)
        floor = self.ground_effect_min_height
        h0, h1 = (floor if h0 < floor else h0), (floor if h1 < floor else h1)
        h2, h3 = (floor if h2 < floor else h2), (floor if h3 < floor else h3)
        k = self._ground_effect_k
        return [1.0 + k / (h0 * h0), 1.0 + k / (h1 * h1), 1.0 + k / (h2 * h2), 1.0 + k / (h3 * h3)]

    def ground_effect_gain(self, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(N, 4) multiplicative thrust gain per rotor (1 = none)."""
        rows = zip(np.asarray(position)[:, 2].tolist(), np.reshape(rotation, (-1, 9)).tolist())
        return np.array([self.drone_ground_effect_gain(z, r) or [1.0] * 4 for z, r in rows])

    def drone_body_force(self, r, velocity, air_velocity, rpm_sum: float, downwash: float = 0.0) -> list[float]:
        """One drone: body-frame force [N] from drag (against the air-relative velocity) and a downwash
        force ``downwash`` along world z. ``r``: rotation entries, row-major; ``rpm_sum``: sum of rotor RPMs."""
        # R^T [0, 0, f] is f times the bottom row of R.
        fx, fy, fz = (r[6] * downwash, r[7] * downwash, r[8] * downwash) if downwash else (0.0, 0.0, 0.0)
        if self.drag:
            vx, vy, vz = velocity
            ax, ay, az = air_velocity
            bx, by, bz = rotate_to_body(r, (vx - ax, vy - ay, vz - az))
            kx, ky, kz = self._drag_per_rpm
            fx, fy, fz = fx - kx * rpm_sum * bx, fy - ky * rpm_sum * by, fz - kz * rpm_sum * bz
        return [fx, fy, fz]

    def body_force(
        self, rotation: np.ndarray, velocity: np.ndarray, air_velocity: np.ndarray, rpm: np.ndarray, position: np.ndarray
    ) -> np.ndarray:
        """(N, 3) body-frame force from drag and downwash."""
        n = len(position)
        downwash = self.downwash_forces(position).tolist() if self.downwash and n > 1 else [0.0] * n
        air = np.broadcast_to(air_velocity, (n, 3)).tolist()
        rotations, velocities = np.reshape(rotation, (-1, 9)).tolist(), np.asarray(velocity).tolist()
        rows = zip(rotations, velocities, air, np.sum(rpm, axis=1).tolist(), downwash)
        return np.array([self.drone_body_force(*row) for row in rows])

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


class Wind:
    """Constant wind plus Ornstein-Uhlenbeck gusts, per drone, in world frame [m/s]."""

    def __init__(self, num_drones: int, mean=(0.0, 0.0, 0.0), gust_std: float = 0.0, gust_time_constant: float = 1.0):
        if gust_std < 0 or gust_time_constant <= 0:
            raise ValueError(
                f"wind: gust_std must be >= 0 and gust_time_constant > 0, got {gust_std!r}, {gust_time_constant!r}"
            )
        self.mean = np.asarray(mean, dtype=float).reshape(3)
        self.gust_std = float(gust_std)
        self.gust_time_constant = float(gust_time_constant)
        self.gust = np.zeros((num_drones, 3))

    def reset(self, rng: np.random.Generator) -> None:
        self.gust = rng.normal(0.0, self.gust_std, self.gust.shape) if self.gust_std > 0 else self.gust * 0.0

    def step(self, dt: float, rng: np.random.Generator) -> np.ndarray:
        if self.gust_std > 0:
            decay = math.exp(-dt / self.gust_time_constant)
            self.gust = decay * self.gust + self.gust_std * math.sqrt(1 - decay * decay) * rng.normal(size=self.gust.shape)
        return self.mean + self.gust
