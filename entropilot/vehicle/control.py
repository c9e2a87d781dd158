"""The inner loops a policy's action can go through on its way to the vehicle, in plain floats (standard library
only): a desired acceleration -> collective thrust and body rates (``AttitudeThrust``, also the lower stages of the
cascaded-PID baseline), and a world velocity command -> the normalized ctbr action (``VelocityLoop``, what a
discrete-command policy trains over in the env and flies over on board: one code for both)."""

from __future__ import annotations

import math
from array import array

from entropilot.vehicle.airframe import GRAVITY
from entropilot.vehicle.layout import OBSERVATION_COLUMNS

_ROTATION, _VELOCITY = OBSERVATION_COLUMNS["rotation"], OBSERVATION_COLUMNS["velocity"]


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


class AttitudeThrust:
    """A desired world acceleration (without gravity) and the body-to-world rotation -> (collective thrust in N,
    body-rate commands in rad/s).

    The horizontal acceleration is tilt-limited to ``max_tilt_deg`` and the vertical one never commands free fall;
    thrust = m a . body_z, clipped to [0, ``max_total_thrust``]. Attitude: the geometric error between body z and
    a's direction, rates = ``k_attitude`` R^T (body_z x a / |a|); yaw held at 0 by ``k_yaw``; rates clipped to
    +-``max_body_rate``.
    """

    def __init__(
        self,
        mass: float,
        max_total_thrust: float,
        max_body_rate: float,
        k_attitude: float = 6.0,
        k_yaw: float = 2.0,
        max_tilt_deg: float = 30.0,
    ):
        self.mass, self.max_total_thrust, self.max_body_rate = float(mass), float(max_total_thrust), max_body_rate
        self.k_attitude, self.k_yaw, self.max_tilt_deg = k_attitude, k_yaw, max_tilt_deg
        self.max_horizontal = GRAVITY * math.tan(math.radians(max_tilt_deg))

    def __call__(self, rotation, accel) -> tuple[float, tuple[float, float, float]]:
        """``rotation``: the 9 row-major entries of R; ``accel``: 3 floats (m/s^2, world, gravity not included)."""
        ax, ay, az = (float(a) for a in accel)
        horizontal = math.hypot(ax, ay)
        if horizontal > self.max_horizontal:
            ax, ay = ax * self.max_horizontal / horizontal, ay * self.max_horizontal / horizontal
        az = max(az + GRAVITY, 0.2 * GRAVITY)
        r11, r12, r13, r21, r22, r23, r31, r32, r33 = (float(r) for r in rotation)
        bx, by, bz = r13, r23, r33  # body z in the world
        thrust = self.mass * (ax * bx + ay * by + az * bz)
        norm = math.sqrt(ax * ax + ay * ay + az * az)
        dx, dy, dz = ax / norm, ay / norm, az / norm
        ex, ey, ez = by * dz - bz * dy, bz * dx - bx * dz, bx * dy - by * dx  # body z x desired z, world
        limit = self.max_body_rate
        rates = (
            _clip(self.k_attitude * (r11 * ex + r21 * ey + r31 * ez), -limit, limit),  # R^T e, body frame
            _clip(self.k_attitude * (r12 * ex + r22 * ey + r32 * ez), -limit, limit),
            _clip(-self.k_yaw * math.atan2(r21, r11), -limit, limit),
        )
        return _clip(thrust, 0.0, self.max_total_thrust), rates

    def ctbr_action(self, collective: float, rates) -> list[float]:
        """(N, rad/s) -> the normalized ctbr action in [-1, 1], rounded to float32 (what a policy's action is)."""
        action = [2.0 * collective / self.max_total_thrust - 1.0, *(r / self.max_body_rate for r in rates)]
        return array("f", [_clip(a, -1.0, 1.0) for a in action]).tolist()


class VelocityLoop:
    """(observation, world velocity command in m/s) -> the normalized ctbr action: track the command, yaw held at 0.

    a = kv (v_cmd - v) + ki int(v_cmd - v), the integral bounded to +-``max_integral`` m/s per axis (it absorbs a
    heavier or weaker airframe than the nominal one), then ``AttitudeThrust``. It reads rotation and velocity from the
    observation (``vehicle.layout``), so on board it runs on the same telemetry-built observation the policy reads.
    ``parameters()`` are the constructor's keywords as JSON (export writes them, the onboard runtime rebuilds the loop
    from them: a file flies with the loop it trained over, whatever this code's defaults become).
    """

    def __init__(
        self,
        mass: float,
        max_total_thrust: float,
        control_hz: float,
        max_body_rate: float,
        kv=(2.5, 2.5, 4.0),
        ki=(1.0, 1.0, 2.0),
        max_integral: float = 0.5,
        k_attitude: float = 6.0,
        k_yaw: float = 2.0,
        max_tilt_deg: float = 30.0,
    ):
        self.attitude = AttitudeThrust(mass, max_total_thrust, max_body_rate, k_attitude, k_yaw, max_tilt_deg)
        self.control_hz, self.dt = control_hz, 1.0 / control_hz
        self.kv, self.ki = tuple(float(k) for k in kv), tuple(float(k) for k in ki)
        self.max_integral = float(max_integral)
        self.integral = [0.0, 0.0, 0.0]

    def parameters(self) -> dict:
        a = self.attitude
        return {
            "mass": a.mass,
            "max_total_thrust": a.max_total_thrust,
            "control_hz": self.control_hz,
            "max_body_rate": a.max_body_rate,
            "kv": list(self.kv),
            "ki": list(self.ki),
            "max_integral": self.max_integral,
            "k_attitude": a.k_attitude,
            "k_yaw": a.k_yaw,
            "max_tilt_deg": a.max_tilt_deg,
        }

    def reset(self) -> None:
        self.integral = [0.0, 0.0, 0.0]

    def __call__(self, obs, velocity_command) -> list[float]:
        velocity = obs[_VELOCITY]
        accel = []
        for i in range(3):
            error = float(velocity_command[i]) - float(velocity[i])
            self.integral[i] = _clip(self.integral[i] + error * self.dt, -self.max_integral, self.max_integral)
            accel.append(self.kv[i] * error + self.ki[i] * self.integral[i])
        return self.attitude.ctbr_action(*self.attitude(obs[_ROTATION], accel))
