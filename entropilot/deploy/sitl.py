"""`entropilot sitl`: the PyBullet drone (the envs' physics, ctbr) behind a PX4-like MAVLink endpoint on UDP, so a
``MavlinkLink`` flight is tested end to end on a real MAVLink peer without PX4.

Real time: one wall-clock loop at ``rate_hz`` (the vehicle's own control rate, default 60 Hz, independent of the
policy's rate, as on a real autopilot) drains the incoming messages, runs the mode state machine, steps the physics
one period with the latest setpoint (OFFBOARD) or with its own cascaded PID (HOLD, LAND), and publishes HEARTBEAT,
LOCAL_POSITION_NED, ATTITUDE_QUATERNION, ATTITUDE and EXTENDED_SYS_STATE every period (frames as in
``links/mavlink.py``: NED world, FRD body). A tick that overruns is not made up (the simulated time slips).

The state machine, PX4's where it matters: the vehicle starts disarmed in HOLD, frozen at the env's start state
(as if handed over in the air: physics runs only while armed). OFFBOARD is accepted only onto an unbroken setpoint
stream of at least ``offboard_warmup_s`` (else MAV_RESULT_TEMPORARILY_REJECTED). In OFFBOARD a setpoint gap of more
than ``setpoint_timeout_s`` is a failsafe: HOLD for ``failsafe_hold_s``, then LAND. LAND descends, and on the
ground (landed for ``auto_disarm_s``) disarms. A disarm command is refused (MAV_RESULT_DENIED) unless on the ground.
Telemetry and acks go to every peer that has sent us a packet (pymavlink's ``udpin`` server).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from entropilot.deploy.links.mavlink import PX4_MODES, action_from_attitude_target, px4_custom_mode
from entropilot.inputs import InputError, free_udp_port, resolvable_host
from entropilot.vehicle.frames import (
    FLIP,
    euler_from_rotation,
    ned_from_world,
    quaternion_from_rotation,
    rotation_ned_from_world,
)

if TYPE_CHECKING:
    from pymavlink import mavutil

    from entropilot.deploy.links.base import Telemetry

__all__ = ["MavlinkSitl", "SitlEvent", "check_sitl"]

_MODE_BY_NUMBER = {v: k for k, v in PX4_MODES.items()}
PHYSICS_HZ = 240


def check_sitl(
    port: int, host: str = "127.0.0.1", *, env_id: str, env_kwargs: dict | None = None, rate_hz: int = 60
) -> None:
    """What a `MavlinkSitl` would be given, checked before a simulator starts: a single-drone env, a rate that divides
    the physics rate, a start state the env accepts, a host that resolves and a UDP port nothing else holds."""
    from entropilot.envs import SINGLE_AGENT_IDS, validate_env_kwargs

    if env_id not in SINGLE_AGENT_IDS:
        raise InputError("--env", env_id, f"not a single-drone env; choose one of {', '.join(SINGLE_AGENT_IDS)}")
    if rate_hz < 1 or PHYSICS_HZ % rate_hz:
        divisors = [hz for hz in range(1, PHYSICS_HZ + 1) if PHYSICS_HZ % hz == 0 and hz >= 10]
        raise InputError("--rate", rate_hz, f"must divide the {PHYSICS_HZ} Hz physics rate: one of {divisors}")
    try:
        validate_env_kwargs(env_id, _env_kwargs(env_kwargs, rate_hz))
    except ValueError as err:
        start = (env_kwargs or {}).get("start_low")
        if start:
            raise InputError("--start", start, str(err)) from None
        raise InputError("--env", env_id, str(err)) from None
    resolvable_host(host, "--host")
    free_udp_port(host, port, "--port")


def _env_kwargs(env_kwargs: dict | None, rate_hz: int) -> dict:
    return {"physics_hz": PHYSICS_HZ, **(env_kwargs or {}), "action_mode": "ctbr", "control_hz": int(rate_hz)}


@dataclass(frozen=True)
class SitlEvent:
    time: float  # seconds since the SITL started (wall clock)
    kind: str  # "mode" | "armed" | "disarmed" | "failsafe" | "rejected" | "crash"
    detail: str
    position: tuple[float, float, float]  # the true position (our world frame) at the event

    def __str__(self) -> str:
        return f"t={self.time:.2f}s {self.kind}: {self.detail} at z={self.position[2]:.3f} m"


class MavlinkSitl:
    """A PX4-like vehicle on ``udpin:host:port`` (see the module docstring). ``start`` runs it in a daemon thread
    (``serve`` in the calling thread, for the command); ``events`` records every mode change, arming, failsafe and
    rejected command with the true position, ``trajectory`` the true positions (seconds, xyz) of every tick."""

    def __init__(
        self,
        port: int = 14540,
        host: str = "127.0.0.1",
        *,
        env_id: str = "entropilot/Hover-v0",
        env_kwargs: dict | None = None,
        rate_hz: int = 60,
        seed: int | None = 0,
        system_id: int = 1,
        component_id: int = 1,
        offboard_warmup_s: float = 1.0,
        setpoint_timeout_s: float = 0.5,
        failsafe_hold_s: float = 1.0,
        auto_disarm_s: float = 1.0,
    ):
        from entropilot.deploy.links.sim import SimLink
        from entropilot.envs import make_env

        self.host, self.port = host, int(port)
        self.address = f"udpin:{host}:{int(port)}"
        self.vehicle = SimLink(make_env(env_id, **_env_kwargs(env_kwargs, rate_hz)), seed=seed, close_env=True)
        self.rate_hz = int(rate_hz)
        self.max_body_rate = float(self.vehicle.settings.max_body_rate)
        self.system_id, self.component_id = int(system_id), int(component_id)
        self.offboard_warmup_s = float(offboard_warmup_s)
        self.setpoint_timeout_s = float(setpoint_timeout_s)
        self.failsafe_hold_s = float(failsafe_hold_s)
        self.auto_disarm_s = float(auto_disarm_s)
        self.events: list[SitlEvent] = []
        self.trajectory: list[tuple[float, np.ndarray]] = []
        self.setpoints_received = 0
        self.mode = "hold"
        self.armed = False
        self._conn: mavutil.mavfile | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._setpoint = np.array(self.vehicle.hover_action, dtype=np.float64)
        self._last_setpoint: float | None = None
        self._stream_since: float | None = None
        self._failsafe_since: float | None = None
        self._landed_since: float | None = None
        self._crashes_reported = 0

    # ---- life --------------------------------------------------------------------------------
    def open(self) -> None:
        from pymavlink import mavutil

        # pymavlink binds with SO_REUSEADDR: a second vehicle on a taken port would share it silently.
        free_udp_port(self.host, self.port, "port")
        self.vehicle.connect()  # the env at its start state
        self._conn = mavutil.mavlink_connection(
            self.address, source_system=self.system_id, source_component=self.component_id
        )
        self._t0 = time.monotonic()

    def start(self) -> MavlinkSitl:
        """Open the endpoint and run the loop in a daemon thread; returns self."""
        self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mavlink-sitl", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.vehicle.close()

    def __enter__(self) -> MavlinkSitl:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what a test reads -------------------------------------------------------------------
    @property
    def position(self) -> np.ndarray:
        return self.vehicle.env.unwrapped.sim.position[0].copy()

    @property
    def landed(self) -> bool:
        return self._telemetry().landed

    def now(self) -> float:
        return time.monotonic() - self._t0

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self, end: float | None = None, after_tick=None) -> None:
        """Tick at ``rate_hz`` on the wall clock until ``stop`` (or the monotonic time ``end``)."""
        period = 1.0 / self.rate_hz
        due = time.monotonic()
        while not self._stop.is_set() and (end is None or due < end):
            self.tick()
            if after_tick is not None:
                after_tick()
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                due = time.monotonic()  # overrun: the simulated time slips rather than catching up

    def tick(self) -> None:
        """One period: messages in, state machine, physics, telemetry out."""
        now = self.now()
        conn = self._connection()
        while True:
            msg = conn.recv_match(blocking=False)
            if msg is None:
                break
            self._handle(msg, now)
        self._supervise(now)
        self._step_physics(now)
        self._publish(now)

    def _handle(self, msg, now: float) -> None:
        kind = msg.get_type()
        if kind == "SET_ATTITUDE_TARGET":
            if msg.target_system not in (0, self.system_id):
                return
            if self._last_setpoint is None or now - self._last_setpoint > self.setpoint_timeout_s:
                self._stream_since = now  # a new stream begins
            self._last_setpoint = now
            self.setpoints_received += 1
            self._setpoint = action_from_attitude_target(
                msg.thrust, (msg.body_roll_rate, msg.body_pitch_rate, msg.body_yaw_rate), self.max_body_rate
            )
        elif kind == "COMMAND_LONG":
            if msg.target_system not in (0, self.system_id):
                return
            result = self._command(msg, now)
            self._connection().mav.command_ack_send(msg.command, result)
        elif kind == "SET_MODE":
            if msg.target_system == self.system_id:
                self._set_mode(msg.custom_mode, now)

    def _command(self, msg, now: float) -> int:
        from pymavlink import mavutil

        mav = mavutil.mavlink
        if msg.command == mav.MAV_CMD_COMPONENT_ARM_DISARM:
            if msg.param1 >= 0.5:
                if not self.armed:
                    self.armed = True
                    self.vehicle.arm()
                    self._event(now, "armed", f"armed in {self.mode}")
                return mav.MAV_RESULT_ACCEPTED
            if not self.armed:
                return mav.MAV_RESULT_ACCEPTED
            if not self.landed:
                self._event(now, "rejected", "disarm refused: not on the ground")
                return mav.MAV_RESULT_DENIED
            self._disarm(now, "disarmed by command")
            return mav.MAV_RESULT_ACCEPTED
        if msg.command == mav.MAV_CMD_DO_SET_MODE:
            custom = (int(msg.param2) << 16) | (int(msg.param3) << 24)
            return self._set_mode(custom, now)
        if msg.command == mav.MAV_CMD_NAV_LAND:
            self._go(now, "land", "land command")
            return mav.MAV_RESULT_ACCEPTED
        return mav.MAV_RESULT_UNSUPPORTED

    def _set_mode(self, custom_mode: int, now: float) -> int:
        from pymavlink import mavutil

        mav = mavutil.mavlink
        key = ((custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF)
        name = _MODE_BY_NUMBER.get(key)
        if name not in ("hold", "land", "offboard", "posctl"):
            self._event(now, "rejected", f"mode {key} unsupported")
            return mav.MAV_RESULT_UNSUPPORTED
        if name == "offboard":
            streaming = self._last_setpoint is not None and now - self._last_setpoint <= self.setpoint_timeout_s
            # A stream starts with its first setpoint: _stream_since is set whenever _last_setpoint is.
            have = now - self._stream_since if streaming and self._stream_since is not None else 0.0
            if not streaming or have < self.offboard_warmup_s - 1e-3:
                self._event(
                    now,
                    "rejected",
                    f"OFFBOARD refused: {have:.2f} s of setpoint stream (need {self.offboard_warmup_s:g} s)",
                )
                return mav.MAV_RESULT_TEMPORARILY_REJECTED
        self._go(now, "hold" if name == "posctl" else name, "mode command")
        return mav.MAV_RESULT_ACCEPTED

    def _go(self, now: float, mode: str, why: str) -> None:
        if mode != self.mode:
            self._event(now, "mode", f"{self.mode} -> {mode} ({why})")
            self.mode = mode
        if why != "failsafe":
            self._failsafe_since = None

    def _supervise(self, now: float) -> None:
        if self.mode == "offboard" and (
            self._last_setpoint is None or now - self._last_setpoint > self.setpoint_timeout_s
        ):
            gap = math.inf if self._last_setpoint is None else now - self._last_setpoint
            self._event(now, "failsafe", f"offboard setpoints lost for {gap:.2f} s: hold, then land")
            self._go(now, "hold", "failsafe")
            self._failsafe_since = now
        if (
            self._failsafe_since is not None
            and self.mode == "hold"
            and now - self._failsafe_since >= self.failsafe_hold_s
        ):
            self._go(now, "land", "failsafe")
        if self.armed and self.mode == "land":
            if self.landed:
                self._landed_since = now if self._landed_since is None else self._landed_since
                if now - self._landed_since >= self.auto_disarm_s:
                    self._disarm(now, f"landed for {now - self._landed_since:.2f} s: auto-disarm")
            else:
                self._landed_since = None

    def _disarm(self, now: float, why: str) -> None:
        self.vehicle.disarm()  # SimLink refuses too unless on the ground
        self.armed = False
        self._landed_since = None
        self._event(now, "disarmed", why)

    def _step_physics(self, now: float) -> None:
        if not self.armed:
            return  # frozen at the start state (or resting on the ground)
        if self.mode == "offboard":
            self.vehicle.send_action(self._setpoint)
        elif self.mode == "land":
            self.vehicle.land()
        else:
            self.vehicle.hold()
        crashes = self.vehicle.crashes
        if len(crashes) > self._crashes_reported:  # the env's crash report (a collision, a flip, the ground too fast)
            self._crashes_reported = len(crashes)
            self._event(now, "crash", crashes[-1][1])
        self.trajectory.append((now, self.position))

    def _publish(self, now: float) -> None:
        from pymavlink import mavutil

        mav = mavutil.mavlink
        t = self._telemetry()
        boot_ms = int(now * 1000) & 0xFFFFFFFF
        base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | (mav.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0)
        conn = self._connection()
        out = conn.mav
        if not getattr(conn, "clients", None) and conn.last_address is None:
            return  # nobody has spoken to us yet: nowhere to send
        try:
            out.heartbeat_send(
                mav.MAV_TYPE_QUADROTOR,
                mav.MAV_AUTOPILOT_PX4,
                base,
                px4_custom_mode(self.mode),
                mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY,
            )
            p, v = ned_from_world(t.position), ned_from_world(t.velocity)
            out.local_position_ned_send(boot_ms, *map(float, p), *map(float, v))
            r = rotation_ned_from_world(t.rotation)
            w = FLIP @ t.body_rates
            out.attitude_quaternion_send(boot_ms, *map(float, quaternion_from_rotation(r)), *map(float, w))
            roll, pitch, yaw = euler_from_rotation(r)  # PX4's ZYX Euler angles
            out.attitude_send(boot_ms, roll, pitch, yaw, *map(float, w))
            landed_state = (
                mav.MAV_LANDED_STATE_ON_GROUND
                if t.landed
                else mav.MAV_LANDED_STATE_LANDING
                if self.mode == "land"
                else mav.MAV_LANDED_STATE_IN_AIR
            )
            out.extended_sys_state_send(mav.MAV_VTOL_STATE_UNDEFINED, landed_state)
        except OSError:
            pass  # the peer went away; keep flying on our own

    def _event(self, now: float, kind: str, detail: str) -> None:
        x, y, z = map(float, self.position)
        self.events.append(SitlEvent(now, kind, detail, (x, y, z)))

    def _connection(self) -> mavutil.mavfile:
        assert self._conn is not None, "open() first"
        return self._conn

    def _telemetry(self) -> Telemetry:
        telemetry = self.vehicle.read_telemetry()
        assert telemetry is not None, "open() first"  # a connected SimLink always has a state
        return telemetry


def serve(port: int, host: str = "127.0.0.1", *, duration_s: float | None = None, echo=print, **kwargs) -> MavlinkSitl:
    """Run a SITL in this thread until Ctrl-C (or ``duration_s``), echoing its events as they happen."""
    sitl = MavlinkSitl(port, host, **kwargs)
    printed = 0

    def report():
        nonlocal printed
        while printed < len(sitl.events):
            echo(str(sitl.events[printed]))
            printed += 1

    sitl.open()
    echo(f"SITL on {sitl.address}: {sitl.vehicle!r} at {sitl.rate_hz} Hz, start {np.round(sitl.position, 3).tolist()}")
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user ends an open-ended SITL
            sitl._loop(None if duration_s is None else time.monotonic() + duration_s, after_tick=report)
    finally:
        report()
        sitl.stop()
    return sitl
