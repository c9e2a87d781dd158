"""Vehicle links behind one small interface (``base.VehicleLink``): ``sim`` (the PyBullet envs) and ``mavlink``
(PX4 offboard over pymavlink); a Crazyflie link will implement the same class.

Importing this package imports only ``base``: import ``links.sim`` for SimLink, ``links.mavlink`` for MavlinkLink.
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
