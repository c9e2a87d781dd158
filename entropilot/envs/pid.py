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
    """obs -> action for ``ctbr`` or ``motors`` mode, for one drone (obs (22,) -> (4,)) or a batch of drones flown
    in lockstep (obs (N, 22) -> (N, 4), one integrator each); a drone's numbers do not depend on the batch around it.

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
        """Zero the integrator (of every drone, for a batch: its size is taken from the next call)."""
        self.integral = np.zeros(3)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        # Element-wise arithmetic and the attitude stage drone by drone (no matrix products, whose summation order
        # may depend on the batch): one drone's action is the same alone or in a batch.
        obs = np.asarray(obs, dtype=np.float64)
        o = obs.reshape(-1, obs.shape[-1])
        if self.integral.ndim == 2 and len(self.integral) != len(o):
            raise ValueError(f"a batch of {len(o)} drones after {len(self.integral)}: reset() before a new batch")
        integral = np.clip(self.integral + o[:, 0:3] * self.dt, -1.0, 1.0)
        self.integral = integral.reshape(obs.shape[:-1] + (3,))  # (3,) for one drone, (N, 3) for a batch
        accel = -self.kp * o[:, 0:3] - self.kd * o[:, 12:15] - self.ki * integral
        stages = [self.attitude(r, a) for r, a in zip(o[:, 3:12].tolist(), accel.tolist())]  # drone by drone
        if self.action_mode == "ctbr":
            action = np.array([self.attitude.ctbr_action(c, rates) for c, rates in stages], dtype=np.float32)
        else:
            collective, rates = np.array([c for c, _ in stages]), np.array([r for _, r in stages])
            rotor = self.mixer.rotor_thrusts(collective, self.rate_controller.torque(rates, o[:, 15:18]))
            action = np.clip(2.0 * rotor / self.airframe.max_thrust_per_motor - 1.0, -1.0, 1.0).astype(np.float32)
        return action.reshape(obs.shape[:-1] + (4,))
