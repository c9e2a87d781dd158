"""Cascaded PID baseline (position -> attitude -> body rates, Crazyflie-style) that flies from the observation.

It reads the same observation a policy reads and emits the same normalized action, so it is the
physics sanity check (if it cannot hover, the model is wrong), the baseline RL is compared to, and
what the demo flies until a trained policy exists. Its attitude and thrust stages are the vehicle's
(``entropilot.vehicle.control.AttitudeThrust``), shared with the velocity loop of the discrete-command tasks.
"""

from __future__ import annotations

import numpy as np

from entropilot.envs.physics import Mixer, RateController
from entropilot.vehicle.airframe import Airframe, get_airframe
from entropilot.vehicle.control import AttitudeThrust


class CascadedPID:
    """obs -> action for ``ctbr`` or ``motors`` mode.

    Outer loop: desired acceleration a = -kp e - kd v - ki int(e) (+ g z); ``AttitudeThrust`` turns it into
    collective thrust and body rates (yaw held at 0). In ``motors`` mode the rates go through the same nominal
    rate controller and mixer the simulator uses for ``ctbr``.
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
        self.kp, self.kd, self.ki = np.array(kp), np.array(kd), np.array(ki)
        self.max_total_thrust = 4.0 * self.airframe.max_thrust_per_motor
        self.attitude = AttitudeThrust(
            self.airframe.mass, self.max_total_thrust, max_body_rate, k_attitude, k_yaw, max_tilt_deg
        )
        self.mixer = Mixer(self.airframe)
        self.rate_controller = RateController(self.airframe)
        self.integral = np.zeros(3)

    @classmethod
    def for_env(cls, env, **gains) -> CascadedPID:
        s = env.unwrapped.settings
        return cls(s.airframe, s.action_mode, s.control_hz, s.max_body_rate, **gains)

    def reset(self) -> None:
        self.integral[:] = 0.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        pos_err, velocity, body_rates = obs[0:3], obs[12:15], obs[15:18]
        self.integral = np.clip(self.integral + pos_err * self.dt, -1.0, 1.0)
        accel = -self.kp * pos_err - self.kd * velocity - self.ki * self.integral
        collective, rates = self.attitude(obs[3:12].tolist(), accel.tolist())
        if self.action_mode == "ctbr":
            return np.array(self.attitude.ctbr_action(collective, rates), dtype=np.float32)
        torque = self.rate_controller.torque(np.array([rates]), body_rates[None, :])
        rotor = self.mixer.rotor_thrusts(np.array([collective]), torque)[0]
        return np.clip(2.0 * rotor / self.airframe.max_thrust_per_motor - 1.0, -1.0, 1.0).astype(np.float32)
