"""Airframe constants: one frozen data object per vehicle, so a second airframe is a new instance."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

GRAVITY = 9.8  # m/s^2; the value the Crazyflie 2.x constants below were identified with


@dataclass(frozen=True)
class Airframe:
    """Physical constants of an X-layout quadrotor.

    Rotor speeds are in RPM, as in the Crazyflie system-identification literature (Forster 2015):
    thrust per rotor = ``kf * rpm**2`` [N], reaction torque = ``km * rpm**2`` [N m]. The most a rotor can push is
    a property of the motor and propeller (``kf`` at ``max_rpm``), not of the mass: a heavier vehicle with the same
    motors has less thrust to spare (``thrust_to_weight`` falls).
    """

    name: str
    mass: float  # kg
    arm: float  # m, centre to rotor axis
    kf: float  # N / RPM^2
    km: float  # N m / RPM^2
    ixx: float  # kg m^2
    iyy: float
    izz: float
    max_rpm: float  # the motors' top speed
    prop_radius: float  # m, for the ground-effect model
    motor_time_constant: float  # s, first-order rotor-speed lag
    # Forster 2015 rotor drag: body-frame force = -k * sum(rotor rad/s) * body velocity
    drag_xy: float
    drag_z: float
    ground_effect_coeff: float  # Shi et al. 2019 fit
    # Empirical downwash fit (gym-pybullet-drones, from Crazyflie swarm measurements)
    downwash_c1: float
    downwash_c2: float
    downwash_c3: float
    collision_half_extents: tuple[float, float, float]  # box used for contacts, m

    def __post_init__(self) -> None:
        positive = ("mass", "arm", "kf", "km", "ixx", "iyy", "izz", "max_rpm", "prop_radius", "motor_time_constant")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Airframe '{self.name}': {name} must be a finite number > 0, got {value!r}")
        if not self.thrust_to_weight > 1.0:
            raise ValueError(
                f"Airframe '{self.name}': its motors cannot lift it (thrust-to-weight {self.thrust_to_weight:.3g} "
                f"at max_rpm {self.max_rpm:g} and mass {self.mass:g} kg; must be > 1 to hover)"
            )

    @property
    def weight(self) -> float:
        return self.mass * GRAVITY

    @property
    def max_thrust_per_motor(self) -> float:
        return self.kf * self.max_rpm**2

    @property
    def thrust_to_weight(self) -> float:
        return 4.0 * self.max_thrust_per_motor / self.weight

    @property
    def hover_rpm(self) -> float:
        return math.sqrt(self.weight / (4.0 * self.kf))

    @property
    def inertia(self) -> tuple[float, float, float]:
        return (self.ixx, self.iyy, self.izz)

    def replace(self, **changes: float) -> Airframe:
        """A copy with some constants changed (domain randomization uses this)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise ValueError(f"Airframe has no field(s) {sorted(unknown)}; fields are {sorted(values)}")
        values.update(changes)
        return Airframe(**values)


CRAZYFLIE_2X = Airframe(
    name="cf2x",
    mass=0.027,
    arm=0.0397,
    kf=3.16e-10,
    km=7.94e-12,
    ixx=1.4e-5,
    iyy=1.4e-5,
    izz=2.17e-5,
    max_rpm=21702.643775251046,  # 1.5 x hover RPM: thrust-to-weight 2.25 at 27 g
    prop_radius=2.31348e-2,
    motor_time_constant=0.05,
    drag_xy=9.1785e-7,
    drag_z=10.311e-7,
    ground_effect_coeff=11.36859,
    downwash_c1=2267.18,
    downwash_c2=0.16,
    downwash_c3=-0.11,
    collision_half_extents=(0.06, 0.06, 0.015),
)

AIRFRAMES: dict[str, Airframe] = {CRAZYFLIE_2X.name: CRAZYFLIE_2X}


def get_airframe(name: str | Airframe) -> Airframe:
    if isinstance(name, Airframe):
        return name
    try:
        return AIRFRAMES[name]
    except KeyError:
        raise ValueError(f"unknown airframe {name!r}; known: {sorted(AIRFRAMES)}") from None
