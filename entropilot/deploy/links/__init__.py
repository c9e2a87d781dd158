"""Vehicle links behind one small interface (``base.VehicleLink``): ``sim`` (the PyBullet envs), ``mavlink``
(PX4 offboard over pymavlink) and ``crazyflie`` (rate-mode setpoints over cflib).

Importing this package imports only ``base``: import ``links.sim`` for SimLink, ``links.mavlink`` for MavlinkLink,
``links.crazyflie`` for CrazyflieLink.
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
