"""The one small interface every vehicle link implements (sim, MAVLink, Crazyflie), the telemetry it returns,
the clocks a flight runs on, and the observation a policy sees, built from telemetry in the exported layout.

Imports neither torch, ray nor pybullet: a MAVLink or Crazyflie link builds on this file alone.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np

from entropilot.errors import EntropilotError

# The layout and airframes are the vehicle contract (standard library only), which the simulator fills from its
# state and the builder below from telemetry.
from entropilot.vehicle.airframe import get_airframe
from entropilot.vehicle.layout import OBSERVATION_COLUMNS, OBSERVATION_NAMES, OBSERVATION_SIZE

__all__ = [
    "Clock",
    "CtbrVehicleLink",
    "LinkError",
    "OBSERVATION_NAMES",
    "SimClock",
    "Telemetry",
    "VehicleLink",
    "WallClock",
    "observation_from_telemetry",
    "telemetry_is_finite",
]

_POS_ERR, _ROTATION, _VELOCITY, _BODY_RATES, _PREV_ACTION = (
    OBSERVATION_COLUMNS[g] for g in ("pos_err", "rotation", "velocity", "body_rates", "prev_action")
)


class LinkError(EntropilotError, RuntimeError):
    """The link cannot do what was asked: not connected, lost, or the vehicle refused the command."""


# ---- time -----------------------------------------------------------------------------------
class Clock(Protocol):
    """The time base of a flight (seconds, monotonic): telemetry timestamps, deadlines and the loop's ticks."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def sleep_until(self, t: float) -> None: ...


class WallClock:
    """Real time (``time.monotonic``): what a flight on a real vehicle runs on."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def sleep_until(self, t: float) -> None:
        self.sleep(t - time.monotonic())


class SimClock:
    """Simulated time: it moves only when someone sleeps, so a simulated flight runs as fast as the CPU allows and
    is deterministic. A test makes a policy "slow" by having it call ``sleep``."""

    def __init__(self, start: float = 0.0):
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._t += float(seconds)

    def sleep_until(self, t: float) -> None:
        self._t = max(self._t, float(t))


# ---- telemetry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Telemetry:
    """One vehicle state estimate, in the export's frame convention (world z up, body x forward / y left / z up).

    ``timestamp`` is on the link's clock (when the estimate was valid); ``rotation`` is body-to-world (3, 3);
    ``velocity`` is world-frame; ``body_rates`` body-frame rad/s. ``landed`` is the vehicle's own on-ground
    detection (the only thing that allows a disarm).
    """

    timestamp: float
    position: np.ndarray
    velocity: np.ndarray
    rotation: np.ndarray
    body_rates: np.ndarray
    armed: bool
    mode: str
    landed: bool = False

    def __post_init__(self):
        for name, shape in (("position", (3,)), ("velocity", (3,)), ("rotation", (3, 3)), ("body_rates", (3,))):
            value = np.array(getattr(self, name), dtype=np.float64)  # a copy: telemetry never aliases live state
            if value.shape != shape:
                raise ValueError(f"Telemetry.{name} must have shape {shape}, got {value.shape}")
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        object.__setattr__(self, "timestamp", float(self.timestamp))


def telemetry_is_finite(telemetry: Telemetry) -> bool:
    """Every number in the state estimate (timestamp included) is finite."""
    if not math.isfinite(telemetry.timestamp):
        return False
    return all(
        bool(np.isfinite(v).all())
        for v in (telemetry.position, telemetry.velocity, telemetry.rotation, telemetry.body_rates)
    )


def observation_from_telemetry(telemetry: Telemetry, target, previous_action) -> np.ndarray:
    """float32 [OBSERVATION_SIZE] in ``OBSERVATION_NAMES`` order: position - target, rotation row-major, world
    velocity, body rates, previous action. Equal, number for number, to what the envs observe (without noise)."""
    obs = np.empty(OBSERVATION_SIZE, dtype=np.float64)
    obs[_POS_ERR] = telemetry.position - np.asarray(target, dtype=np.float64)
    obs[_ROTATION] = telemetry.rotation.reshape(9)
    obs[_VELOCITY] = telemetry.velocity
    obs[_BODY_RATES] = telemetry.body_rates
    obs[_PREV_ACTION] = previous_action
    return obs.astype(np.float32)


# ---- the link -------------------------------------------------------------------------------
class VehicleLink(ABC):
    """What the autopilot needs of a vehicle. Commands are idempotent per call and called once per control tick.

    Attributes every link sets: ``action_mode`` ("ctbr" | "motors": what ``send_action`` means), ``control_hz``
    (the rate the vehicle takes actions at), ``hover_action`` (the normalized action that balances the weight:
    the "previous action" before the first one), ``clock`` (the time base of its telemetry timestamps).
    """

    action_mode: str
    control_hz: int
    hover_action: np.ndarray
    clock: Clock

    @abstractmethod
    def connect(self) -> None:
        """Open the link (and, for a simulator, start the world). Raises LinkError if the vehicle is unreachable."""

    @abstractmethod
    def read_telemetry(self) -> Telemetry | None:
        """The latest state estimate, or None when none has arrived (link lost). May return the same one twice."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> None:
        """One normalized action in [-1, 1]^4 (``action_mode``) for the next control period."""

    @abstractmethod
    def hold(self) -> None:
        """The vehicle holds its position on its own controller (hover in place)."""

    @abstractmethod
    def land(self) -> None:
        """The vehicle descends and lands where it is, on its own controller."""

    @abstractmethod
    def arm(self) -> None:
        """Arm the motors (or confirm they are armed)."""

    @abstractmethod
    def disarm(self) -> None:
        """Stop the motors. A link must refuse (LinkError) unless the vehicle reports itself landed."""

    def observe(self) -> None:  # noqa: B027 - a real vehicle needs nothing here; only a simulator overrides it
        """A dry-run tick: the autopilot commands nothing and the vehicle flies on whatever controls it (a pilot,
        its own position hold). A real vehicle moves on its own, so there is nothing to do; a simulator, whose
        world moves only when told, overrides this to let its own hold controller fly the tick."""

    @abstractmethod
    def close(self) -> None:
        """Release the link; the vehicle keeps whatever mode it was last told."""

    def expected_contract(self) -> dict[str, Any]:
        """What this vehicle requires of a policy file (keys of ``onnx_policy.EXPECTABLE``)."""
        return {
            "observation_names": list(OBSERVATION_NAMES),
            "action_mode": self.action_mode,
            "control_hz": self.control_hz,
        }

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ctbr_hover_action(airframe: str = "cf2x") -> list[float]:
    """The normalized ctbr action that balances the airframe's weight with no rotation."""
    return [2.0 / get_airframe(airframe).thrust_to_weight - 1.0, 0.0, 0.0, 0.0]


class CtbrVehicleLink(VehicleLink):
    """A real vehicle flown by collective thrust + body rates (MAVLink, Crazyflie) at ``address`` (in its link
    library's syntax): the settings an exported ctbr policy fixes (control rate, body-rate scale, the airframe's
    hover action) and the wall clock by default."""

    action_mode = "ctbr"
    link_name = "ctbr"  # as error messages name the link

    def __init__(self, address: str, *, control_hz: int, max_body_rate: float, hover_action, clock: Clock | None):
        self.address = address
        self.control_hz = int(control_hz)
        self.max_body_rate = float(max_body_rate)
        if hover_action is None:  # the Crazyflie's: thrust balancing the weight, no rotation
            hover_action = ctbr_hover_action()
        self.hover_action = np.asarray(hover_action, dtype=np.float32)
        self.clock: Clock = clock if clock is not None else WallClock()

    @classmethod
    def from_policy_metadata(cls, metadata: dict[str, Any], address: str, **kwargs) -> Self:
        """The link at ``address`` that an exported policy needs: its control rate, body-rate scale and airframe's
        hover thrust. Raises LinkError for a policy of another action mode."""
        if metadata["action_mode"] != "ctbr":
            raise LinkError(
                f"the {cls.link_name} link flies ctbr policies (thrust + body rates), not {metadata['action_mode']!r}"
            )
        env_kwargs = metadata.get("env_kwargs") or {}
        return cls(
            address,
            control_hz=metadata["control_hz"],
            max_body_rate=env_kwargs.get("max_body_rate", 6.0),
            hover_action=ctbr_hover_action(env_kwargs.get("airframe", "cf2x")),
            **kwargs,
        )
