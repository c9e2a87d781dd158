"""The onboard loop: telemetry -> observation -> policy -> guarded action -> vehicle, at the policy's control rate,
with the safety guards and failsafe ladder of ``safety`` around every step. Imports neither torch, ray nor pybullet.
Over 450 lines: the state machine and its failsafe ladder read best as one piece.

    with SimLink(env) as link:
        log = Autopilot(OnnxPolicy("policy.onnx"), link, target=link.target).run(duration_s=10)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entropilot.deploy.command import flight_policy
from entropilot.deploy.contract import PolicyContractError
from entropilot.deploy.links.base import (
    OBSERVATION_NAMES,
    Clock,
    LinkError,
    Telemetry,
    VehicleLink,
    WallClock,
    observation_from_telemetry,
    telemetry_is_finite,
)
from entropilot.deploy.onnx_policy import NonFiniteError
from entropilot.deploy.safety import (
    DeadlineWatchdog,
    FailsafeLadder,
    Fault,
    FlightState,
    Geofence,
    RateLimiter,
    Transition,
    all_finite,
    clip_action,
    telemetry_age,
)
from entropilot.errors import EntropilotError

__all__ = ["ArmingRefused", "Autopilot", "CallablePolicy", "Event", "FlightLog", "FlightStep", "contract_problems"]

log = logging.getLogger("entropilot.deploy.autopilot")
log.addHandler(logging.NullHandler())  # a library: the application decides where warnings go (FlightLog keeps them all)

DEFAULT_MAX_ACTION_RATE = 40.0  # normalized action units per second: 0.83 of the [-1, 1] range per step at 48 Hz


class ArmingRefused(EntropilotError, RuntimeError):
    """The preflight checks failed: the policy does not fit the vehicle, or the vehicle is not ready."""


@dataclass
class CallablePolicy:
    """Any ``obs -> action`` callable (the cascaded PID, a test lambda) with the contract an exported file carries."""

    fn: Callable[[np.ndarray], Any]
    action_mode: str
    control_hz: int
    observation_names: Sequence[str] = OBSERVATION_NAMES

    def __call__(self, observation: np.ndarray):
        return self.fn(observation)

    def reset(self) -> None:
        reset = getattr(self.fn, "reset", None)
        if callable(reset):
            reset()


def contract_problems(policy, link: VehicleLink) -> list[str]:
    """Why ``policy`` must not fly ``link``'s vehicle (empty if it may): action mode, control rate, observation layout,
    and for an exported file everything else the vehicle expects of it (``OnnxPolicy.check``)."""
    problems = []
    for key, want in (("action_mode", link.action_mode), ("control_hz", link.control_hz)):
        got = getattr(policy, key, None)
        if got is None:
            problems.append(f"the policy does not declare its {key} (wrap a callable in CallablePolicy)")
        elif got != want:
            problems.append(f"{key} is {got!r} in the policy but the vehicle takes {want!r}")
    names = getattr(policy, "observation_names", None)
    if names is None:
        problems.append("the policy does not declare its observation_names")
    elif list(names) != list(OBSERVATION_NAMES):
        problems.append(
            f"the policy's observation layout {list(names)} is not the one built from telemetry "
            f"{list(OBSERVATION_NAMES)}"
        )
    check = getattr(policy, "check", None)
    if callable(check) and not problems:
        try:
            check(link.expected_contract())
        except PolicyContractError as err:
            problems.append(str(err))
    return problems


# ---- the record ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlightStep:
    """One control tick: what the vehicle reported, what the policy said, what was sent."""

    time: float
    state: FlightState  # after this tick's checks
    position: np.ndarray | None  # telemetry position (None: no telemetry)
    policy_action: np.ndarray | None  # the policy's raw output (None: not asked this tick)
    command: str  # "action" | "hold" | "land" | "none"
    action: np.ndarray | None  # the guarded action (sent when command == "action"; shadowed in a dry run)
    inference_s: float | None  # on the flight's clock
    compute_s: float | None  # wall-clock compute of the policy call (perf_counter), for reports


@dataclass(frozen=True)
class Event:
    """A guard firing (a fault becoming active), a fault clearing, or a note (arming refused, a command failing)."""

    time: float
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.time:.3f}s {self.kind}: {self.detail}"


@dataclass
class FlightLog:
    target: np.ndarray
    control_hz: int
    dry_run: bool
    steps: list[FlightStep] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)

    @property
    def final_state(self) -> FlightState:
        return self.transitions[-1].state if self.transitions else FlightState.DISARMED

    @property
    def failsafes(self) -> list[Transition]:
        """Transitions a fault caused."""
        return [t for t in self.transitions if t.fault is not None]

    @property
    def states(self) -> list[FlightState]:
        return [s.state for s in self.steps]

    @property
    def times(self) -> np.ndarray:
        return np.array([s.time for s in self.steps])

    @property
    def positions(self) -> np.ndarray:
        """(T, 3) telemetry positions; NaN rows where none arrived."""
        return np.array([s.position if s.position is not None else np.full(3, np.nan) for s in self.steps]).reshape(
            -1, 3
        )

    @property
    def actions(self) -> np.ndarray:
        """(T, 4) guarded actions (sent, or shadowed in a dry run); NaN rows where the policy was not in control."""
        return np.array([s.action if s.action is not None else np.full(4, np.nan) for s in self.steps]).reshape(-1, 4)

    @property
    def commands(self) -> Counter:
        return Counter(s.command for s in self.steps)

    @property
    def max_inference_s(self) -> float:
        values = [s.compute_s for s in self.steps if s.compute_s is not None]
        return max(values) if values else float("nan")

    @property
    def handover_distance(self) -> float:
        """Distance to the target at the last tick the policy was in control (NaN if it never was)."""
        last = next(
            (s.position for s in reversed(self.steps) if s.state is FlightState.FLYING and s.position is not None), None
        )
        return float(np.linalg.norm(last - self.target)) if last is not None and all_finite(last) else float("nan")

    def summary(self) -> str:
        failsafe = "; ".join(str(t) for t in self.failsafes) or "none"
        c = self.commands
        return (
            f"{len(self.steps)} ticks at {self.control_hz} Hz{' (dry run)' if self.dry_run else ''}, "
            f"final state {self.final_state.value}, {self.handover_distance:.3f} m from target at hand-over, "
            f"commands: {c['action']} action / {c['hold']} hold / {c['land']} land, "
            f"max inference {self.max_inference_s * 1e3:.2f} ms, failsafes: {failsafe}"
        )


# ---- the loop --------------------------------------------------------------------------------
class Autopilot:
    """Flies ``policy`` (``obs[22] -> action[4]``: an ``OnnxPolicy`` or a ``CallablePolicy``) on ``link`` toward
    ``target`` (world x, y, z) at the vehicle's control rate. A command policy (an ``OnnxPolicy`` of a categorical
    policy, whose output is command indices) flies through its inner loop (``command.CommandPolicy``): the guards
    below act on the action that loop sends the vehicle, and an index outside its table is a policy error.

    Every tick: read telemetry (none -> link loss; non-finite; older than ``max_telemetry_age_s`` -> stale;
    outside ``geofence`` -> geofence), build the observation, call the policy (an exception or non-finite output
    -> fault; slower than ``deadline_s`` on the flight clock -> deadline miss, the late action is not sent),
    clip to [-1, 1] and rate-limit to ``max_action_rate`` per second, send. Faults climb the ``FailsafeLadder``
    (HOLD then LAND after ``hold_s``; a geofence breach lands at once); the policy never gets control back;
    the vehicle is disarmed only after reporting itself landed for ``landed_confirm_s``.

    ``dry_run`` (shadow mode): the vehicle is never commanded — not armed, no mode change, no setpoint, no land —
    while it flies on whatever controls it (a pilot, its own position hold; `VehicleLink.observe`). The
    preflight checks, the policy and every guard run on its telemetry, and the log records the actions the
    policy would have sent and the failsafe steps the autopilot would have taken. It ends after the flight
    time, leaving the vehicle as it was. ``clock`` defaults to the link's (simulated time for SimLink:
    as fast as the CPU goes, deterministic) or the wall clock. In simulated time the policy's own compute takes
    no time, so the deadline judges only what the clock is told (a test's slow policy); ``FlightLog`` keeps the
    real compute times too.
    """

    def __init__(
        self,
        policy,
        link: VehicleLink,
        target,
        *,
        dry_run: bool = False,
        deadline_s: float | None = None,
        max_deadline_misses: int = 1,
        max_telemetry_age_s: float | None = None,
        geofence: Geofence | None = None,
        max_action_rate: float | None = DEFAULT_MAX_ACTION_RATE,
        hold_s: float = 2.0,
        landed_confirm_s: float = 0.5,
        max_landing_s: float = 20.0,
        clock: Clock | None = None,
    ):
        self.policy = flight_policy(policy)
        self.link = link
        self.target = np.array(target, dtype=np.float64).reshape(3)
        if not all_finite(self.target):
            raise ValueError(f"target must be 3 finite numbers; got {target!r}")
        self.dry_run = bool(dry_run)
        self.control_hz = int(link.control_hz)
        self.period = 1.0 / self.control_hz
        self.clock: Clock = clock or getattr(link, "clock", None) or WallClock()
        self.watchdog = DeadlineWatchdog(0.5 * self.period if deadline_s is None else deadline_s, max_deadline_misses)
        self.max_telemetry_age_s = float(
            max(0.1, 2.5 * self.period) if max_telemetry_age_s is None else max_telemetry_age_s
        )
        self.geofence = geofence if geofence is not None else Geofence.around(self.target)
        self.rate_limiter = RateLimiter(max_action_rate, self.control_hz)
        self.max_landing_s = float(max_landing_s)
        self.ladder = FailsafeLadder(hold_s, landed_confirm_s)
        self.log = FlightLog(
            self.target.copy(),
            self.control_hz,
            self.dry_run,
            transitions=self.ladder.transitions,
            faults=self.ladder.faults,
        )
        self.previous_action = np.array(link.hover_action, dtype=np.float64)
        self._active: set[Fault] = set()

    @property
    def state(self) -> FlightState:
        return self.ladder.state

    # ---- arming --------------------------------------------------------------------------
    def arm(self) -> None:
        """Preflight: the policy's contract fits the vehicle, telemetry is there, finite, fresh and inside the
        geofence; then arm the vehicle and hand the policy control. ArmingRefused (logged) otherwise."""
        t = self.clock.now()
        if self.ladder.state is not FlightState.DISARMED:
            raise ArmingRefused(f"already armed ({self.ladder.state.value})")
        if self.ladder.transitions:
            raise ArmingRefused("this Autopilot has flown already; make a new one for the next flight")
        problems = contract_problems(self.policy, self.link)
        if not problems:
            telemetry = self._read()
            if telemetry is None:
                problems.append("no telemetry from the vehicle (is the link connected?)")
            elif not telemetry_is_finite(telemetry):
                problems.append("telemetry holds non-finite numbers")
            elif (age := telemetry_age(telemetry.timestamp, t)) > self.max_telemetry_age_s:
                problems.append(f"telemetry is {age:.3f} s old (max {self.max_telemetry_age_s:.3f} s)")
            elif (where := self.geofence.violation(telemetry.position)) is not None:
                problems.append(f"the vehicle is outside the geofence: {where}")
        if not problems and not self.dry_run:
            try:
                self.link.arm()
            except LinkError as err:
                problems.append(f"the vehicle refused to arm: {err}")
        if problems:
            reason = "; ".join(problems)
            self._event(t, "arm_refused", reason)
            raise ArmingRefused(f"refusing to arm: {reason}")
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset()
        self.previous_action = np.array(self.link.hover_action, dtype=np.float64)
        self.ladder.engage(
            t,
            "preflight checks passed; "
            + ("dry run: policy shadowed, the vehicle is not commanded" if self.dry_run else "policy in control"),
        )

    # ---- flying --------------------------------------------------------------------------
    def run(self, duration_s: float | None = None, *, steps: int | None = None, end: str = "land") -> FlightLog:
        """Arm (if not armed) and fly for ``duration_s`` (or ``steps`` ticks) of policy control, then ``end``:
        "land" (land and disarm on the ground) or "hold" (leave the vehicle holding). After a failsafe the loop
        goes on until the ladder has disarmed on the ground, or ``hold_s + max_landing_s`` more have passed."""
        if steps is not None and duration_s is None:
            flight_ticks = int(steps)
        elif duration_s is not None and steps is None:
            flight_ticks = int(round(float(duration_s) * self.control_hz))
        else:
            raise ValueError("give duration_s or steps")
        if end not in ("land", "hold"):
            raise ValueError(f"end={end!r}: 'land' or 'hold'")
        if self.ladder.state is FlightState.DISARMED:
            self.arm()
        elif len(self.ladder.transitions) > 1 or self.log.steps:
            raise RuntimeError("this Autopilot has flown already; make a new one for the next flight")
        try:
            return self._fly(flight_ticks, end)
        except BaseException as err:  # Ctrl-C, a bug: never leave the vehicle flying on the policy's last setpoint
            self._abort(f"run aborted by {type(err).__name__}: {err}".rstrip(": "))
            raise

    def _fly(self, flight_ticks: int, end: str) -> FlightLog:
        extra = math.ceil((self.ladder.hold_s + self.ladder.landed_confirm_s + self.max_landing_s) * self.control_hz)
        then = FlightState.LAND if end == "land" else FlightState.HOLD
        t0 = self.clock.now()
        k = 0
        while k < flight_ticks + extra:
            self._tick(complete=k >= flight_ticks, then=then)
            state = self.ladder.state
            if state is FlightState.DISARMED or (self.dry_run and k + 1 >= flight_ticks):
                break
            if end == "hold" and k >= flight_ticks and state is FlightState.HOLD and not self.ladder.in_failsafe:
                break  # handed over: the vehicle holds on its own controller
            k += 1
            due = t0 + k * self.period
            now = self.clock.now()
            if now > due + 1e-9:  # the tick overran: skip to the next one due
                skipped = math.ceil((now - t0) / self.period - 1e-9) - k
                self._event(now, "overrun", f"tick {k - 1} overran by {now - due:.4f} s; {skipped} tick(s) skipped")
                k += skipped
                due = t0 + k * self.period
            self.clock.sleep_until(due)
        if self.dry_run:
            self._event(
                self.clock.now(),
                "shadow_ended",
                f"dry run over in {self.ladder.state.value}; the vehicle was never commanded",
            )
        elif self.ladder.armed and not (end == "hold" and self.ladder.state is FlightState.HOLD):
            self._event(
                self.clock.now(),
                "run_ended",
                f"still armed in {self.ladder.state.value}: the vehicle keeps its {self.ladder.state.value} mode",
            )
        return self.log

    def _abort(self, reason: str) -> None:
        t = self.clock.now()
        self._event(t, "aborted", reason)
        if self.ladder.state is FlightState.FLYING:
            self.ladder.complete(t, reason + ": holding", FlightState.HOLD)
            if self.dry_run:
                return
            try:
                self.link.hold()
            except Exception as err:  # noqa: BLE001 - the original error matters more; record this one
                self._event(t, "link_loss", f"hold after abort failed: {err}")

    def _tick(self, complete: bool, then: FlightState) -> None:
        t = self.clock.now()
        raised: dict[Fault, str] = {}
        telemetry = self._read()
        usable: Telemetry | None = None  # the telemetry, if no fault was raised on it
        if telemetry is None:
            raised[Fault.LINK_LOSS] = "no telemetry"
        elif not telemetry_is_finite(telemetry):
            raised[Fault.NONFINITE_TELEMETRY] = f"non-finite telemetry (position {telemetry.position.tolist()})"
        elif (age := telemetry_age(telemetry.timestamp, t)) > self.max_telemetry_age_s:
            raised[Fault.STALE_TELEMETRY] = f"telemetry {age:.3f} s old (max {self.max_telemetry_age_s:.3f} s)"
        else:
            usable = telemetry
            where = self.geofence.violation(telemetry.position)
            if where is not None:
                raised[Fault.GEOFENCE] = where
        for fault, detail in raised.items():
            self.ladder.fault(t, fault, detail)
        if complete and self.ladder.state is FlightState.FLYING:
            self.ladder.complete(
                t, "flight time complete" + (": landing" if then is FlightState.LAND else ": holding"), then
            )
        landed = usable.landed if usable is not None else None
        self.ladder.update(t, landed)

        policy_action = action = inference_s = compute_s = None
        command = "none"
        if self.ladder.state is FlightState.FLYING:
            assert usable is not None, "every telemetry fault ends FLYING (FAULT_RESPONSE)"
            policy_action, action, inference_s, compute_s = self._infer(t, usable, raised)
        state = self.ladder.state
        try:
            if self.dry_run:
                if state is FlightState.FLYING and action is not None:
                    self.previous_action = action
                self.link.observe()
            elif state is FlightState.FLYING:
                if action is None:  # a tolerated deadline miss: the vehicle keeps the last setpoint
                    action = self.previous_action
                self.link.send_action(action)
                command = "action"
                self.previous_action = action
            elif state is FlightState.HOLD:
                self.link.hold()
                command = "hold"
            elif state is FlightState.LAND:
                self.link.land()
                command = "land"
            elif state is FlightState.LANDED:
                if landed:
                    self.link.disarm()  # a link refuses too unless its vehicle reports itself on the ground
                    self.ladder.disarm(t, landed)
                else:  # on-ground report not fresh this tick: keep the land mode (motors idle) until it is
                    self.link.land()
                    command = "land"
        except LinkError as err:
            raised[Fault.LINK_LOSS] = f"{command if command != 'none' else state.value} failed: {err}"
            self.ladder.fault(t, Fault.LINK_LOSS, raised[Fault.LINK_LOSS])
        self._edges(t, raised)
        position = telemetry.position if telemetry is not None else None
        self.log.steps.append(
            FlightStep(t, self.ladder.state, position, policy_action, command, action, inference_s, compute_s)
        )

    def _infer(self, t: float, telemetry: Telemetry, raised: dict[Fault, str]):
        """The policy's action for this tick, guarded; (raw, guarded or None, inference_s, compute_s)."""
        observation = observation_from_telemetry(telemetry, self.target, self.previous_action)
        start, wall = self.clock.now(), time.perf_counter()
        try:
            raw = self.policy(observation)
        except NonFiniteError as err:
            raised[Fault.NONFINITE_ACTION] = str(err)
            self.ladder.fault(t, Fault.NONFINITE_ACTION, str(err))
            return None, None, None, None
        except Exception as err:  # noqa: BLE001 - whatever the policy raises, the vehicle must not see it
            raised[Fault.POLICY_ERROR] = f"the policy raised {type(err).__name__}: {err}"
            self.ladder.fault(t, Fault.POLICY_ERROR, raised[Fault.POLICY_ERROR])
            return None, None, None, None
        compute_s = time.perf_counter() - wall
        inference_s = self.clock.now() - start
        raw = np.array(raw, dtype=np.float64)
        if raw.shape != (4,):
            raised[Fault.POLICY_ERROR] = f"the policy returned shape {raw.shape}, not (4,)"
            self.ladder.fault(t, Fault.POLICY_ERROR, raised[Fault.POLICY_ERROR])
            return raw, None, inference_s, compute_s
        if not all_finite(raw):
            raised[Fault.NONFINITE_ACTION] = f"the policy returned a non-finite action {raw.tolist()}"
            self.ladder.fault(t, Fault.NONFINITE_ACTION, raised[Fault.NONFINITE_ACTION])
            return raw, None, inference_s, compute_s
        if self.watchdog.missed(inference_s):
            detail = (
                f"inference took {inference_s * 1e3:.1f} ms, deadline {self.watchdog.deadline_s * 1e3:.1f} ms "
                f"({self.watchdog.consecutive}/{self.watchdog.max_misses} consecutive)"
            )
            raised[Fault.DEADLINE_MISS] = detail
            if self.watchdog.tripped:
                self.ladder.fault(t, Fault.DEADLINE_MISS, detail)
            return raw, None, inference_s, compute_s  # late: not sent
        guarded = clip_action(self.rate_limiter(self.previous_action, clip_action(raw)))
        return raw, guarded, inference_s, compute_s

    # ---- helpers -------------------------------------------------------------------------
    def _read(self) -> Telemetry | None:
        try:
            return self.link.read_telemetry()
        except LinkError:
            return None

    def _edges(self, t: float, raised: dict[Fault, str]) -> None:
        """Log a fault when it becomes active and when it clears (not once per tick while it lasts)."""
        for fault in raised.keys() - self._active:
            self._event(t, fault.value, raised[fault])
        for fault in self._active - raised.keys():
            self._event(t, fault.value + "_cleared", f"{fault.value} no longer detected")
        self._active = set(raised)

    def _event(self, t: float, kind: str, detail: str) -> None:
        event = Event(float(t), kind, detail)
        self.log.events.append(event)
        quiet = kind == "run_ended" or kind.endswith("_cleared")
        (log.info if quiet else log.warning)("%s", event)
