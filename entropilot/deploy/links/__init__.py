"""Vehicle links behind one small interface (``base.VehicleLink``): ``sim`` (the PyBullet envs); MAVLink and
Crazyflie links implement the same class.

Importing this package imports only ``base`` (no simulator); import ``entropilot.deploy.links.sim`` for SimLink.
"""

from entropilot.deploy.links.base import (
    Clock,
    LinkError,
    SimClock,
    Telemetry,
    VehicleLink,
    WallClock,
    observation_from_telemetry,
    telemetry_is_finite,
)

__all__ = [
    "Clock",
    "LinkError",
    "SimClock",
    "Telemetry",
    "VehicleLink",
    "WallClock",
    "observation_from_telemetry",
    "telemetry_is_finite",
]
