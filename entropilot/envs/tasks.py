"""The drone tasks, per drone: the reward, crash and success rules (``HoverRules``) and one drone's episode of a
task, with its start, reference point, clock and sensor noise (``HoverEpisode``, ``WaypointEpisode``). A single-drone
env runs one episode, the vector env one per drone of its world (``EpisodeBatch``), the swarm applies the rules to
each of its drones: all of them share one rule and, per drone, one sequence of random draws.

Compiled by Cython in pure-Python mode like ``physics`` (see there): the ``cython.*`` annotations make the per-drone
rules C arithmetic and ``EpisodeBatch.step``, the vector env's loop over its drones, C around the per-drone calls;
uncompiled they run as plain Python with the same numbers.
"""

from __future__ import annotations

import math

import cython
import numpy as np
import pybullet as p

if cython.compiled:  # C's libm and observation.pxd's C functions, not Python calls; the same functions either way
    from cython.cimports.entropilot.envs.observation import to_heading_frame, write_noisy_observation, write_observation
    from cython.cimports.libc.math import cos, exp, sin, sqrt
else:
    from math import cos, exp, sin, sqrt

    from entropilot.envs.observation import to_heading_frame, write_noisy_observation, write_observation

from entropilot.envs.settings import HoverSettings
from entropilot.envs.simulator import attitude_bounds, uniform
from entropilot.vehicle.layout import OBSERVATION_SIZE

TWO_PI: cython.double = 2.0 * math.pi
CRASH_STARTS: cython.Py_ssize_t = 256  # crashed episodes' starts a hover env keeps to replay (replay_crash_starts)


@cython.ccall
def drone_hover_reward(pos_err, velocity, body_rates, tilt_cos: cython.double, action, prev_action) -> cython.double:
    """Dense reward in (0, 1]: exp(-cost), so staying alive always beats crashing.

    The distance term dominates; velocity, spin, tilt and action changes are small costs that make
    the policy settle instead of orbit the target. Bounded below by 0 so a far-away drone is never
    better off ending the episode.
    """
    d0: cython.double = action[0] - prev_action[0]
    d1: cython.double = action[1] - prev_action[1]
    d2: cython.double = action[2] - prev_action[2]
    d3: cython.double = action[3] - prev_action[3]
    cost: cython.double = (
        2.0 * norm3(pos_err)
        + 0.1 * norm3(velocity)
        + 0.05 * norm3(body_rates)
        + 0.2 * (1.0 - tilt_cos)
        + 0.05 * (d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3)
    )
    return exp(-cost)


@cython.ccall
def norm3(v) -> cython.double:
    """Euclidean norm of one 3-vector of floats."""
    x: cython.double = v[0]
    y: cython.double = v[1]
    z: cython.double = v[2]
    return sqrt(x * x + y * y + z * z)


@cython.ccall
def position_error(position, target) -> tuple:
    """``position - target`` for two 3-vectors of floats."""
    return (position[0] - target[0], position[1] - target[1], position[2] - target[2])


@cython.cclass
class HoverRules:
    """What a step means for each drone of a hover-style task: its reward, whether it crashed (ground hit at
    speed, tilt past the limit, left the arena) and how long it has stayed inside the success radius
    (success = inside for the last ``success_seconds`` of the episode)."""

    floor = cython.declare(cython.double, visibility="readonly")  # m: body centre this low touches the ground
    crash_speed = cython.declare(cython.double, visibility="readonly")  # m/s
    min_tilt_cos = cython.declare(cython.double, visibility="readonly")
    arena_half_size = cython.declare(cython.double, visibility="readonly")  # m
    success_radius = cython.declare(cython.double, visibility="readonly")  # m
    required_steps = cython.declare(cython.Py_ssize_t, visibility="readonly")
    inside_steps = cython.declare(list, visibility="readonly")  # per drone: consecutive steps inside the radius
    # Per drone: its speed at the previous control step. Ground contact can stop a falling body inside one control
    # period (five physics steps), so the speed read after the step may already be ~0 although it hit at ~3 m/s.
    speeds = cython.declare(list, visibility="readonly")
    # The start states (9 floats each) of the last CRASH_STARTS crashed episodes of any drone, oldest first; kept only
    # where the settings replay them.
    crash_starts = cython.declare(list, visibility="readonly")

    def __init__(self, sim, settings: HoverSettings):
        self.floor = sim.airframe.collision_half_extents[2] + 0.01
        self.crash_speed = settings.crash_speed
        self.min_tilt_cos = math.cos(math.radians(settings.max_tilt_deg))
        self.arena_half_size = settings.arena_half_size
        self.success_radius = settings.success_radius
        self.required_steps = int(round(settings.success_seconds * settings.control_hz))
        self.inside_steps = [0] * sim.num_drones
        self.speeds = [0.0] * sim.num_drones
        self.crash_starts = []

    def reset(self) -> None:
        """A new episode: no drone has been inside the success radius yet, nor moved."""
        self.inside_steps = [0] * len(self.inside_steps)
        self.speeds = [0.0] * len(self.speeds)

    @cython.ccall
    def reset_drone(self, i: cython.Py_ssize_t) -> cython.void:
        """A new episode of drone ``i`` alone."""
        self.inside_steps[i] = 0
        self.speeds[i] = 0.0

    @cython.ccall
    def restart_success(self, i: cython.Py_ssize_t) -> cython.void:
        """Drone ``i`` has a new reference point to reach and hold: its time inside starts again."""
        self.inside_steps[i] = 0

    @cython.ccall
    def evaluate(self, i: cython.Py_ssize_t, drone, target, prev_action) -> tuple:
        """Drone ``i`` after a step (a simulator ``DroneState``), its reference point ``target`` and the action
        before this step's -> (reward, distance to the target, crash reason or None). Counts its success steps."""
        position, velocity = drone.position, drone.velocity
        pos_err = position_error(position, target)
        distance: cython.double = norm3(pos_err)
        tilt_cos: cython.double = drone.rotation[8]
        reward = drone_hover_reward(pos_err, velocity, drone.body_rates, tilt_cos, drone.action, prev_action)
        # NaN counts as outside
        self.inside_steps[i] = self.inside_steps[i] + 1 if distance <= self.success_radius else 0
        speed: cython.double = norm3(velocity)
        # It met the ground at least as fast as it moved at either end of the period (within the ~0.2 m/s that full
        # thrust can take off in 1/48 s).
        impact_speed: cython.double = max(speed, self.speeds[i])
        self.speeds[i] = speed
        return reward, distance, self.crash_reason(position, impact_speed, tilt_cos)

    @cython.ccall
    def remember_crash_start(self, start: tuple) -> cython.void:
        self.crash_starts.append(start)
        if len(self.crash_starts) > CRASH_STARTS:
            del self.crash_starts[0]

    @cython.ccall
    def crash_reason(self, position, impact_speed: cython.double, tilt_cos: cython.double):
        """Why a drone at ``position`` with tilt cosine ``tilt_cos``, which moved at up to ``impact_speed`` over the
        last control period, crashed (None = it did not)."""
        x: cython.double = position[0]
        y: cython.double = position[1]
        z: cython.double = position[2]
        half: cython.double = self.arena_half_size
        if z <= self.floor and impact_speed > self.crash_speed:
            return "ground_impact"
        if tilt_cos < self.min_tilt_cos:
            return "tilt"
        if abs(x) > half or abs(y) > half or z > 2 * half:
            return "left_arena"
        return None

    @cython.ccall
    def succeeded(self, i: cython.Py_ssize_t) -> cython.bint:
        """Whether drone ``i`` has been inside the success radius for the last ``success_seconds``."""
        return self.inside_steps[i] >= self.required_steps


@cython.cclass
class HoverEpisode:
    """Drone ``index`` of ``sim`` flies from a random start in a box to the settings' target and holds it.

    ``reset(rng)`` starts an episode, drawing from ``rng`` (the drone's random stream) its true airframe, action delay
    and extra wind (``sim.randomize_drone``), its sensor-noise level, its start state and gust. After the simulator
    has stepped the drone, ``step()`` says what the step meant; ``succeeded()`` whether the episode that just ended is
    a success. ``observe(rng)`` and ``write_observation(out, rng)`` give what the policy sees (noise drawn from
    ``rng``).
    """

    sim = cython.declare(object, visibility="readonly")  # a DroneSimulator
    index = cython.declare(cython.Py_ssize_t, visibility="readonly")
    settings = cython.declare(object, visibility="readonly")
    rules = cython.declare(HoverRules, visibility="readonly")  # of every drone of sim
    target = cython.declare(tuple, visibility="readonly")  # (x, y, z): the reference point now
    steps = cython.declare(cython.Py_ssize_t, visibility="readonly")  # control steps since the reset
    noise = cython.declare(object, visibility="readonly")  # this episode's SensorNoise
    _noisy = cython.declare(cython.bint)
    _heading_frame = cython.declare(cython.bint)  # settings.observation_frame == "heading"
    _moving = cython.declare(cython.bint)  # whether advance_target moves the reference (hover's stays)
    _truncated = cython.declare(cython.bint)  # the last step ran out the episode's time
    _max_steps = cython.declare(cython.Py_ssize_t)
    _crash_penalty = cython.declare(cython.double)
    _start_low = cython.declare(tuple)
    _start_high = cython.declare(tuple)
    _start = cython.declare(object)  # this episode's start state (9 floats): position, roll/pitch/yaw, velocity
    _replay = cython.declare(cython.double)  # settings.replay_crash_starts
    _prev_action = cython.declare(list)  # the action executed before the last step (the reward's change cost)
    _buffer = cython.declare(object)
    _view = cython.declare(cython.float[:])

    def __init__(self, sim, index: int, rules: HoverRules):
        s = sim.settings
        self.sim, self.index, self.settings, self.rules = sim, index, s, rules
        self.target = s.target
        self.steps = 0
        self.noise = s.sensor_noise
        self._noisy = self.noise.enabled
        self._heading_frame = s.observation_frame == "heading"
        self._moving = False
        self._truncated = False
        self._max_steps = s.max_episode_steps
        self._crash_penalty = s.crash_penalty
        # A start's position, attitude (roll, pitch, yaw) and velocity come from one draw of 9 uniforms: the
        # numbers and stream of three draws of 3, at a third of the calls into numpy.
        attitude_low, attitude_high = attitude_bounds(s.start_tilt_deg)
        self._start_low = (*s.start_low, *attitude_low, *(-s.start_velocity,) * 3)
        self._start_high = (*s.start_high, *attitude_high, *(s.start_velocity,) * 3)
        self._start = ()
        self._replay = s.replay_crash_starts
        self._prev_action = sim.drones[index].action
        # observe() fills this buffer and hands out a copy: acquiring a view of a new array would cost more.
        self._buffer = np.zeros(OBSERVATION_SIZE, dtype=np.float32)
        self._view = self._buffer

    @cython.ccall
    def reset(self, rng) -> cython.void:
        """A new episode: true airframe (domain randomization), sensor-noise level, start state, the reference."""
        s, sim, i = self.settings, self.sim, self.index
        sim.randomize_drone(i, rng)
        r = s.randomization
        if r.noise > 0:
            self.noise = s.sensor_noise.scaled(1.0 + rng.uniform(-1, 1) * r.noise)
            self._noisy = self.noise.enabled
        # Drawn only where replay is on, so every other configuration keeps its random stream.
        crashed = self.rules.crash_starts
        if self._replay > 0 and crashed and rng.random() < self._replay:
            start = crashed[rng.integers(len(crashed))]
        else:
            start = uniform(rng, self._start_low, self._start_high)
        self._start = start
        attitude = p.getQuaternionFromEuler(start[3:6])
        sim.place_drone(i, rng, start[:3], attitude, start[6:], (0.0, 0.0, 0.0))
        self.reset_target(rng)
        self.rules.reset_drone(i)
        self.steps = 0
        self._truncated = False
        self._prev_action = sim.drones[i].action

    @cython.ccall
    def reset_target(self, rng) -> cython.void:
        """The reference point at an episode's start (waypoint tracking draws its jitter from ``rng``)."""
        self.target = self.settings.target

    @cython.ccall
    def advance_target(self, position) -> cython.void:
        """Move the reference after a step that ended at ``position``; hover's target stays where it is."""

    @cython.ccall
    def step(self) -> tuple:
        """What the simulator's last step of this drone meant: (reward, distance to the reference point, crash
        reason or None, terminated, truncated). A crash terminates the episode with ``crash_penalty`` off the step's
        reward; ``episode_seconds`` of flight truncate it."""
        drone = self.sim.drones[self.index]
        self.steps += 1
        if self._moving:
            self.advance_target(drone.position)
        reward: cython.double
        distance: cython.double
        reward, distance, crash = self.rules.evaluate(self.index, drone, self.target, self._prev_action)
        self._prev_action = drone.action
        terminated: cython.bint = crash is not None
        self._truncated = not terminated and self.steps >= self._max_steps
        if terminated:
            reward -= self._crash_penalty
            if self._replay > 0:
                self.rules.remember_crash_start(tuple(self._start))
        return reward, distance, crash, terminated, self._truncated

    @cython.ccall
    def succeeded(self) -> cython.bint:
        """Whether the episode that just ended is a success: it ran its full time (no crash) and the drone stayed
        inside the success radius for the last ``success_seconds``."""
        return self._truncated and self.rules.succeeded(self.index)

    @cython.ccall
    def distance(self) -> cython.double:
        """The drone's distance to the reference point now [m]."""
        return norm3(position_error(self.sim.drones[self.index].position, self.target))

    @cython.ccall
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def write_observation(self, out: cython.float[:], rng) -> cython.void:
        """Fill ``out`` (OBSERVATION_SIZE float32) with what the policy sees now; sensor noise draws 12 standard
        normals from ``rng``."""
        drone = self.sim.drones[self.index]
        if self._noisy:
            write_noisy_observation(out, drone, self.target, self.noise, rng.standard_normal(12).tolist())
        else:
            write_observation(out, drone, self.target)
        if self._heading_frame:
            to_heading_frame(out)

    @cython.ccall
    def observe(self, rng):
        """What the policy sees now, as a new float32 array."""
        self.write_observation(self._view, rng)
        return self._buffer.copy()


@cython.cclass
class WaypointEpisode(HoverEpisode):
    """Visit waypoints in order (the reference advances within ``switch_radius`` of the current one), or track a
    circle through the first. Success also needs every waypoint visited."""

    waypoints = cython.declare(object, visibility="readonly")  # (W, 3) this episode's waypoints (jittered)
    waypoint_index = cython.declare(cython.Py_ssize_t, visibility="readonly")
    _rows = cython.declare(list)  # the waypoints as (x, y, z) tuples
    _circle = cython.declare(cython.bint)
    _switch_radius = cython.declare(cython.double)
    _circle_radius = cython.declare(cython.double)
    _circle_period = cython.declare(cython.double)
    _control_hz = cython.declare(cython.double)

    def __init__(self, sim, index: int, rules: HoverRules):
        super().__init__(sim, index, rules)
        s = self.settings
        self._moving = True
        self._circle = s.trajectory == "circle"
        self._switch_radius = s.switch_radius
        self._circle_radius = s.circle_radius
        self._circle_period = s.circle_period
        self._control_hz = s.control_hz
        self.waypoints = np.array(s.waypoints)
        self._rows = list(s.waypoints)
        self.waypoint_index = 0

    @cython.ccall
    def reset_target(self, rng) -> cython.void:
        s = self.settings
        waypoints = np.array(s.waypoints)
        if s.randomize_waypoints > 0:
            waypoints = waypoints + rng.uniform(-s.randomize_waypoints, s.randomize_waypoints, waypoints.shape)
            waypoints[:, 2] = np.maximum(waypoints[:, 2], 0.3)
        self.waypoints = waypoints
        self._rows = [tuple(w) for w in waypoints.tolist()]
        self.waypoint_index = 0
        self.target = self._reference(0.0)

    @cython.cfunc
    def _reference(self, t: cython.double) -> tuple:
        """The reference point ``t`` seconds into the episode."""
        if self._circle:
            centre = self._rows[0]
            phase: cython.double = TWO_PI * t / self._circle_period
            r: cython.double = self._circle_radius
            x: cython.double = centre[0]
            y: cython.double = centre[1]
            return (x + r * cos(phase) - r, y + r * sin(phase), centre[2])
        return self._rows[self.waypoint_index]

    @cython.ccall
    def advance_target(self, position) -> cython.void:
        reached: cython.bint = norm3(position_error(position, self.target)) <= self._switch_radius
        if not self._circle and reached and self.waypoint_index < len(self._rows) - 1:
            self.waypoint_index += 1
            self.rules.restart_success(self.index)
        self.target = self._reference(self.steps / self._control_hz)

    @cython.ccall
    def succeeded(self) -> cython.bint:
        last: cython.bint = self._circle or self.waypoint_index == len(self._rows) - 1
        return HoverEpisode.succeeded(self) and last


@cython.cclass
class EpisodeBatch:
    """The episodes of every drone of one world, stepped and reset together: the vector env's loop, in C.

    It owns the batch's output arrays (``observations`` (N, OBSERVATION_SIZE) float32; ``rewards``, ``distance``
    float64; ``terminated``, ``truncated`` bool), which every ``step`` and ``reset`` overwrite, and follows
    Gymnasium's next-step autoreset: a drone whose episode ended at one step starts its next episode at the
    following step instead of flying that step's action.
    """

    sim = cython.declare(object, visibility="readonly")  # a DroneSimulator
    episodes = cython.declare(list, visibility="readonly")
    observations = cython.declare(object, visibility="readonly")
    rewards = cython.declare(object, visibility="readonly")
    distance = cython.declare(object, visibility="readonly")
    terminated = cython.declare(object, visibility="readonly")
    truncated = cython.declare(object, visibility="readonly")
    autoreset = cython.declare(object, visibility="readonly")  # (N,) bool: starts a new episode at the next step
    _observations = cython.declare(cython.float[:, :])
    _rewards = cython.declare(cython.double[:])
    _distance = cython.declare(cython.double[:])
    _terminated = cython.declare(cython.uchar[:])
    _truncated = cython.declare(cython.uchar[:])
    _autoreset = cython.declare(cython.uchar[:])

    def __init__(self, sim, episodes: list):
        n = sim.num_drones
        self.sim, self.episodes = sim, episodes
        self.observations = np.zeros((n, OBSERVATION_SIZE), dtype=np.float32)
        self.rewards, self.distance = np.zeros(n), np.zeros(n)
        self.terminated, self.truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        self.autoreset = np.zeros(n, dtype=bool)
        self._observations, self._rewards, self._distance = self.observations, self.rewards, self.distance
        # bool arrays have no C buffer type of their own: view their bytes
        self._terminated, self._truncated = self.terminated.view(np.uint8), self.truncated.view(np.uint8)
        self._autoreset = self.autoreset.view(np.uint8)

    @cython.ccall
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def reset(self, indices: list, rngs: list) -> cython.void:
        """Start a new episode of each drone in ``indices``, drone ``i`` drawing from ``rngs[i]``."""
        i: cython.Py_ssize_t
        episode: HoverEpisode
        for i in indices:
            episode = self.episodes[i]
            rng = rngs[i]
            episode.reset(rng)
            episode.write_observation(self._observations[i], rng)
            self._distance[i] = episode.distance()
            self._rewards[i] = 0.0
            self._terminated[i] = self._truncated[i] = self._autoreset[i] = 0

    @cython.ccall
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def step(self, rows: list, rngs: list) -> list:
        """One control step of every drone: one world step for all, drone ``i`` flying ``rows[i]`` (4 floats) or,
        if its episode ended at the last step, starting a new one (reward 0, neither terminated nor truncated).
        Returns the drones whose episode ended at this step as (index, crash reason or None, success)."""
        n: cython.Py_ssize_t = self.sim.num_drones
        i: cython.Py_ssize_t
        idle = None
        for i in range(n):
            if self._autoreset[i]:
                idle = self.autoreset.tolist()
                break
        self.sim.step_rows(rows, rngs, idle)
        ended = []
        episode: HoverEpisode
        reward: cython.double
        distance: cython.double
        terminated: cython.bint
        truncated: cython.bint
        for i in range(n):
            episode = self.episodes[i]
            rng = rngs[i]
            if self._autoreset[i]:
                episode.reset(rng)
                reward, distance, terminated, truncated = 0.0, episode.distance(), False, False
            else:
                reward, distance, crash, terminated, truncated = episode.step()
                if terminated or truncated:
                    ended.append((i, crash, episode.succeeded()))
            episode.write_observation(self._observations[i], rng)
            self._rewards[i], self._distance[i] = reward, distance
            self._terminated[i], self._truncated[i] = terminated, truncated
            self._autoreset[i] = terminated or truncated
        return ended
