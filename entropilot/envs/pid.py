"""Cascaded PID controllers (Crazyflie-style) that fly from the observation: the position-hold baseline
(position -> attitude -> body rates) and the velocity-tracking inner loop under the discrete-command tasks.

They read the same observation a policy reads and emit the same normalized action. The position PID is the
physics sanity check (if it cannot hover, the model is wrong), the baseline RL is compared to, and what the
demo flies until a trained policy exists. The velocity PID turns a velocity command into that action, in the
env that trains a discrete policy and on board when it flies (one code for both).
"""

from __future__ import annotations

import math

import numpy as np

from entropilot.envs.airframe import GRAVITY, Airframe, get_airframe
from entropilot.envs.physics import Mixer, RateController


class AttitudeThrustLoop:
    """A desired world acceleration -> normalized action for ``ctbr`` or ``motors`` mode (the shared lower stages).

    The horizontal acceleration is tilt-limited and the vertical one never commands free fall; collective
    thrust = m a . body_z. Attitude loop: geometric error between the body z axis and a's direction (yaw held
    at 0), desired body rates = -k_att e_R. In ``motors`` mode the rates go through the same nominal rate
    controller and mixer the simulator uses for ``ctbr``.
    """

    def __init__(
        self,
        airframe: str | Airframe = "cf2x",
        action_mode: str = "ctbr",
        max_body_rate: float = 6.0,
        k_attitude: float = 6.0,
        k_yaw: float = 2.0,
        max_tilt_deg: float = 30.0,
    ):
        self.airframe = get_airframe(airframe)
        self.action_mode = action_mode
        self.max_body_rate = max_body_rate
        self.k_attitude, self.k_yaw = k_attitude, k_yaw
        self.max_horizontal = GRAVITY * math.tan(math.radians(max_tilt_deg))
        self.max_total_thrust = 4.0 * self.airframe.max_thrust_per_motor
        self.mixer = Mixer(self.airframe)
        self.rate_controller = RateController(self.airframe)

    def __call__(self, obs: np.ndarray, accel: np.ndarray) -> np.ndarray:
        """``obs`` (float64, the observation layout) and the desired acceleration without gravity -> action."""
        rotation, body_rates = obs[3:12].reshape(3, 3), obs[15:18]
        horizontal = math.hypot(accel[0], accel[1])
        if horizontal > self.max_horizontal:
            accel[:2] *= self.max_horizontal / horizontal
        accel[2] = max(accel[2] + GRAVITY, 0.2 * GRAVITY)  # never command free fall

        body_z = rotation[:, 2]
        thrust = self.airframe.mass * float(accel @ body_z)
        desired_z = accel / np.linalg.norm(accel)
        # Attitude error (body frame): rotate body z onto desired z; yaw error from body x's heading.
        error_world = np.cross(body_z, desired_z)
        error_body = rotation.T @ error_world
        rates = self.k_attitude * error_body
        rates[2] = -self.k_yaw * math.atan2(rotation[1, 0], rotation[0, 0])
        rates = np.clip(rates, -self.max_body_rate, self.max_body_rate)

        collective = np.clip(thrust, 0.0, self.max_total_thrust)
        if self.action_mode == "ctbr":
            action = np.concatenate([[2.0 * collective / self.max_total_thrust - 1.0], rates / self.max_body_rate])
        else:
            torque = self.rate_controller.torque(rates[None, :], body_rates[None, :])
            rotor = self.mixer.rotor_thrusts(np.array([collective]), torque)[0]
            action = 2.0 * rotor / self.airframe.max_thrust_per_motor - 1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class CascadedPID:
    """obs -> action for ``ctbr`` or ``motors`` mode: hold the observation's target.

    Outer loop: desired acceleration a = -kp e - kd v - ki int(e) (+ g z in ``AttitudeThrustLoop``).
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
        self.attitude = AttitudeThrustLoop(airframe, action_mode, max_body_rate, k_attitude, k_yaw, max_tilt_deg)
        self.airframe, self.action_mode = self.attitude.airframe, action_mode
        self.dt = 1.0 / control_hz
        self.kp, self.kd, self.ki = np.array(kp), np.array(kd), np.array(ki)
        self.integral = np.zeros(3)

    @classmethod
    def for_env(cls, env, **gains) -> CascadedPID:
        s = env.unwrapped.settings
        return cls(s.airframe, s.action_mode, s.control_hz, s.max_body_rate, **gains)

    def reset(self) -> None:
        self.integral[:] = 0.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        pos_err, velocity = obs[0:3], obs[12:15]
        self.integral = np.clip(self.integral + pos_err * self.dt, -1.0, 1.0)
        accel = -self.kp * pos_err - self.kd * velocity - self.ki * self.integral
        return self.attitude(obs, accel)


class VelocityPID:
    """(obs, world velocity command in m/s) -> action for ``ctbr`` or ``motors`` mode: track the command.

    a = kv (v_cmd - v) + ki int(v_cmd - v), the integral bounded to ``max_integral`` m/s (it absorbs a heavier
    or weaker airframe than the nominal one); then ``AttitudeThrustLoop``. Yaw is held at 0.
    """

    def __init__(
        self,
        airframe: str | Airframe = "cf2x",
        action_mode: str = "ctbr",
        control_hz: int = 48,
        max_body_rate: float = 6.0,
        kv=(2.5, 2.5, 4.0),
        ki=(1.0, 1.0, 2.0),
        max_integral: float = 0.5,
        max_tilt_deg: float = 30.0,
    ):
        self.attitude = AttitudeThrustLoop(airframe, action_mode, max_body_rate, max_tilt_deg=max_tilt_deg)
        self.action_mode = action_mode
        self.dt = 1.0 / control_hz
        self.kv, self.ki = np.array(kv), np.array(ki)
        self.max_integral = max_integral
        self.integral = np.zeros(3)

    @classmethod
    def for_settings(cls, settings) -> VelocityPID:
        """The inner loop a discrete-command task (``VelocityCommandSettings``) flies with."""
        s = settings
        return cls(s.airframe, s.action_mode, s.control_hz, s.max_body_rate)

    def reset(self) -> None:
        self.integral[:] = 0.0

    def __call__(self, obs: np.ndarray, velocity_command) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        error = np.asarray(velocity_command, dtype=np.float64) - obs[12:15]
        self.integral = np.clip(self.integral + error * self.dt, -self.max_integral, self.max_integral)
        return self.attitude(obs, self.kv * error + self.ki * self.integral)
