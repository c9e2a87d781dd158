"""N quadrotors in one PyBullet world: action mapping, rotor lag, aerodynamics, randomization, state.

The Gymnasium env (one drone) and the RLlib multi-agent env (a swarm) both drive this class, so the
physics and the action interface exist once. Per-drone math runs in plain Python floats (see
physics.py); the state read back from Bullet stays in per-drone tuples of floats (``drones``), and the
(N, 26) array the public state attributes are views of is built only when one of them is read (a
noise-free single-drone env step never reads them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pybullet as p

from entropilot.envs.airframe import Airframe
from entropilot.envs.observation import OBSERVATION_COLUMNS
from entropilot.envs.physics import Aerodynamics, Mixer, RateController, RotorModel, Wind, Wrench, rotate_to_body
from entropilot.envs.pybullet_world import PyBulletWorld
from entropilot.envs.settings import DroneSettings

# Columns of DroneSimulator.state; the first 22 are the observation's layout (observation.py), position in
# the place of the position error.
STATE_COLUMNS = {
    "position": slice(0, 3),
    "rotation": slice(3, 12),
    "velocity": slice(12, 15),
    "body_rates": slice(15, 18),
    "last_action": slice(18, 22),
    "quaternion": slice(22, 26),
}
STATE_SIZE = 26
assert [STATE_COLUMNS[k] for k in ("position", "rotation", "velocity", "body_rates", "last_action")] == list(
    OBSERVATION_COLUMNS.values()
), "observe() reads the state in observation order"
_POSITION, _ROTATION, _VELOCITY, _BODY_RATES, _LAST_ACTION, _QUATERNION = STATE_COLUMNS.values()


class DroneState(NamedTuple):
    """One drone's state after a step or placement, as plain floats (what the per-drone task code reads)."""

    position: tuple[float, float, float]  # m, world
    rotation: tuple[float, ...]  # the 9 entries of body-to-world R, row-major
    velocity: tuple[float, float, float]  # m/s, world
    body_rates: tuple[float, float, float]  # rad/s, body
    action: list[float]  # the clipped action of the last step
    quaternion: tuple[float, float, float, float]  # (x, y, z, w)


class DroneSimulator:
    """Steps N drones with actions in [-1, 1]^4 (``motors`` or ``ctbr``) and exposes their state.

    State arrays (drone axis first): ``position`` (N, 3) m, ``rotation`` (N, 3, 3) body-to-world,
    ``velocity`` (N, 3) world m/s, ``body_rates`` (N, 3) body rad/s, ``quaternion`` (N, 4) (x, y, z, w),
    ``last_action`` (N, 4) the clipped actions of the last step, ``rpm`` (N, 4). They are read-only
    views of ``state`` (N, 26; columns in ``STATE_COLUMNS``), new arrays after every ``step`` and
    ``place``. ``drones`` holds the same numbers as one ``DroneState`` of floats per drone.
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
        self.wrench = Wrench(self.airframe)
        w = settings.wind
        self.wind = Wind(num_drones, w.mean, w.gust_std, w.gust_time_constant)
        self._motors = settings.action_mode == "motors"
        self._half_max_thrust = 0.5 * self.mixer.max_thrust
        self._two_max_thrust = 2.0 * self.mixer.max_thrust
        self._max_body_rate = float(settings.max_body_rate)
        self._hover_action_row = self.hover_action().tolist()
        self.true_airframes: list[Airframe] = []
        self._set_true_parameters([self.airframe] * num_drones)
        self.air_velocity = np.zeros((num_drones, 3))
        self._air_rows = self.air_velocity.tolist()
        self._read_state([self._hover_action_row] * num_drones)

    # ---- the action interface -------------------------------------------------------------
    def hover_action(self) -> np.ndarray:
        """The normalized action that balances the nominal weight (same value in both modes' thrust axis)."""
        thrust_fraction = 1.0 / self.airframe.thrust_to_weight
        if self.settings.action_mode == "motors":
            return np.full(4, 2.0 * thrust_fraction - 1.0, dtype=np.float32)
        return np.array([2.0 * thrust_fraction - 1.0, 0.0, 0.0, 0.0], dtype=np.float32)

    def rpm_command(self, actions: np.ndarray) -> np.ndarray:
        """(N, 4) actions in [-1, 1] -> (N, 4) rotor speed commands, through the nominal mixer."""
        rows = self._action_rows(actions)
        return np.array([self._drone_rpm_command(a, self.drones[i].body_rates) for i, a in enumerate(rows)])

    def _drone_rpm_command(self, a, body_rates) -> list[float]:
        """One drone's 4 normalized actions -> 4 rotor speed commands [RPM]."""
        if self._motors:
            h = self._half_max_thrust
            thrusts = [(a[0] + 1.0) * h, (a[1] + 1.0) * h, (a[2] + 1.0) * h, (a[3] + 1.0) * h]
        else:
            collective = (a[0] + 1.0) * self._two_max_thrust
            m = self._max_body_rate
            torque = self.rate_controller.drone_torque((a[1] * m, a[2] * m, a[3] * m), body_rates)
            thrusts = self.mixer.drone_rotor_thrusts(collective, torque)
        return self.mixer.drone_rpm_from_thrust(thrusts)

    def _action_rows(self, actions) -> list[list[float]]:
        actions = np.asarray(actions, dtype=float)
        if actions.shape != (self.num_drones, 4):
            raise ValueError(f"actions must have shape ({self.num_drones}, 4), got shape {actions.shape}")
        return actions.tolist()

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
        if airframes == self.true_airframes:
            return  # nothing changes: skip the Bullet calls (most resets without randomization)
        self.true_airframes = airframes
        self._kf = [a.kf for a in airframes]
        self._km = [a.km for a in airframes]
        self.rotors.set_time_constants(np.array([a.motor_time_constant for a in airframes]))
        self.world.set_inertial(airframes)

    def place(self, rng: np.random.Generator, positions, quaternions, velocities, body_rates) -> None:
        """Move every drone to its start state (no URDF reload), rotors spinning at hover speed."""
        for i in range(self.num_drones):
            q = list(map(float, quaternions[i]))
            r = p.getMatrixFromQuaternion(q)
            b0, b1, b2 = map(float, body_rates[i])
            angular_world = (  # R w_body
                r[0] * b0 + r[1] * b1 + r[2] * b2,
                r[3] * b0 + r[4] * b1 + r[5] * b2,
                r[6] * b0 + r[7] * b1 + r[8] * b2,
            )
            self.world.place(i, positions[i], q, velocities[i], angular_world)
        self.rotors.reset(self.airframe.hover_rpm)
        self.wind.reset(rng)
        self.air_velocity = self.wind.mean + self.wind.gust
        self._air_rows = self.air_velocity.tolist()
        self._read_state([self._hover_action_row] * self.num_drones)

    # ---- stepping ------------------------------------------------------------------------
    def step(self, actions: np.ndarray, rng: np.random.Generator) -> None:
        """Advance one control period with (N, 4) actions; they are clipped to [-1, 1] (what executes)."""
        self.step_rows(self._action_rows(actions), rng)

    def step_rows(self, rows: list[list[float]], rng: np.random.Generator) -> None:
        """``step`` with the actions as N lists of 4 floats, checked by the caller (an env checks them anyway)."""
        aero, rotors, wrench = self.aero, self.rotors, self.wrench
        downwash = aero.downwash_forces(self.position).tolist() if aero.downwash and self.num_drones > 1 else None
        executed, forces, torques = [], [], []
        for i, (position, r, velocity, body_rates, _, _) in enumerate(self.drones):
            a0, a1, a2, a3 = rows[i]
            # np.clip(a, -1, 1), written out (NaN passes through as it does there)
            a = [
                -1.0 if a0 < -1.0 else 1.0 if a0 > 1.0 else a0,
                -1.0 if a1 < -1.0 else 1.0 if a1 > 1.0 else a1,
                -1.0 if a2 < -1.0 else 1.0 if a2 > 1.0 else a2,
                -1.0 if a3 < -1.0 else 1.0 if a3 > 1.0 else a3,
            ]
            mean_rpm_sq = rotors.advance_drone(i, self._drone_rpm_command(a, body_rates))
            gains = aero.drone_ground_effect_gain(position[2], r)
            collective, tau_x, tau_y, tau_z = wrench.of(mean_rpm_sq, self._kf[i], self._km[i], gains)
            force = aero.drone_body_force(r, velocity, self._air_rows[i], rotors.rpm_sum(i), downwash[i] if downwash else 0.0)
            force[2] += collective
            executed.append(a)
            forces.append(force)
            torques.append((tau_x, tau_y, tau_z))
        self.world.step(forces, torques)
        if self.wind.gust_std > 0:
            self.air_velocity = self.wind.step(self.control_dt, rng)
            self._air_rows = self.air_velocity.tolist()
        self._read_state(executed)

    def _read_state(self, actions: list) -> None:
        """Read every body from Bullet into ``drones``; the state arrays follow when first read."""
        matrix = p.getMatrixFromQuaternion
        drones = []
        for (position, q, velocity, w), action in zip(self.world.read(), actions):
            r = matrix(q)
            drones.append(DroneState(position, r, velocity, rotate_to_body(r, w), action, q))  # gyro: body-frame w
        self.drones = drones
        self._arrays = None

    def _state_arrays(self) -> tuple[np.ndarray, ...]:
        """(state, position, rotation, velocity, body_rates, last_action, quaternion), built once per step."""
        if self._arrays is None:
            flat: list[float] = []
            for position, r, velocity, body_rates, action, q in self.drones:
                flat += position  # in STATE_COLUMNS order
                flat += r
                flat += velocity
                flat += body_rates
                flat += action
                flat += q
            n = self.num_drones
            state = np.array(flat).reshape(n, STATE_SIZE)
            state.flags.writeable = False
            self._arrays = (
                state,
                state[:, _POSITION],
                state[:, _ROTATION].reshape(n, 3, 3),
                state[:, _VELOCITY],
                state[:, _BODY_RATES],
                state[:, _LAST_ACTION],
                state[:, _QUATERNION],
            )
        return self._arrays

    @property
    def state(self) -> np.ndarray:
        return self._state_arrays()[0]

    @property
    def position(self) -> np.ndarray:
        return self._state_arrays()[1]

    @property
    def rotation(self) -> np.ndarray:
        return self._state_arrays()[2]

    @property
    def velocity(self) -> np.ndarray:
        return self._state_arrays()[3]

    @property
    def body_rates(self) -> np.ndarray:
        return self._state_arrays()[4]

    @property
    def last_action(self) -> np.ndarray:
        return self._state_arrays()[5]

    @property
    def quaternion(self) -> np.ndarray:
        return self._state_arrays()[6]

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


def uniform(rng: np.random.Generator, low, high) -> list[float]:
    """``rng.uniform(low, high)`` for two sequences of floats, as a list: the same numbers and the same stream
    (numpy draws one double u per value and computes low + (high - low) * u) without numpy's ~10 us of
    argument handling, which made up a third of a reset."""
    return [lo + (hi - lo) * u for lo, hi, u in zip(low, high, rng.random(len(low)).tolist())]


def random_attitude(rng: np.random.Generator, max_tilt_deg: float) -> tuple[float, float, float, float]:
    """A quaternion with roll and pitch uniform in +-max_tilt and any yaw."""
    tilt = math.radians(max_tilt_deg)
    # The values and stream of uniform(-tilt, tilt, size=2) followed by uniform(-pi, pi).
    return p.getQuaternionFromEuler(uniform(rng, (-tilt, -tilt, -math.pi), (tilt, tilt, math.pi)))
