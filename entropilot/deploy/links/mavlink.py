"""A PX4-style autopilot as a vehicle: ``MavlinkLink`` flies the policy's ctbr actions as MAVLink offboard
SET_ATTITUDE_TARGET (thrust + body rates) and reads the autopilot's state estimate back, converted to our frames.
Over 450 lines: connection, heartbeat, telemetry and commands share one connection's state.

Frames: ours are world z up and body x forward / y left / z up, PX4's NED and FRD; `entropilot.vehicle.frames`
converts (a 180-degree turn about x, `FLIP`).

Actions (ctbr, normalized [-1, 1]): thrust = (a0 + 1) / 2 in [0, 1] (the fraction of all rotors at maximum, as
the simulator defines it); body rates = FLIP (a1, a2, a3) * max_body_rate rad/s (FRD), attitude ignored.

Imports neither torch, ray nor pybullet: pymavlink only, whose PX4 mode table and mode decoder it uses.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time

import numpy as np

from entropilot.deploy.links.base import Clock, CtbrVehicleLink, LinkError, Telemetry
from entropilot.inputs import InputError, host_port, resolvable_host
from entropilot.vehicle.frames import (
    FLIP,
    rotation_from_quaternion,
    rotation_world_from_ned,
    world_from_ned,
)

try:
    from pymavlink import mavutil
except ImportError as err:  # an optional extra: say how to get it
    raise ImportError("the MAVLink link needs pymavlink: pip install 'entropilot[mavlink]'") from err

__all__ = [
    "MavlinkLink",
    "PX4_MODES",
    "action_from_attitude_target",
    "attitude_target_from_action",
    "check_connection",
    "px4_custom_mode",
    "px4_mode_name",
]

# Our names for the PX4 modes we use -> PX4's names in pymavlink's table, which knows their numbers.
_PX4_NAMES = {
    "manual": "MANUAL",
    "altctl": "ALTCTL",
    "posctl": "POSCTL",
    "takeoff": "TAKEOFF",
    "hold": "LOITER",  # AUTO_LOITER
    "mission": "MISSION",
    "rtl": "RTL",
    "land": "LAND",  # AUTO_LAND
    "offboard": "OFFBOARD",
}
# (main mode, sub mode) by our name; custom_mode = main << 16 | sub << 24 (mavutil.px4_map: name -> (base, main, sub)).
PX4_MODES: dict[str, tuple[int, int]] = {ours: tuple(mavutil.px4_map[px4][1:]) for ours, px4 in _PX4_NAMES.items()}
_OUR_NAME = {px4: ours for ours, px4 in _PX4_NAMES.items()}
FORCE_DISARM_MAGIC = 21196  # param2 of MAV_CMD_COMPONENT_ARM_DISARM that PX4 reads as "force"


def px4_custom_mode(name: str) -> int:
    main, sub = PX4_MODES[name]
    return (main << 16) | (sub << 24)


def px4_mode_name(custom_mode: int) -> str:
    """Our name of a HEARTBEAT's PX4 custom mode (pymavlink decodes it; PX4's own name, lower case, if not ours)."""
    px4 = mavutil.interpret_px4_mode(0, int(custom_mode))
    return _OUR_NAME.get(px4, px4.lower())


def attitude_target_from_action(action, max_body_rate: float) -> tuple[float, np.ndarray]:
    """Normalized ctbr action -> (thrust in [0, 1], FRD body rates rad/s) for SET_ATTITUDE_TARGET."""
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    return float((a[0] + 1.0) / 2.0), FLIP @ (a[1:4] * float(max_body_rate))


def action_from_attitude_target(thrust: float, rates_frd, max_body_rate: float) -> np.ndarray:
    """The inverse of ``attitude_target_from_action`` (what the vehicle side executes), clipped to [-1, 1]."""
    rates = FLIP @ np.asarray(rates_frd, dtype=np.float64) / float(max_body_rate)
    return np.clip(np.concatenate([[2.0 * float(thrust) - 1.0], rates]), -1.0, 1.0)


# ---- the link -------------------------------------------------------------------------------
# pymavlink's network connection kinds (HOST:PORT after the colon); anything else must be a serial device.
NETWORK_KINDS = ("udpin", "udpout", "udp", "udpbcast", "tcp", "tcpin")
_SERIAL = re.compile(r"(/dev/[^,\s]+|COM[0-9]+)(,[0-9]+)?")


def check_connection(text: str, name: str = "connection") -> str:
    """A pymavlink connection string (KIND:HOST:PORT with a host that resolves, or a serial device[,BAUD]), else
    InputError naming ``name``: pymavlink itself raises ValueError, OverflowError or gaierror tracebacks for these."""
    kind, sep, rest = text.partition(":")
    if sep and kind in NETWORK_KINDS:
        try:
            host, _ = host_port(rest, name, form=f"{kind}:HOST:PORT")
        except InputError as err:
            raise InputError(name, text, err.allowed) from None
        resolvable_host(host, name)
        return text
    if not _SERIAL.fullmatch(text):
        raise InputError(
            name, text, "write udpin:HOST:PORT, udpout:HOST:PORT, tcp:HOST:PORT or a serial device /dev/ttyACM0[,BAUD]"
        )
    return text


class MavlinkLink(CtbrVehicleLink):
    """A PX4-style autopilot over MAVLink (``connection`` in pymavlink's syntax: ``udpout:127.0.0.1:14540`` sends to
    a vehicle/SITL listening there, ``udpin:127.0.0.1:14540`` listens for one that sends to us).

    ``connect`` opens the connection, starts a receiver thread and a 1 Hz companion HEARTBEAT
    (MAV_TYPE_ONBOARD_CONTROLLER), and waits ``connect_timeout_s`` for the vehicle's HEARTBEAT and a position
    estimate. Telemetry: LOCAL_POSITION_NED + ATTITUDE_QUATERNION (rates from it, or from ATTITUDE), HEARTBEAT
    (armed, PX4 mode), EXTENDED_SYS_STATE (landed = MAV_LANDED_STATE_ON_GROUND); stamped with the ``clock`` time
    the position message arrived (the vehicle's boot time is not trusted across clocks, so the autopilot's staleness
    check measures transport delay plus the vehicle's publishing gaps); none for ``telemetry_timeout_s`` ->
    ``read_telemetry`` returns None (link loss).
    ``arm`` streams hover setpoints for ``offboard_warmup_s`` (PX4 wants a stream before OFFBOARD), arms, and
    switches to OFFBOARD, streaming all the while; ``send_action`` sends one SET_ATTITUDE_TARGET (thrust + body
    rates, attitude ignored) and raises LinkError if the vehicle has left OFFBOARD on its own (its failsafe);
    ``hold`` asks for AUTO_LOITER, ``land`` sends MAV_CMD_NAV_LAND (both re-sent every ``resend_s`` until the
    vehicle reports the mode); ``disarm`` refuses unless the vehicle reports itself on the ground.
    """

    link_name = "MAVLink"

    def __init__(
        self,
        connection: str = "udpout:127.0.0.1:14540",
        *,
        control_hz: int = 48,
        max_body_rate: float = 6.0,
        hover_action=None,
        target_system: int = 1,
        target_component: int = 1,
        source_system: int = 1,
        source_component: int = 191,
        telemetry_timeout_s: float = 0.5,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 2.0,
        offboard_warmup_s: float = 1.2,
        resend_s: float = 0.5,
        clock: Clock | None = None,
    ):
        super().__init__(
            connection, control_hz=control_hz, max_body_rate=max_body_rate, hover_action=hover_action, clock=clock
        )
        self.target_system, self.target_component = int(target_system), int(target_component)
        self.source_system, self.source_component = int(source_system), int(source_component)
        self.telemetry_timeout_s = float(telemetry_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.command_timeout_s = float(command_timeout_s)
        self.offboard_warmup_s = float(offboard_warmup_s)
        self.resend_s = float(resend_s)
        self.setpoints_sent = 0
        self._conn: mavutil.mavfile | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self._position: np.ndarray | None = None
        self._velocity: np.ndarray | None = None
        self._quaternion: np.ndarray | None = None
        self._rates: np.ndarray | None = None
        self._position_rx: float | None = None
        self._heartbeat_rx: float | None = None
        self._armed = False
        self._mode = "unknown"
        self._landed = False
        self._acks: dict[int, tuple[int, float]] = {}
        self._last_request: dict[str, float] = {}
        self._offboard_since: float | None = None

    # ---- VehicleLink --------------------------------------------------------------------
    def connect(self) -> None:
        check_connection(self.address)
        self.close()
        self._reset_state()
        self._stop.clear()
        try:
            self._conn = mavutil.mavlink_connection(
                self.address, source_system=self.source_system, source_component=self.source_component
            )
        except OSError as err:
            raise LinkError(f"cannot open {self.address}: {err}") from err
        self._threads = [
            threading.Thread(target=self._receive_loop, name="mavlink-rx", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="mavlink-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + self.connect_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._heartbeat_rx is not None and self._position_rx is not None and self._quaternion is not None:
                    return
            time.sleep(0.02)
        self.close()
        raise LinkError(
            f"no HEARTBEAT and state estimate from the vehicle on {self.address} within {self.connect_timeout_s:g} s"
        )

    def read_telemetry(self) -> Telemetry | None:
        with self._lock:
            if self._conn is None or self._position_rx is None or self._quaternion is None:
                return None
            if self.clock.now() - self._position_rx > self.telemetry_timeout_s:
                return None
            rates = self._rates if self._rates is not None else np.zeros(3)
            return Telemetry(
                self._position_rx,
                world_from_ned(self._position),
                world_from_ned(self._velocity),
                rotation_world_from_ned(rotation_from_quaternion(self._quaternion)),
                FLIP @ rates,
                self._armed,
                self._mode,
                self._landed,
            )

    def send_action(self, action) -> None:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise LinkError(f"refusing action {action.tolist()}: need 4 finite numbers")
        with self._lock:
            mode, since, heard = self._mode, self._offboard_since, self._heartbeat_rx
        if since is not None and heard is not None and mode != "offboard" and heard > since:
            raise LinkError(f"the vehicle left offboard on its own (now in {mode}): its failsafe has control")
        self._send_setpoint(action)

    def arm(self) -> None:
        self._require_connection()
        with self._lock:
            if self._armed and self._mode == "offboard":
                return
        self.stream_hover(self.offboard_warmup_s)  # PX4 switches to OFFBOARD only onto an existing setpoint stream
        self._command(mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1, stream=True)
        self._wait(lambda: self._armed, "the vehicle to report itself armed")
        main, sub = PX4_MODES["offboard"]
        self._command(
            mavutil.mavlink.MAV_CMD_DO_SET_MODE,
            mavutil.mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED,
            main,
            sub,
            stream=True,
        )
        self._wait(lambda: self._mode == "offboard", "the vehicle to report OFFBOARD")

    def hold(self) -> None:
        self._request_mode("hold")

    def land(self) -> None:
        self._require_connection()
        with self._lock:
            if self._mode == "land" or not self._due("land"):
                return
        self._send_command(
            mavutil.mavlink.MAV_CMD_NAV_LAND, 0, 0, 0, float("nan"), float("nan"), float("nan"), float("nan")
        )

    def disarm(self) -> None:
        self._require_connection()
        telemetry = self.read_telemetry()
        if telemetry is None or not telemetry.landed:
            raise LinkError("refusing to disarm: the vehicle does not report itself on the ground")
        self._command(mavutil.mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)
        self._threads = []
        if self._conn is not None:
            with contextlib.suppress(OSError):  # a socket the OS already closed: nothing left to release
                self._conn.close()
            self._conn = None

    # ---- commands ------------------------------------------------------------------------
    def request_mode(self, name: str, *, wait: bool = True) -> int | None:
        """Ask for a PX4 mode by our name (``PX4_MODES``); with ``wait`` the COMMAND_ACK result (MAV_RESULT)."""
        main, sub = PX4_MODES[name]
        args = (mavutil.mavlink.MAV_CMD_DO_SET_MODE, mavutil.mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, main, sub)
        if not wait:
            self._send_command(*args)
            return None
        return self._command(*args, check=False)

    def stream_hover(self, seconds: float) -> None:
        """Send the hover setpoint at ``control_hz`` for ``seconds`` (what ``arm`` streams before OFFBOARD)."""
        end = self.clock.now() + float(seconds)
        while self.clock.now() < end:
            self._stream_hover_tick()

    def command(self, command: int, *params: float) -> int:
        """Send a COMMAND_LONG and return its COMMAND_ACK result (LinkError if none arrives in time)."""
        return self._command(command, *params, check=False)

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def _request_mode(self, name: str) -> None:
        self._require_connection()
        with self._lock:
            if self._mode == name or not self._due(name):
                return
        self.request_mode(name, wait=False)

    def _due(self, key: str) -> bool:
        """Called under the lock: whether a mode request is due again (idempotent per tick, re-sent every resend_s)."""
        now = self.clock.now()
        if now - self._last_request.get(key, -math.inf) < self.resend_s:
            return False
        self._last_request[key] = now
        return True

    def _command(self, command: int, *params: float, stream: bool = False, check: bool = True) -> int:
        with self._lock:
            self._acks.pop(command, None)
        self._send_command(command, *params)
        deadline = self.clock.now() + self.command_timeout_s
        while self.clock.now() < deadline:
            with self._lock:
                ack = self._acks.get(command)
            if ack is not None:
                result = ack[0]
                if check and result != mavutil.mavlink.MAV_RESULT_ACCEPTED:
                    raise LinkError(f"the vehicle refused command {command}: MAV_RESULT {result}")
                return result
            if stream:
                self._stream_hover_tick()
            else:
                self.clock.sleep(0.01)
        raise LinkError(f"no COMMAND_ACK for command {command} within {self.command_timeout_s:g} s")

    def _wait(self, condition, what: str) -> None:
        deadline = self.clock.now() + self.command_timeout_s
        while self.clock.now() < deadline:
            with self._lock:
                if condition():
                    return
            self._stream_hover_tick()
        raise LinkError(f"timed out waiting for {what}")

    def _stream_hover_tick(self) -> None:
        self._send_setpoint(self.hover_action)
        self.clock.sleep(1.0 / self.control_hz)

    def _send_command(self, command: int, *params: float) -> None:
        p = list(params) + [0.0] * (7 - len(params))
        self._send(lambda mav: mav.command_long_send(self.target_system, self.target_component, command, 0, *p))

    def _send_setpoint(self, action) -> None:
        thrust, rates = attitude_target_from_action(action, self.max_body_rate)
        mask = mavutil.mavlink.ATTITUDE_TARGET_TYPEMASK_ATTITUDE_IGNORE
        boot_ms = int(time.monotonic() * 1000) & 0xFFFFFFFF
        self._send(
            lambda mav: mav.set_attitude_target_send(
                boot_ms,
                self.target_system,
                self.target_component,
                mask,
                [1.0, 0.0, 0.0, 0.0],
                float(rates[0]),
                float(rates[1]),
                float(rates[2]),
                thrust,
            )
        )
        self.setpoints_sent += 1

    def _send(self, write) -> None:
        conn = self._require_connection()  # once: close() on another thread may clear self._conn meanwhile
        with self._send_lock:
            try:
                write(conn.mav)
            except OSError as err:
                raise LinkError(f"sending on {self.address} failed: {err}") from err

    def _require_connection(self) -> mavutil.mavfile:
        conn = self._conn
        if conn is None:
            raise LinkError("not connected")
        return conn

    # ---- threads -------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._send(
                    lambda mav: mav.heartbeat_send(
                        mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
                        mavutil.mavlink.MAV_AUTOPILOT_INVALID,
                        0,
                        0,
                        mavutil.mavlink.MAV_STATE_ACTIVE,
                    )
                )
            except LinkError:
                # A lost link shows up as stale telemetry, which the autopilot's failsafe handles; the
                # heartbeat simply keeps trying in case the link comes back.
                pass
            self._stop.wait(1.0)

    def _receive_loop(self) -> None:
        mav = mavutil.mavlink
        conn = self._conn
        assert conn is not None, "connect() opens the connection before it starts this thread"
        while not self._stop.is_set():
            try:
                msg = conn.recv_match(blocking=True, timeout=0.05)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            if msg is None or msg.get_srcSystem() != self.target_system:
                continue
            kind, now = msg.get_type(), self.clock.now()
            with self._lock:
                if kind == "LOCAL_POSITION_NED":
                    self._position = np.array([msg.x, msg.y, msg.z])
                    self._velocity = np.array([msg.vx, msg.vy, msg.vz])
                    self._position_rx = now
                elif kind == "ATTITUDE_QUATERNION":
                    self._quaternion = np.array([msg.q1, msg.q2, msg.q3, msg.q4])
                    self._rates = np.array([msg.rollspeed, msg.pitchspeed, msg.yawspeed])
                elif kind == "ATTITUDE" and self._rates is None:
                    self._rates = np.array([msg.rollspeed, msg.pitchspeed, msg.yawspeed])
                elif kind == "HEARTBEAT" and msg.get_srcComponent() == self.target_component:
                    self._armed = bool(msg.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED)
                    self._mode = px4_mode_name(msg.custom_mode)
                    self._heartbeat_rx = now
                    if self._mode == "offboard" and self._offboard_since is None:
                        self._offboard_since = now  # from now on, leaving offboard is the vehicle's failsafe
                elif kind == "EXTENDED_SYS_STATE":
                    self._landed = msg.landed_state == mav.MAV_LANDED_STATE_ON_GROUND
                elif kind == "COMMAND_ACK":
                    self._acks[msg.command] = (msg.result, now)

    def __repr__(self) -> str:
        return f"MavlinkLink({self.address!r}, control_hz={self.control_hz}, max_body_rate={self.max_body_rate:g})"
