"""N quadrotors in one PyBullet world: action mapping, rotor lag, aerodynamics, randomization, state.

The Gymnasium env (one drone) and the RLlib multi-agent env (a swarm) both drive this class, so the
physics and the action interface exist once.
"""

from __future__ import annotations

import math

import numpy as np
import pybullet as p

from entropilot.envs.airframe import Airframe
from entropilot.envs.physics import ROTOR_SPIN, Aerodynamics, Mixer, RateController, RotorModel, Wind, rotor_positions, to_body
from entropilot.envs.pybullet_world import PyBulletWorld
from entropilot.envs.settings import DroneSettings


class DroneSimulator:
    """Steps N drones with actions in [-1, 1]^4 (``motors`` or ``ctbr``) and exposes their state.

    State arrays (drone axis first): ``position`` (N, 3) m, ``rotation`` (N, 3, 3) body-to-world,
    ``velocity`` (N, 3) world m/s, ``body_rates`` (N, 3) body rad/s, ``rpm`` (N, 4).
    """

    def __init__(self, settings: DroneSettings, num_drones: int = 1, downwash: bool = False):
        self.settings = settings
        self.num_drones = num_drones
        self.airframe: Airframe = settings.airframe
        self.control_dt = 1.0 / settings.control_hz
        self.world = PyBulletWorld(self.airframe, num_drones, settings.physics_hz, settings.control_hz)
        self.rotors = RotorModel(num_drones, settings.substeps, 1.0 / settings.physics_hz)
        self.mixer = Mixer(self.airframe)
        self.rate_controller = RateController(self.airframe)
        self.aero = Aerodynamics(self.airframe, settings.drag, settings.ground_effect, downwash)
        w = settings.wind
        self.wind = Wind(num_drones, w.mean, w.gust_std, w.gust_time_constant)
        xy = rotor_positions(self.airframe)
        self._force_map = np.stack([np.ones(4), xy[:, 1], -xy[:, 0]], axis=1)  # rotor thrusts -> [T, tx, ty]
        self._yaw_map = -ROTOR_SPIN
        self.true_airframes = [self.airframe] * num_drones
        self._set_true_parameters(self.true_airframes)
        self.air_velocity = np.zeros((num_drones, 3))
        self.last_action = np.tile(self.hover_action(), (num_drones, 1))

    # ---- the action interface -------------------------------------------------------------
    def hover_action(self) -> np.ndarray:
        """The normalized action that balances the nominal weight (same value in both modes' thrust axis)."""
        thrust_fraction = 1.0 / self.airframe.thrust_to_weight
        if self.settings.action_mode == "motors":
            return np.full(4, 2.0 * thrust_fraction - 1.0, dtype=np.float32)
        return np.array([2.0 * thrust_fraction - 1.0, 0.0, 0.0, 0.0], dtype=np.float32)

    def rpm_command(self, actions: np.ndarray) -> np.ndarray:
        """(N, 4) actions in [-1, 1] -> (N, 4) rotor speed commands, through the nominal mixer."""
        max_thrust = self.mixer.max_thrust
        if self.settings.action_mode == "motors":
            thrusts = (actions + 1.0) * (0.5 * max_thrust)
        else:
            collective = (actions[:, 0] + 1.0) * (2.0 * max_thrust)
            rates = actions[:, 1:] * self.settings.max_body_rate
            thrusts = self.mixer.rotor_thrusts(collective, self.rate_controller.torque(rates, self.body_rates))
        return self.mixer.rpm_from_thrust(thrusts)

    # ---- episodes ------------------------------------------------------------------------
    def randomize(self, rng: np.random.Generator) -> None:
        """Draw this episode's true airframe of every drone (the controllers keep the nominal one)."""
        r = self.settings.randomization
        if not r.enabled:
            self._set_true_parameters([self.airframe] * self.num_drones)
            return
        base = self.airframe
        airframes = []
        for _ in range(self.num_drones):
            f = rng.uniform(-1.0, 1.0, size=6) * [r.mass, r.inertia, r.inertia, r.kf, r.km, r.motor_time_constant] + 1.0
            airframes.append(
                base.replace(
                    mass=base.mass * f[0],
                    ixx=base.ixx * f[1],
                    iyy=base.iyy * f[1],
                    izz=base.izz * f[2],
                    kf=base.kf * f[3],
                    km=base.km * f[4],
                    motor_time_constant=base.motor_time_constant * f[5],
                )
            )
        self._set_true_parameters(airframes)

    def _set_true_parameters(self, airframes: list[Airframe]) -> None:
        self.true_airframes = airframes
        self._kf = np.array([[a.kf] for a in airframes])
        self._km = np.array([a.km for a in airframes])
        self.rotors.set_time_constants(np.array([a.motor_time_constant for a in airframes]))
        self.world.set_inertial(airframes)

    def place(self, rng: np.random.Generator, positions, quaternions, velocities, body_rates) -> None:
        """Move every drone to its start state (no URDF reload), rotors spinning at hover speed."""
        for i in range(self.num_drones):
            rotation = np.array(p.getMatrixFromQuaternion(quaternions[i])).reshape(3, 3)
            self.world.place(i, positions[i], quaternions[i], velocities[i], rotation @ np.asarray(body_rates[i]))
        self.rotors.rpm = np.full((self.num_drones, 4), self.airframe.hover_rpm)
        self.wind.reset(rng)
        self.air_velocity = self.wind.mean + self.wind.gust
        self.last_action = np.tile(self.hover_action(), (self.num_drones, 1))
        self._read_state()

    # ---- stepping ------------------------------------------------------------------------
    def step(self, actions: np.ndarray, rng: np.random.Generator) -> None:
        """Advance one control period with (N, 4) actions; they are clipped to [-1, 1] (what executes)."""
        actions = np.clip(actions, -1.0, 1.0)
        self.last_action = actions
        mean_rpm_sq = self.rotors.advance(self.rpm_command(actions))
        thrusts = self._kf * mean_rpm_sq * self.aero.ground_effect_gain(self.position, self.rotation)
        thrust_and_torque = thrusts @ self._force_map
        force = self.aero.body_force(self.rotation, self.velocity, self.air_velocity, self.rotors.rpm, self.position)
        force[:, 2] += thrust_and_torque[:, 0]
        torque = np.empty((self.num_drones, 3))
        torque[:, :2] = thrust_and_torque[:, 1:]
        torque[:, 2] = self._km * (mean_rpm_sq @ self._yaw_map)
        self.world.step(force.tolist(), torque.tolist())
        if self.settings.wind.gust_std > 0:
            self.air_velocity = self.wind.step(self.control_dt, rng)
        self._read_state()

    def _read_state(self) -> None:
        positions, quaternions, velocities, angular = self.world.read()
        self.position = np.array(positions)
        self.quaternion = np.array(quaternions)
        self.rotation = np.array([p.getMatrixFromQuaternion(q) for q in quaternions]).reshape(-1, 3, 3)
        self.velocity = np.array(velocities)
        # body rates = R^T w_world (what a gyro measures)
        self.body_rates = to_body(self.rotation, np.array(angular))

    @property
    def rpm(self) -> np.ndarray:
        return self.rotors.rpm

    def tilt_cosine(self) -> np.ndarray:
        """(N,) cosine of the angle between body z and world z."""
        return self.rotation[:, 2, 2]

    def render(self, target, **kwargs) -> np.ndarray:
        return self.world.render(target, **kwargs)

    def close(self) -> None:
        self.world.close()


def random_attitude(rng: np.random.Generator, max_tilt_deg: float) -> tuple[float, float, float, float]:
    """A quaternion with roll and pitch uniform in +-max_tilt and any yaw."""
    tilt = math.radians(max_tilt_deg)
    roll, pitch = rng.uniform(-tilt, tilt, size=2)
    yaw = rng.uniform(-math.pi, math.pi)
    return p.getQuaternionFromEuler([roll, pitch, yaw])
