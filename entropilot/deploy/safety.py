"""The onboard safety guards (finite checks, clipping, rate limit, geofence, deadline watchdog, telemetry age) as
small pure pieces, and the failsafe ladder: FLYING -> HOLD -> LAND -> LANDED -> DISARMED, never disarmed in the air.
Every state change is a ``Transition`` with its reason, kept in order and sent to ``logging``."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "DeadlineWatchdog",
    "FAULT_RESPONSE",
    "FailsafeLadder",
    "Fault",
    "FlightState",
    "Geofence",
    "RateLimiter",
    "Transition",
    "UnsafeDisarm",
    "all_finite",
    "clip_action",
    "telemetry_age",
]

log = logging.getLogger("entropilot.deploy.safety")
log.addHandler(logging.NullHandler())  # a library: the application decides where transitions are shown


# ---- guards ---------------------------------------------------------------------------------
def all_finite(values) -> bool:
    """True iff every entry is a finite number (no NaN, no infinity)."""
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())


def clip_action(action, low=-1.0, high=1.0) -> np.ndarray:
    """The action inside [low, high] (per entry; bounds may be scalars or length-4)."""
    return np.clip(np.asarray(action, dtype=np.float64), low, high)


class RateLimiter:
    """Limits how far each action entry may move per control step: ``max_rate`` (units of the normalized action
    per second) / ``control_hz``. ``None`` = no limit."""

    def __init__(self, max_rate: float | None, control_hz: float):
        if max_rate is not None and not (math.isfinite(max_rate) and max_rate > 0):
            raise ValueError(f"max_action_rate={max_rate!r} must be a finite number > 0 (per second) or None")
        self.max_rate = max_rate
        self.max_step = None if max_rate is None else float(max_rate) / float(control_hz)

    def __call__(self, previous, action) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if self.max_step is None:
            return action
        previous = np.asarray(previous, dtype=np.float64)
        return previous + np.clip(action - previous, -self.max_step, self.max_step)


@dataclass(frozen=True)
class Geofence:
    """An axis-aligned box (world frame, metres) and an altitude ceiling. ``violation`` says how a position breaks
    it, or None inside."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    ceiling: float | None = None

    def __post_init__(self):
        low, high = tuple(float(v) for v in self.low), tuple(float(v) for v in self.high)
        if len(low) != 3 or len(high) != 3 or not all(math.isfinite(v) for v in low + high):
            raise ValueError(f"geofence low/high must be 3 finite numbers each; got {self.low}, {self.high}")
        if not all(lo < hi for lo, hi in zip(low, high)):
            raise ValueError(f"geofence low {low} must be below high {high} on every axis")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.ceiling is not None:
            object.__setattr__(self, "ceiling", float(self.ceiling))

    @classmethod
    def around(cls, point, half_width: float = 2.0, below: float = 1.5, ceiling_above: float = 2.0) -> Geofence:
        """A box ``half_width`` either side of ``point`` horizontally, from ``below`` under it, capped
        ``ceiling_above`` over it."""
        x, y, z = (float(v) for v in point)
        top = z + ceiling_above
        return cls(
            (x - half_width, y - half_width, z - below), (x + half_width, y + half_width, top + 1.0), ceiling=top
        )

    def violation(self, position) -> str | None:
        x = [float(v) for v in position]
        if self.ceiling is not None and x[2] > self.ceiling:
            return f"altitude {x[2]:.2f} m above the ceiling {self.ceiling:.2f} m"
        for axis, value, lo, hi in zip("xyz", x, self.low, self.high):
            if not lo <= value <= hi:
                return f"{axis}={value:.2f} m outside the geofence [{lo:.2f}, {hi:.2f}]"
        return None


class DeadlineWatchdog:
    """Inference must finish within ``deadline_s``; ``max_misses`` consecutive misses trip it."""

    def __init__(self, deadline_s: float, max_misses: int = 1):
        if not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"deadline_s={deadline_s!r} must be a finite number > 0")
        if max_misses < 1:
            raise ValueError(f"max_misses={max_misses!r} must be >= 1")
        self.deadline_s = float(deadline_s)
        self.max_misses = int(max_misses)
        self.consecutive = 0
        self.total = 0

    def missed(self, duration_s: float) -> bool:
        """Record one inference's duration; True if it overran the deadline (its action must not be sent)."""
        if duration_s <= self.deadline_s:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        return True

    @property
    def tripped(self) -> bool:
        return self.consecutive >= self.max_misses


def telemetry_age(timestamp: float, now: float) -> float:
    """Seconds since the telemetry was valid (negative if the clocks disagree; then it is not stale)."""
    return now - timestamp


# ---- the failsafe ladder --------------------------------------------------------------------
class FlightState(str, Enum):
    DISARMED = "disarmed"
    FLYING = "flying"  # armed, the policy in control (or shadowing it, in a dry run)
    HOLD = "hold"  # the vehicle holds position on its own controller
    LAND = "land"  # the vehicle lands where it is
    LANDED = "landed"  # on the ground, armed: the only state a disarm may come from


class Fault(str, Enum):
    NONFINITE_TELEMETRY = "nonfinite_telemetry"
    NONFINITE_ACTION = "nonfinite_action"
    POLICY_ERROR = "policy_error"
    DEADLINE_MISS = "deadline_miss"
    STALE_TELEMETRY = "stale_telemetry"
    LINK_LOSS = "link_loss"
    GEOFENCE = "geofence"


# The first rung each fault sends the vehicle to; a ladder never steps back down on its own.
FAULT_RESPONSE: dict[Fault, FlightState] = {
    Fault.NONFINITE_TELEMETRY: FlightState.HOLD,
    Fault.NONFINITE_ACTION: FlightState.HOLD,
    Fault.POLICY_ERROR: FlightState.HOLD,
    Fault.DEADLINE_MISS: FlightState.HOLD,
    Fault.STALE_TELEMETRY: FlightState.HOLD,
    Fault.LINK_LOSS: FlightState.HOLD,
    Fault.GEOFENCE: FlightState.LAND,
}
_RUNG = {FlightState.FLYING: 0, FlightState.HOLD: 1, FlightState.LAND: 2, FlightState.LANDED: 3}


class UnsafeDisarm(RuntimeError):
    """A disarm was asked for while the vehicle is not known to be on the ground."""


@dataclass(frozen=True)
class Transition:
    time: float
    previous: FlightState
    state: FlightState
    reason: str
    fault: Fault | None = None

    def __str__(self) -> str:
        why = f"{self.fault.value}: {self.reason}" if self.fault else self.reason
        return f"t={self.time:.3f}s {self.previous.value} -> {self.state.value} ({why})"


class FailsafeLadder:
    """The flight's state machine. ``engage`` (DISARMED -> FLYING) after the preflight checks; ``fault`` climbs to
    the rung ``FAULT_RESPONSE`` names (only upwards); ``update`` escalates HOLD -> LAND after ``hold_s`` and
    LAND -> LANDED once the vehicle has reported itself landed for ``landed_confirm_s``; ``disarm`` only from
    LANDED and only while landed. ``transitions`` keeps every change with its reason; ``faults`` counts them all.
    """

    def __init__(
        self,
        hold_s: float = 2.0,
        landed_confirm_s: float = 0.5,
        on_transition: Callable[[Transition], None] | None = None,
    ):
        if not (hold_s >= 0 and landed_confirm_s >= 0):
            raise ValueError("hold_s and landed_confirm_s must be >= 0")
        self.hold_s = float(hold_s)
        self.landed_confirm_s = float(landed_confirm_s)
        self.on_transition = on_transition
        self.state = FlightState.DISARMED
        self.transitions: list[Transition] = []
        self.faults: Counter = Counter()
        self.first_fault: tuple[float, Fault, str] | None = None
        self._entered = 0.0
        self._landed_since: float | None = None

    @property
    def armed(self) -> bool:
        return self.state is not FlightState.DISARMED

    @property
    def in_failsafe(self) -> bool:
        return self.first_fault is not None

    def engage(self, t: float, reason: str = "preflight checks passed, policy in control") -> None:
        if self.state is not FlightState.DISARMED:
            raise RuntimeError(f"cannot engage from {self.state.value}")
        self._go(t, FlightState.FLYING, reason)

    def fault(self, t: float, fault: Fault, detail: str) -> FlightState:
        """Report a fault; returns the state after it. A fault while DISARMED or LANDED changes nothing."""
        self.faults[fault] += 1
        if self.first_fault is None and self.state in _RUNG:
            self.first_fault = (t, fault, detail)
        response = FAULT_RESPONSE[fault]
        if self.state in _RUNG and _RUNG[response] > _RUNG[self.state]:
            self._go(t, response, detail, fault)
        return self.state

    def complete(self, t: float, reason: str = "flight complete", then: FlightState = FlightState.LAND) -> None:
        """End of the policy's flight with no fault: FLYING -> LAND (or HOLD)."""
        if then not in (FlightState.LAND, FlightState.HOLD):
            raise ValueError("a flight completes into LAND or HOLD")
        if self.state is FlightState.FLYING:
            self._go(t, then, reason)

    def update(self, t: float, landed: bool | None) -> FlightState:
        """Time-driven rungs. ``landed`` is the vehicle's on-ground report (None: unknown, e.g. no telemetry)."""
        if self.state is FlightState.HOLD and t - self._entered >= self.hold_s - 1e-9:
            self._go(
                t,
                FlightState.LAND,
                f"held {t - self._entered:.2f} s (hold_s={self.hold_s:g}): landing",
                self._last_fault(),
            )
        if landed:
            if self._landed_since is None:
                self._landed_since = t
        else:
            self._landed_since = None
        if (
            self.state is FlightState.LAND
            and self._landed_since is not None
            and t - self._landed_since >= self.landed_confirm_s - 1e-9
        ):
            self._go(t, FlightState.LANDED, f"on the ground for {t - self._landed_since:.2f} s")
        elif self.state is FlightState.LANDED and landed is False:
            self._go(t, FlightState.LAND, "no longer reported on the ground")
        return self.state

    def disarm(self, t: float, landed: bool) -> None:
        if self.state is not FlightState.LANDED or not landed:
            raise UnsafeDisarm(
                f"refusing to disarm in state {self.state.value} (landed={landed}): never disarm in the air"
            )
        self._go(t, FlightState.DISARMED, "disarmed on the ground")

    def _last_fault(self) -> Fault | None:
        return self.first_fault[1] if self.first_fault else None

    def _go(self, t: float, state: FlightState, reason: str, fault: Fault | None = None) -> None:
        transition = Transition(float(t), self.state, state, reason, fault)
        self.transitions.append(transition)
        self.state = state
        self._entered = t
        (log.warning if fault is not None else log.info)("%s", transition)
        if self.on_transition is not None:
            self.on_transition(transition)
