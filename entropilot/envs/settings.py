"""Validated settings of the drone environments: what a YAML `env.kwargs` block may say, checked before any
simulator starts."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

from entropilot.vehicle.airframe import Airframe, get_airframe

ACTION_MODES = ("ctbr", "motors")
OBSERVATION_FRAMES = ("world", "heading")
MAX_ACTION_DELAY = 10  # control periods


def _check(condition: bool, name: str, value, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")


def _finite_nonneg(name: str, value) -> float:
    _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name, value, "a finite number >= 0")
    return float(value)


def _finite_numbers(settings, prefix: str = "") -> None:
    """Every field declared `float` (or `float | None`, when set) holds a finite number: one rule for all of them."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.type in ("float", "float | None") and not (value is None and f.type == "float | None"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            _check(ok, prefix + f.name, value, "a finite number")


def _vec3(name: str, value) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    _check(ok, name, value, "a list of 3 finite numbers")
    return tuple(float(v) for v in value)


def _is_delay(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ACTION_DELAY


def _build(cls, name: str, value):
    """Accept an instance, a mapping (from YAML) or None (defaults) for a nested settings block."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{name}={value!r} is invalid: must be a mapping with keys {[f.name for f in fields(cls)]}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    return cls(**value)


@dataclass(frozen=True)
class SensorNoise:
    """Standard deviations of the zero-mean Gaussian noise on what the policy observes."""

    position: float = 0.0  # m
    velocity: float = 0.0  # m/s
    attitude: float = 0.0  # rad, a small random rotation applied to the attitude
    angular_velocity: float = 0.0  # rad/s

    def __post_init__(self):
        for f in fields(self):
            _finite_nonneg(f"sensor_noise.{f.name}", getattr(self, f.name))

    @functools.cached_property  # read every step
    def enabled(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))

    def scaled(self, factor: float) -> SensorNoise:
        return SensorNoise(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


@dataclass(frozen=True)
class TrueAirframe:
    """How the vehicle really differs from the nominal airframe that the controllers and the policy's action mapping
    assume: factors on the nominal constants (1 = as nominal). A payload is ``mass: 1.2``, a worn motor ``kf: 0.85``,
    slow ESCs ``motor_time_constant: 2.0``, motors that top out early ``max_rpm: 0.9``. Nothing that maps an action to
    rotor speeds sees these, so a policy or the PID must find the difference in flight."""

    mass: float = 1.0
    inertia: float = 1.0  # all three principal moments
    kf: float = 1.0  # thrust per rpm^2: with max_rpm, what the motors can push
    km: float = 1.0
    motor_time_constant: float = 1.0
    max_rpm: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.1 <= value <= 10.0
            _check(ok, f"true_airframe.{f.name}", value, "a factor on the nominal value in [0.1, 10]")

    def of(self, nominal: Airframe) -> Airframe:
        """The true airframe of a vehicle whose nominal one is ``nominal``."""
        if self == TrueAirframe():
            return nominal
        try:
            return nominal.replace(
                name=f"{nominal.name} (true)",
                mass=nominal.mass * self.mass,
                ixx=nominal.ixx * self.inertia,
                iyy=nominal.iyy * self.inertia,
                izz=nominal.izz * self.inertia,
                kf=nominal.kf * self.kf,
                km=nominal.km * self.km,
                motor_time_constant=nominal.motor_time_constant * self.motor_time_constant,
                max_rpm=nominal.max_rpm * self.max_rpm,
            )
        except ValueError as err:
            raise ValueError(f"true_airframe={dataclasses.asdict(self)} is invalid: {err}") from None


@dataclass(frozen=True)
class DomainRandomization:
    """Per episode: relative spreads, each drawing a factor uniformly from [1 - x, 1 + x] (around the true airframe);
    ``action_delay_steps``: an extra action delay drawn uniformly from 0 to that many control periods;
    ``wind_speed``: a horizontal wind added to ``wind.mean``, of any direction and a speed uniform in [0, that] m/s."""

    mass: float = 0.0
    inertia: float = 0.0
    kf: float = 0.0
    km: float = 0.0
    motor_time_constant: float = 0.0
    noise: float = 0.0  # scales every sensor-noise standard deviation
    action_delay_steps: int = 0
    wind_speed: float = 0.0  # m/s

    def __post_init__(self):
        for f in fields(self):
            name, value = f"randomization.{f.name}", getattr(self, f.name)
            if f.name == "action_delay_steps":
                _check(_is_delay(value), name, value, f"an integer in [0, {MAX_ACTION_DELAY}]")
            elif f.name == "wind_speed":
                _check(isinstance(value, (int, float)) and 0.0 <= value <= 20.0, name, value, "in [0, 20] m/s")
            else:
                _check(
                    isinstance(value, (int, float)) and 0.0 <= value < 1.0, name, value, "a relative spread in [0, 1)"
                )

    @functools.cached_property  # read every reset
    def enabled(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))


@dataclass(frozen=True)
class WindSettings:
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m/s, world frame
    gust_std: float = 0.0  # m/s
    gust_time_constant: float = 1.0  # s

    def __post_init__(self):
        _finite_numbers(self, "wind.")
        object.__setattr__(self, "mean", _vec3("wind.mean", self.mean))
        _finite_nonneg("wind.gust_std", self.gust_std)
        _check(self.gust_time_constant > 0, "wind.gust_time_constant", self.gust_time_constant, "> 0")


@dataclass(frozen=True)
class DroneSettings:
    """Options every drone task shares."""

    action_mode: str = "ctbr"
    physics_hz: int = 240
    control_hz: int = 48
    episode_seconds: float = 6.0
    airframe: str | Airframe = "cf2x"  # nominal: what the action mapping (mixer, rate loop) and the PID assume
    true_airframe: TrueAirframe = field(default_factory=TrueAirframe)  # how the flown vehicle differs from it
    motor_time_constant: float | None = None  # s; None = the airframe's
    # Control periods between an action and the rotors receiving it (a link or an autopilot's latency). The
    # observation's previous action is the last one commanded, as on the vehicle.
    action_delay_steps: int = 0
    max_body_rate: float = 6.0  # rad/s at |action| = 1 in ctbr mode
    drag: bool = True
    ground_effect: bool = True
    max_tilt_deg: float = 80.0  # beyond this the episode terminates as a crash
    crash_penalty: float = 2.0  # subtracted from the reward of the step that crashes (per-step rewards are in (0, 1])
    arena_half_size: float = 3.0  # m, |x|, |y| limit; z limit is 2 * arena_half_size
    crash_speed: float = 1.0  # m/s: touching the ground faster than this is a crash
    sensor_noise: SensorNoise = field(default_factory=SensorNoise)
    randomization: DomainRandomization = field(default_factory=DomainRandomization)
    wind: WindSettings = field(default_factory=WindSettings)

    def __post_init__(self):
        _finite_numbers(self)
        _check(self.action_mode in ACTION_MODES, "action_mode", self.action_mode, f"one of {ACTION_MODES}")
        for name in ("physics_hz", "control_hz"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value, "an integer > 0")
        _check(
            self.physics_hz % self.control_hz == 0,
            "control_hz",
            self.control_hz,
            f"an integer divisor of physics_hz={self.physics_hz} (e.g. {self.physics_hz // 5})",
        )
        _check(self.episode_seconds > 0, "episode_seconds", self.episode_seconds, "> 0")
        try:
            object.__setattr__(self, "airframe", get_airframe(self.airframe))
        except ValueError as err:
            raise ValueError(f"airframe: {err}") from None
        if self.motor_time_constant is not None:
            _check(
                isinstance(self.motor_time_constant, (int, float)) and 0 < self.motor_time_constant <= 1.0,
                "motor_time_constant",
                self.motor_time_constant,
                "in (0, 1] seconds (Crazyflie: about 0.02-0.15)",
            )
            object.__setattr__(self, "airframe", self.airframe.replace(motor_time_constant=self.motor_time_constant))
        object.__setattr__(self, "true_airframe", _build(TrueAirframe, "true_airframe", self.true_airframe))
        self.true_airframe.of(self.airframe)  # fails here if the true vehicle cannot hover
        _check(
            _is_delay(self.action_delay_steps),
            "action_delay_steps",
            self.action_delay_steps,
            f"an integer in [0, {MAX_ACTION_DELAY}] (control periods)",
        )
        _check(self.max_body_rate > 0, "max_body_rate", self.max_body_rate, "> 0")
        _check(0 < self.max_tilt_deg <= 180, "max_tilt_deg", self.max_tilt_deg, "in (0, 180]")
        _finite_nonneg("crash_penalty", self.crash_penalty)
        _check(self.arena_half_size > 0, "arena_half_size", self.arena_half_size, "> 0")
        _check(self.crash_speed > 0, "crash_speed", self.crash_speed, "> 0")
        object.__setattr__(self, "sensor_noise", _build(SensorNoise, "sensor_noise", self.sensor_noise))
        object.__setattr__(self, "randomization", _build(DomainRandomization, "randomization", self.randomization))
        object.__setattr__(self, "wind", _build(WindSettings, "wind", self.wind))

    @property
    def substeps(self) -> int:
        return self.physics_hz // self.control_hz

    @functools.cached_property
    def vehicle_airframe(self) -> Airframe:
        """The airframe the drone really has (before per-episode randomization): the nominal one changed by
        ``true_airframe``."""
        return self.true_airframe.of(self.airframe)

    @functools.cached_property  # read every step
    def max_episode_steps(self) -> int:
        return int(round(self.episode_seconds * self.control_hz))

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> DroneSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown env option(s) {unknown} for {cls.__name__}; allowed: {sorted(known)}")
        return cls(**kwargs)

    def replace(self, **changes) -> DroneSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HoverSettings(DroneSettings):
    """Hover: start anywhere in a box, reach and hold one target point."""

    target: tuple[float, float, float] = (0.0, 0.0, 1.0)
    start_low: tuple[float, float, float] = (-0.5, -0.5, 0.5)
    start_high: tuple[float, float, float] = (0.5, 0.5, 1.5)
    start_tilt_deg: float = 10.0  # random initial attitude, max roll/pitch
    start_velocity: float = 0.2  # m/s, max per axis
    success_radius: float = 0.1  # m
    success_seconds: float = 2.0  # inside the radius for the last this-many seconds
    # Training only: the share of resets that start again from where one of this env's last CRASH_STARTS crashed
    # episodes started (position, attitude, velocity; the airframe is drawn anew). Crashes of a policy that flies
    # most starts are rare, so their starts are rare in a batch; replaying them makes the policy practise there.
    replay_crash_starts: float = 0.0
    # The frame of the observation's horizontal quantities. "world": as the layout names them. "heading": position
    # error, velocity and the rotation matrix turned about z by minus the drone's heading, so every heading looks
    # the same to the policy (nothing in these tasks depends on heading) and no heading is preferred.
    observation_frame: str = "world"
    # A task whose commands or controllers are in world axes observes in the world frame only; it says why here.
    world_frame_only: ClassVar[str | None] = None

    def __post_init__(self):
        super().__post_init__()
        _check(0 <= self.replay_crash_starts <= 1, "replay_crash_starts", self.replay_crash_starts, "in [0, 1]")
        frames = ("world",) if self.world_frame_only else OBSERVATION_FRAMES
        _check(
            self.observation_frame in frames,
            "observation_frame",
            self.observation_frame,
            f"'world': {self.world_frame_only}" if self.world_frame_only else f"one of {OBSERVATION_FRAMES}",
        )
        for name in ("target", "start_low", "start_high"):
            object.__setattr__(self, name, _vec3(name, getattr(self, name)))
        _check(
            all(lo <= hi for lo, hi in zip(self.start_low, self.start_high)),
            "start_low",
            self.start_low,
            f"<= start_high={self.start_high} on every axis",
        )
        _check(self.start_low[2] > 0.05, "start_low", self.start_low, "above the ground (z > 0.05)")
        _finite_nonneg("start_tilt_deg", self.start_tilt_deg)
        _finite_nonneg("start_velocity", self.start_velocity)
        _check(self.success_radius > 0, "success_radius", self.success_radius, "> 0")
        _check(
            0 < self.success_seconds <= self.episode_seconds,
            "success_seconds",
            self.success_seconds,
            f"in (0, episode_seconds={self.episode_seconds}]",
        )


VELOCITY_LEVELS_LIMIT = 3.0  # m/s: the largest speed a discrete velocity command may ask for


@dataclass(frozen=True)
class HoverDiscreteSettings(HoverSettings):
    """Hover with discrete velocity commands: per world axis, an index into ``velocity_levels`` (m/s)."""

    velocity_levels: tuple[float, ...] = (-0.5, -0.1, 0.0, 0.1, 0.5)
    world_frame_only: ClassVar[str | None] = "the velocity commands and the loop that flies them are in the world frame"
    command_repeat: int = 1  # control periods each command is held: the policy decides at control_hz / this

    def __post_init__(self):
        super().__post_init__()
        _check(
            self.action_mode == "ctbr",
            "action_mode",
            self.action_mode,
            "'ctbr': the velocity loop commands collective thrust + body rates (what a vehicle's offboard mode takes)",
        )
        levels = self.velocity_levels
        ok = isinstance(levels, (list, tuple)) and 2 <= len(levels) <= 15
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in levels)
        _check(ok, "velocity_levels", levels, "a list of 2 to 15 finite speeds in m/s")
        _check(
            all(a < b for a, b in zip(levels, levels[1:])) and max(abs(v) for v in levels) <= VELOCITY_LEVELS_LIMIT,
            "velocity_levels",
            levels,
            f"strictly increasing, each within +-{VELOCITY_LEVELS_LIMIT} m/s",
        )
        object.__setattr__(self, "velocity_levels", tuple(float(v) for v in levels))
        repeat = self.command_repeat
        _check(
            isinstance(repeat, int) and not isinstance(repeat, bool) and 1 <= repeat <= self.max_episode_steps,
            "command_repeat",
            repeat,
            f"an integer in [1, {self.max_episode_steps}] (control periods per episode)",
        )


@dataclass(frozen=True)
class WaypointSettings(HoverSettings):
    """Waypoints: visit targets in order (switch when within `switch_radius`), or track a smooth curve."""

    waypoints: tuple[tuple[float, float, float], ...] = (
        (0.0, 0.0, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, 1.0, 1.5),
        (0.0, 1.0, 1.0),
    )
    switch_radius: float = 0.2
    trajectory: str = "waypoints"  # "waypoints" | "circle" (a smooth reference curve)
    circle_radius: float = 0.5
    circle_period: float = 8.0  # s
    randomize_waypoints: float = 0.0  # m, uniform jitter added to each waypoint per episode
    episode_seconds: float = 12.0

    def __post_init__(self):
        super().__post_init__()
        _check(len(self.waypoints) >= 1, "waypoints", self.waypoints, "a non-empty list of [x, y, z]")
        object.__setattr__(self, "waypoints", tuple(_vec3(f"waypoints[{i}]", w) for i, w in enumerate(self.waypoints)))
        _check(self.trajectory in ("waypoints", "circle"), "trajectory", self.trajectory, "'waypoints' or 'circle'")
        _check(self.switch_radius > 0, "switch_radius", self.switch_radius, "> 0")
        _check(self.circle_radius > 0, "circle_radius", self.circle_radius, "> 0")
        _check(self.circle_period > 0, "circle_period", self.circle_period, "> 0")
        _finite_nonneg("randomize_waypoints", self.randomize_waypoints)


@dataclass(frozen=True)
class SwarmSettings(HoverSettings):
    """N drones in one world, each with its own hover target; downwash on; drones that touch both crash."""

    num_drones: int = 3
    spacing: float = 0.6  # m between neighbouring targets (a line along x)
    world_frame_only: ClassVar[str | None] = "the swarm observes every drone in the world frame"
    collision_distance: float = 0.12  # m between centres
    downwash: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check(
            isinstance(self.num_drones, int) and 1 <= self.num_drones <= 64,
            "num_drones",
            self.num_drones,
            "an integer in [1, 64]",
        )
        _check(
            self.spacing > self.collision_distance,
            "spacing",
            self.spacing,
            f"> collision_distance={self.collision_distance}",
        )
        _check(self.collision_distance > 0, "collision_distance", self.collision_distance, "> 0")
        _check(self.replay_crash_starts == 0, "replay_crash_starts", self.replay_crash_starts, "0 (single-drone tasks)")
