"""N quadrotors in one PyBullet world: action mapping, rotor lag, aerodynamics, randomization, state.

The Gymnasium env (one drone) and the RLlib multi-agent env (a swarm) both drive this class, so the
physics and the action interface exist once. A step runs each drone's ``DronePhysics`` (physics.py), hands
the wrenches to the backend, and keeps what it reads back as one ``DroneState`` of floats per drone
(``drones``); the (N, 26) array the public state attributes are views of is built only when one of them is
read (a noise-free single-drone env step never reads them). Compiled by Cython in pure-Python mode like
``physics`` (see there): ``DroneSimulator`` is a C class, so a step's bookkeeping costs little next to Bullet.
"""

from __future__ import annotations

import math

import cython
import numpy as np
import pybullet as p

if cython.compiled:  # C's libm and physics.pxd's C functions, not Python calls; the same functions either way
    from cython.cimports.entropilot.envs.physics import drone_control, drone_state
    from cython.cimports.libc.math import isfinite
else:
    from math import isfinite

    from entropilot.envs.physics import drone_control, drone_state

from entropilot.envs.physics import (
    Aerodynamics,
    DronePhysics,
    Mixer,
    RateController,
    RotorModel,
    Wind,
    Wrench,
    rotation_matrix,
)
from entropilot.envs.pybullet_world import PyBulletWorld
from entropilot.envs.settings import DroneSettings
from entropilot.vehicle.airframe import Airframe
from entropilot.vehicle.layout import OBSERVATION_COLUMNS

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


@cython.cclass
class DroneSimulator:
    """Steps N drones with actions in [-1, 1]^4 (``motors`` or ``ctbr``) and exposes their state.

    State arrays (drone axis first): ``position`` (N, 3) m, ``rotation`` (N, 3, 3) body-to-world,
    ``velocity`` (N, 3) world m/s, ``body_rates`` (N, 3) body rad/s, ``quaternion`` (N, 4) (x, y, z, w),
    ``last_action`` (N, 4) the clipped actions of the last step, ``rpm`` (N, 4). They are read-only
    views of ``state`` (N, 26; columns in ``STATE_COLUMNS``), new arrays after every ``step`` and
    ``place``. ``drones`` holds the same numbers as one ``DroneState`` of floats per drone.
    """

    settings = cython.declare(object, visibility="readonly")
    num_drones = cython.declare(cython.Py_ssize_t, visibility="readonly")
    airframe = cython.declare(object, visibility="readonly")
    control_dt = cython.declare(cython.double, visibility="readonly")
    world = cython.declare(object, visibility="readonly")
    rotors = cython.declare(object, visibility="readonly")
    aero = cython.declare(object, visibility="readonly")
    wind = cython.declare(object, visibility="readonly")
    physics = cython.declare(list, visibility="readonly")  # one DronePhysics per drone
    drones = cython.declare(list, visibility="readonly")  # one DroneState per drone
    true_airframes = cython.declare(list, visibility="readonly")
    action_delays = cython.declare(list, visibility="readonly")  # per drone: this episode's, in control periods
    _downwash = cython.declare(cython.bint)
    _no_downwash = cython.declare(list)
    _hover_action_row = cython.declare(list)
    _air_rows = cython.declare(list)
    _arrays = cython.declare(object)

    def __init__(
        self, settings: DroneSettings, num_drones: int = 1, downwash: bool = False, drones_collide: bool = True
    ):
        """``drones_collide=False``: the drones pass through one another (each still meets the ground), each in its
        own frame, so N independent drones share one world (see ``pybullet_world``)."""
        self.settings = settings
        self.num_drones = num_drones
        self.airframe = settings.airframe
        self.control_dt = 1.0 / settings.control_hz
        self.world = PyBulletWorld(
            self.airframe,
            num_drones,
            settings.physics_hz,
            settings.control_hz,
            drones_collide=drones_collide,
            spacing=0.0 if drones_collide else frame_spacing(settings.arena_half_size),
        )
        self.rotors = RotorModel(num_drones, settings.substeps, 1.0 / settings.physics_hz)
        self.aero = Aerodynamics(self.airframe, settings.drag, settings.ground_effect, downwash)
        self._downwash = downwash and num_drones > 1
        self._no_downwash = [0.0] * num_drones
        w = settings.wind
        self.wind = Wind(num_drones, w.mean, w.gust_std, w.gust_time_constant)
        mixer, rates, wrench = Mixer(self.airframe), RateController(self.airframe), Wrench(self.airframe)
        motors = settings.action_mode == "motors"
        self.physics = [
            DronePhysics(motors, float(settings.max_body_rate), mixer, rates, self.aero, wrench, rotors, self.airframe)
            for rotors in self.rotors.drones
        ]
        self._hover_action_row = self.hover_action().tolist()
        self.true_airframes = [None] * num_drones
        self.action_delays = [settings.action_delay_steps] * num_drones
        for i in range(num_drones):
            self.set_true_airframe(i, settings.vehicle_airframe)
        self._air_rows = [self.wind.air_velocity(i) for i in range(num_drones)]
        self._set_state(self.world.read(), [self._hover_action_row] * num_drones)

    # ---- the action interface -------------------------------------------------------------
    def hover_action(self) -> np.ndarray:
        """The normalized action that balances the nominal weight (same value in both modes' thrust axis)."""
        thrust_fraction = 1.0 / self.airframe.thrust_to_weight
        if self.settings.action_mode == "motors":
            return np.full(4, 2.0 * thrust_fraction - 1.0, dtype=np.float32)
        return np.array([2.0 * thrust_fraction - 1.0, 0.0, 0.0, 0.0], dtype=np.float32)

    def rpm_command(self, actions: np.ndarray) -> np.ndarray:
        """(N, 4) actions in [-1, 1] -> (N, 4) rotor speed commands, through the nominal mixer."""
        rows = zip(self.physics, self._action_rows(actions), self.drones)
        return np.array([physics.rpm_command(*a, *drone.body_rates) for physics, a, drone in rows])

    @cython.ccall
    def action_row(self, action, name: str = "action") -> list:
        """One drone's action -> a list of 4 finite floats, or a ValueError naming ``name`` and what is wrong."""
        if type(action) is np.ndarray and action.dtype.char in "fd" and action.shape == (4,):
            row = action.tolist()  # what policies and action_space.sample() give: skip np.asarray's copy
        else:
            array = np.asarray(action, dtype=np.float64)
            if array.shape != (4,):
                raise ValueError(
                    f"{name} must have shape (4,) for action_mode={self.settings.action_mode!r}, "
                    f"got shape {array.shape}"
                )
            row = array.tolist()
        i: cython.Py_ssize_t
        for i in range(4):
            if not isfinite(row[i]):
                raise ValueError(f"{name} must be finite, got {row}")
        return row

    def _action_rows(self, actions) -> list[list[float]]:
        actions = np.asarray(actions, dtype=float)
        if actions.shape != (self.num_drones, 4):
            raise ValueError(f"actions must have shape ({self.num_drones}, 4), got shape {actions.shape}")
        return actions.tolist()

    # ---- episodes ------------------------------------------------------------------------
    def randomize(self, rng: np.random.Generator) -> None:
        """Draw this episode's true airframe, action delay and extra wind of every drone, drone by drone from
        ``rng``."""
        for i in range(self.num_drones):
            self.randomize_drone(i, rng)

    def randomize_drone(self, i: int, rng: np.random.Generator) -> None:
        """Draw drone ``i``'s true airframe (around ``settings.vehicle_airframe``), action delay and extra wind for this
        episode (the controllers keep the nominal airframe)."""
        s = self.settings
        r, base = s.randomization, s.vehicle_airframe
        if not r.enabled:
            self.set_true_airframe(i, base)
            return
        f = rng.uniform(-1.0, 1.0, size=6) * [r.mass, r.inertia, r.inertia, r.kf, r.km, r.motor_time_constant] + 1.0
        self.set_true_airframe(
            i,
            base.replace(
                mass=base.mass * f[0],
                ixx=base.ixx * f[1],
                iyy=base.iyy * f[1],
                izz=base.izz * f[2],
                kf=base.kf * f[3],
                km=base.km * f[4],
                motor_time_constant=base.motor_time_constant * f[5],
            ),
        )
        if r.action_delay_steps:
            self.action_delays[i] = s.action_delay_steps + int(rng.integers(0, r.action_delay_steps + 1))
        if r.wind_speed:
            speed, heading = rng.uniform(0.0, r.wind_speed), rng.uniform(-math.pi, math.pi)
            self.wind.set_extra_wind(i, (speed * math.cos(heading), speed * math.sin(heading), 0.0))
            self._air_rows[i] = self.wind.air_velocity(i)

    def set_true_airframe(self, i: int, airframe: Airframe) -> None:
        """Drone ``i`` flies with ``airframe``'s mass, inertia, kf, km and rotor lag from now on."""
        current = self.true_airframes[i]
        if airframe is current or airframe == current:
            return  # nothing changes: skip the Bullet calls (most resets without randomization)
        self.true_airframes[i] = airframe
        self.physics[i].set_true_airframe(airframe)
        self.rotors.set_time_constant(i, airframe.motor_time_constant)
        self.world.set_drone_inertial(i, airframe)

    def place(self, rng: np.random.Generator, positions, quaternions, velocities, body_rates) -> None:
        """Move every drone to its start state (``place_drone``), drone by drone drawing gusts from ``rng``."""
        for i in range(self.num_drones):
            self.place_drone(i, rng, positions[i], quaternions[i], velocities[i], body_rates[i])

    def place_drone(self, i: int, rng: np.random.Generator, position, quaternion, velocity, body_rates) -> None:
        """Move drone ``i`` to a start state (no URDF reload), rotors spinning at hover speed, its action delay line
        holding the hover action, a new gust from ``rng`` (when gusts are on); world-frame position and velocity,
        quaternion (x, y, z, w), body rates."""
        q = list(map(float, quaternion))
        r = rotation_matrix(q)
        b0, b1, b2 = map(float, body_rates)
        angular_world = (  # R w_body
            r[0] * b0 + r[1] * b1 + r[2] * b2,
            r[3] * b0 + r[4] * b1 + r[5] * b2,
            r[6] * b0 + r[7] * b1 + r[8] * b2,
        )
        self.world.place(i, position, q, velocity, angular_world)
        self.rotors.drones[i].rpm = [float(self.airframe.hover_rpm)] * 4
        self.physics[i].reset_action_delay(self.action_delays[i], self._hover_action_row)
        if self.wind.gust_std > 0:  # without gusts the air moves at the steady wind, set when that is drawn
            self.wind.reset_drone(i, rng)
            self._air_rows[i] = self.wind.air_velocity(i)
        position, quaternion, velocity, angular_velocity = self.world.read_drone(i)
        self.drones[i] = drone_state(position, quaternion, velocity, angular_velocity, self._hover_action_row)
        self._arrays = None

    # ---- stepping ------------------------------------------------------------------------
    def step(self, actions: np.ndarray, rng) -> None:
        """Advance one control period with (N, 4) actions; they are clipped to [-1, 1] (what executes). ``rng``:
        the random stream of every drone's gusts, or a list of one stream per drone."""
        rngs = rng if isinstance(rng, list) else [rng] * self.num_drones
        self.step_rows(self._action_rows(actions), rngs)

    @cython.ccall
    def step_rows(self, rows: list, rngs: list, idle: list = None) -> cython.void:
        """``step`` with the actions as N lists of 4 floats, checked by the caller (an env checks them anyway), and
        one random stream per drone. ``idle[i]`` true: drone ``i`` gets no wrench, its rotors and gust stand still
        and it draws nothing (the vector env places it at a new start right after)."""
        downwash = self.aero.downwash_forces(self.position).tolist() if self._downwash else self._no_downwash
        n: cython.Py_ssize_t = self.num_drones
        executed, forces, torques = [None] * n, [None] * n, [None] * n
        i: cython.Py_ssize_t
        for i in range(n):
            if idle is not None and idle[i]:
                executed[i] = self.drones[i].action
                continue
            executed[i], forces[i], torques[i] = drone_control(
                self.physics[i], rows[i], self.drones[i], self._air_rows[i], downwash[i]
            )
        self._set_state(self.world.step(forces, torques), executed)
        if self.wind.gust_std > 0:
            dt: cython.double = self.control_dt
            for i in range(n):
                if idle is None or not idle[i]:
                    self._air_rows[i] = self.wind.step_drone(i, dt, rngs[i])

    @cython.cfunc
    def _set_state(self, bodies: list, actions: list) -> cython.void:
        """``drones`` from the backend's (position, quaternion, velocity, angular velocity) of every body; the state
        arrays follow when first read."""
        i: cython.Py_ssize_t
        drones = [None] * self.num_drones
        for i in range(self.num_drones):
            position, quaternion, velocity, angular_velocity = bodies[i]
            drones[i] = drone_state(position, quaternion, velocity, angular_velocity, actions[i])
        self.drones = drones
        self._arrays = None

    def _state_arrays(self) -> tuple[np.ndarray, ...]:
        """(state, position, rotation, velocity, body_rates, last_action, quaternion), built once per step."""
        if self._arrays is None:
            flat: list[float] = []
            for drone in self.drones:
                flat += drone.position  # in STATE_COLUMNS order
                flat += drone.rotation
                flat += drone.velocity
                flat += drone.body_rates
                flat += drone.action
                flat += drone.quaternion
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
    def air_velocity(self) -> np.ndarray:
        """(N, 3) the wind at each drone, world m/s."""
        return np.array(self._air_rows)

    @property
    def rpm(self) -> np.ndarray:
        return self.rotors.rpm

    def tilt_cosine(self) -> np.ndarray:
        """(N,) cosine of the angle between body z and world z."""
        return self.rotation[:, 2, 2]

    def render(self, target, **kwargs) -> np.ndarray:
        """An RGB frame of a chase camera on ``target`` (in drone ``drone``'s frame, keyword; 0 by default)."""
        return self.world.render(target, **kwargs)

    def close(self) -> None:
        self.world.close()


def frame_spacing(arena_half_size: float) -> float:
    """How far apart independent drones' frames sit: a power of two (exact offsets) over the arena's width plus 2 m,
    so a drone has left its arena (and ended its episode) long before it nears a neighbour's."""
    return float(2 ** math.ceil(math.log2(2.0 * arena_half_size + 2.0)))


def uniform(rng: np.random.Generator, low, high) -> list[float]:
    """``rng.uniform(low, high)`` for two sequences of floats, as a list: the same numbers and the same stream
    (numpy draws one double u per value and computes low + (high - low) * u) without numpy's ~10 us of
    argument handling, which made up a third of a reset."""
    return [lo + (hi - lo) * u for lo, hi, u in zip(low, high, rng.random(len(low)).tolist())]


def attitude_bounds(max_tilt_deg: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Low and high (roll, pitch, yaw) of a random start attitude: roll and pitch within +-max_tilt, any yaw."""
    tilt = math.radians(max_tilt_deg)
    return (-tilt, -tilt, -math.pi), (tilt, tilt, math.pi)


def random_attitude(rng: np.random.Generator, max_tilt_deg: float) -> tuple[float, float, float, float]:
    """A quaternion with roll and pitch uniform in +-max_tilt and any yaw."""
    # The values and stream of uniform(-tilt, tilt, size=2) followed by uniform(-pi, pi).
    return p.getQuaternionFromEuler(uniform(rng, *attitude_bounds(max_tilt_deg)))
