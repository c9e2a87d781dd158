"""The quadrotor physics model shared by every backend: rotors with lag, mixer, rate loop, aerodynamics.

Everything is vectorized over N drones (arrays lead with the drone axis) so one code path serves a
single-drone task and a swarm. A backend (PyBullet here) only integrates the wrench computed here.
"""

from __future__ import annotations

import math

import numpy as np

from entropilot.envs.airframe import Airframe

# X layout, rotors numbered 0 front-right, 1 back-right, 2 back-left, 3 front-left (body x forward,
# y left, z up). Spin +1 = counter-clockwise seen from above; reaction torque on the body is opposite.
_ROTOR_DIRECTIONS = np.array([(1, -1), (-1, -1), (-1, 1), (1, 1)], dtype=float) / math.sqrt(2.0)
ROTOR_SPIN = np.array([-1.0, 1.0, -1.0, 1.0])  # CW, CCW, CW, CCW (Crazyflie 2.x)


def to_body(rotation: np.ndarray, world: np.ndarray) -> np.ndarray:
    """(N, 3, 3) body-to-world rotations and (N, 3) world vectors -> (N, 3) body-frame vectors (R^T v)."""
    return (world[:, None, :] @ rotation)[:, 0, :]


def rotor_positions(airframe: Airframe) -> np.ndarray:
    """(4, 2) rotor (x, y) positions in the body frame, metres."""
    return _ROTOR_DIRECTIONS * airframe.arm


def allocation_matrix(airframe: Airframe) -> np.ndarray:
    """(4, 4) map from rotor thrusts [N] to [collective thrust, tau_x, tau_y, tau_z]."""
    xy = rotor_positions(airframe)
    yaw_per_newton = airframe.km / airframe.kf
    return np.stack([np.ones(4), xy[:, 1], -xy[:, 0], -ROTOR_SPIN * yaw_per_newton])


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
        self.rpm = np.zeros((num_drones, 4))
        self.set_time_constants(np.full(num_drones, 0.05))

    def set_time_constants(self, tau: np.ndarray) -> None:
        decay = np.exp(-self.physics_dt / np.asarray(tau, dtype=float))[:, None]  # (N, 1)
        k = np.arange(1, self.substeps + 1)
        self._a_final = decay**self.substeps
        self._p1 = np.mean(decay ** k, axis=1, keepdims=True)
        self._p2 = np.mean(decay ** (2 * k), axis=1, keepdims=True)

    def advance(self, rpm_command: np.ndarray) -> np.ndarray:
        """Advance one control period toward ``rpm_command`` (N, 4); returns mean rpm^2 over it."""
        c = rpm_command
        d = self.rpm - c
        mean_rpm_sq = c * c + 2.0 * self._p1 * c * d + self._p2 * d * d
        self.rpm = c + self._a_final * d
        return mean_rpm_sq


class Mixer:
    """Nominal thrust/torque allocation, as flight firmware does it (it does not know the true kf, km)."""

    def __init__(self, airframe: Airframe):
        self.airframe = airframe
        self.max_thrust = airframe.max_thrust_per_motor
        inverse = np.linalg.inv(allocation_matrix(airframe)).T  # rows: [T, tx, ty, tz] -> rotor
        self._from_collective, self._from_torque = inverse[0], inverse[1:]

    def rotor_thrusts(self, collective: np.ndarray, torque: np.ndarray) -> np.ndarray:
        """(N,) thrust [N] and (N, 3) torque [N m] -> (N, 4) rotor thrusts clipped to [0, max]."""
        thrusts = collective[:, None] * self._from_collective + torque @ self._from_torque
        return np.minimum(np.maximum(thrusts, 0.0), self.max_thrust)

    def rpm_from_thrust(self, thrust: np.ndarray) -> np.ndarray:
        return np.sqrt(thrust / self.airframe.kf)


class RateController:
    """Body-rate P loop with gyroscopic feed-forward: tau = I k (w_des - w) + w x I w.

    It runs once per control step (the firmware runs it at 500 Hz; at 48 Hz a gain of a few
    times the control rate stays stable with rotor lag around 0.05 s).
    """

    def __init__(self, airframe: Airframe, gain: tuple[float, float, float] = (20.0, 20.0, 8.0)):
        ixx, iyy, izz = airframe.inertia
        self.inertia_gain = np.array(airframe.inertia) * np.array(gain)
        # w x I w for a diagonal inertia: [(izz - iyy) wy wz, (ixx - izz) wz wx, (iyy - ixx) wx wy]
        self.gyro = np.array([izz - iyy, ixx - izz, iyy - ixx])

    def torque(self, rate_setpoint: np.ndarray, body_rates: np.ndarray) -> np.ndarray:
        w = body_rates
        return self.inertia_gain * (rate_setpoint - w) + self.gyro * w[:, (1, 2, 0)] * w[:, (2, 0, 1)]


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
        self._drag_per_rpm = np.array([airframe.drag_xy, airframe.drag_xy, airframe.drag_z]) * (2.0 * math.pi / 60.0)
        self._rotor_xy_t = rotor_positions(airframe).T  # (2, 4)
        self._ground_effect_k = airframe.ground_effect_coeff * (airframe.prop_radius / 4.0) ** 2
        # Below this height the ground-effect fit diverges; clip as in gym-pybullet-drones.
        self.ground_effect_min_height = 0.25 * airframe.prop_radius * math.sqrt(
            15 * airframe.max_rpm**2 * airframe.kf * airframe.ground_effect_coeff / airframe.max_thrust_per_motor
        )

    def ground_effect_gain(self, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(N, 4) multiplicative thrust gain per rotor (1 = none): 1 + c (r / 4h)^2 at rotor height h."""
        if not self.ground_effect:
            return 1.0
        heights = position[:, 2:3] + rotation[:, 2, :2] @ self._rotor_xy_t
        heights = np.maximum(heights, self.ground_effect_min_height)
        gain = 1.0 + self._ground_effect_k / (heights * heights)
        # The fit holds for a roughly level vehicle only.
        return np.where(rotation[:, 2, 2:3] > 0.0, gain, 1.0)

    def body_force(
        self, rotation: np.ndarray, velocity: np.ndarray, air_velocity: np.ndarray, rpm: np.ndarray, position: np.ndarray
    ) -> np.ndarray:
        """(N, 3) body-frame force from drag and downwash."""
        force_body = np.zeros_like(velocity)
        if self.downwash and position.shape[0] > 1:
            force_body += rotation[:, 2, :] * self._downwash(position)[:, None]  # R^T [0, 0, f]
        if self.drag:
            relative_body = to_body(rotation, velocity - air_velocity)
            force_body -= self._drag_per_rpm * rpm.sum(axis=1, keepdims=True) * relative_body
        return force_body

    def _downwash(self, position: np.ndarray) -> np.ndarray:
        """(N,) vertical force on each drone from the wakes of the drones above it."""
        a = self.airframe
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
