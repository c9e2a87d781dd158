"""Cascaded PID baseline (position -> attitude -> body rates, Crazyflie-style) that flies from the observation.

It reads the same observation a policy reads and emits the same normalized action, so it is the
physics sanity check (if it cannot hover, the model is wrong), the baseline RL is compared to, and
what the demo flies until a trained policy exists.
"""

from __future__ import annotations

import math

import numpy as np

from entropilot.envs.physics import Mixer, RateController
from entropilot.vehicle.airframe import GRAVITY, Airframe, get_airframe


class CascadedPID:
    """obs -> action for ``ctbr`` or ``motors`` mode, for one drone (obs (22,) -> (4,)) or a batch of drones flown
    in lockstep (obs (N, 22) -> (N, 4), one integrator each); a drone's numbers do not depend on the batch around it.

    Outer loop: desired acceleration a = -kp e - kd v - ki int(e) + g z (tilt-limited).
    Collective thrust = m a . body_z. Attitude loop: geometric error between the body z axis and
    a's direction (yaw held at 0), desired body rates = -k_att e_R. In ``motors`` mode the rates go
    through the same nominal rate controller and mixer the simulator uses for ``ctbr``.
    """

    def __init__(
        self,
        airframe: str | Airframe = "cf2x",
        action_mode: str = "ctbr",
        control_hz: int = 48,
        max_body_rate: float = 6.0,
        kp=(3.0, 3.0, 6.0),
        kd=(2.5, 2.5, 4.0),
        ki=(0.3, 0.3, 1.5),
        k_attitude: float = 6.0,
        k_yaw: float = 2.0,
        max_tilt_deg: float = 30.0,
    ):
        self.airframe = get_airframe(airframe)
        self.action_mode = action_mode
        self.dt = 1.0 / control_hz
        self.max_body_rate = max_body_rate
        self.kp, self.kd, self.ki = np.array(kp), np.array(kd), np.array(ki)
        self.k_attitude, self.k_yaw = k_attitude, k_yaw
        self.max_horizontal = GRAVITY * math.tan(math.radians(max_tilt_deg))
        self.max_total_thrust = 4.0 * self.airframe.max_thrust_per_motor
        self.mixer = Mixer(self.airframe)
        self.rate_controller = RateController(self.airframe)
        self.integral = np.zeros(3)

    @classmethod
    def for_env(cls, env, **gains) -> CascadedPID:
        s = env.unwrapped.settings
        return cls(s.airframe, s.action_mode, s.control_hz, s.max_body_rate, **gains)

    def reset(self) -> None:
        """Zero the integrator (of every drone, for a batch: its size is taken from the next call)."""
        self.integral = np.zeros(3)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        # Column by column, element-wise arithmetic only (no matrix products, whose summation order may depend on
        # the batch): one drone's action is the same alone or in a batch.
        obs = np.asarray(obs, dtype=np.float64)
        o = obs.reshape(-1, obs.shape[-1])
        if self.integral.ndim == 2 and len(self.integral) != len(o):
            raise ValueError(f"a batch of {len(o)} drones after {len(self.integral)}: reset() before a new batch")
        integral = np.clip(self.integral + o[:, 0:3] * self.dt, -1.0, 1.0)
        self.integral = integral.reshape(obs.shape[:-1] + (3,))  # (3,) for one drone, (N, 3) for a batch
        accel = -self.kp * o[:, 0:3] - self.kd * o[:, 12:15] - self.ki * integral
        # Tilt limit: scale the horizontal part down to max_horizontal (x 1.0 exactly when within it).
        scale = self.max_horizontal / np.maximum(np.hypot(accel[:, 0], accel[:, 1]), self.max_horizontal)
        ax, ay = accel[:, 0] * scale, accel[:, 1] * scale
        az = np.maximum(accel[:, 2] + GRAVITY, 0.2 * GRAVITY)  # never command free fall

        r = [o[:, 3 + k] for k in range(9)]  # body-to-world rotation, row-major
        bx, by, bz = r[2], r[5], r[8]  # body z in the world
        thrust = self.airframe.mass * (ax * bx + ay * by + az * bz)
        norm = np.sqrt(ax * ax + ay * ay + az * az)
        dx, dy, dz = ax / norm, ay / norm, az / norm
        # Attitude error: rotate body z onto the desired z (their cross product, in the body frame: R^T e).
        ex, ey, ez = by * dz - bz * dy, bz * dx - bx * dz, bx * dy - by * dx
        rates = np.empty((len(o), 3))
        rates[:, 0] = self.k_attitude * (r[0] * ex + r[3] * ey + r[6] * ez)
        rates[:, 1] = self.k_attitude * (r[1] * ex + r[4] * ey + r[7] * ez)
        rates[:, 2] = -self.k_yaw * np.arctan2(r[3], r[0])  # yaw from body x's heading, held at 0
        rates = np.clip(rates, -self.max_body_rate, self.max_body_rate)

        collective = np.clip(thrust, 0.0, self.max_total_thrust)
        if self.action_mode == "ctbr":
            action = np.empty((len(o), 4))
            action[:, 0] = 2.0 * collective / self.max_total_thrust - 1.0
            action[:, 1:] = rates / self.max_body_rate
        else:
            rotor = self.mixer.rotor_thrusts(collective, self.rate_controller.torque(rates, o[:, 15:18]))
            action = 2.0 * rotor / self.airframe.max_thrust_per_motor - 1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32).reshape(obs.shape[:-1] + (4,))
