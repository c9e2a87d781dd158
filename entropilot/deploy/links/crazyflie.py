"""A Bitcraze Crazyflie as a vehicle: ``CrazyflieLink`` flies the policy's ctbr actions (collective thrust + body
rates) as the Crazyflie's legacy RPYT setpoint in rate mode, over cflib, and reads the onboard state estimate back
through two log blocks, converted to our frames.

Frames. The Crazyflie's world is x/y horizontal, z up, and its body is x forward / y left / z up: the same as ours,
so positions, velocities and gyro rates need no flip, only units (gyro: deg/s -> rad/s). Two legacy quirks matter:

    stabilizer.pitch         is logged with the sign inverted ("legacy: pitch is inverted" in the estimators), so
                             our body-to-world rotation is R = Rz(yaw) Ry(-stabilizer.pitch) Rx(roll) (degrees)
    commander yawrate        the firmware's RPYT decoder negates it (``attitudeRate.yaw = -values->yaw``)
    commander pitch          cflib's ``send_setpoint`` packs ``-pitch``, and the firmware's rate controller tracks
                             ``-gyro.y`` for pitch: the two cancel, so the pitch argument is the body-y rate as is.

Actions (ctbr, normalized [-1, 1]) -> ``cf.commander.send_setpoint(roll, pitch, yawrate, thrust)`` with the
firmware's ``flightmode.stabModeRoll`` / ``flightmode.stabModePitch`` set to 0 (RATE), so that roll and pitch are
rates (deg/s) rather than angles (yaw is always a rate in this setpoint):

    thrust   = round(clip((a0 + 1) / 2, 0, 1) * 65535)      uint16 (the firmware clamps to its MAX_THRUST 60000
                                                              and treats < 1000 as zero)
    roll     = +degrees(a1 * max_body_rate)                  body x rate
    pitch    = +degrees(a2 * max_body_rate)                  body y rate (see above: cflib's sign flip cancels)
    yawrate  = -degrees(a3 * max_body_rate)                  body z rate (the firmware negates it back)

On the wire (CRTP port 3 COMMANDER, channel 0): ``struct '<fffH'`` = (roll, -pitch, yawrate, thrust).

Protocol. The firmware locks thrust until it has seen one setpoint with thrust 0: ``arm`` sends that zero-thrust
setpoint (and the link never sends another setpoint before it), then the policy's setpoints stream once per control
tick. ``hold`` / ``land`` hand control back (``send_notify_setpoint_stop``, CRTP port 7 channel 1) to the onboard
high-level commander (``go_to`` the position where hold began / ``land`` to the ground) or, with
``use_high_level=False``, stream position setpoints (the generic commander's TYPE_POSITION) that hold or descend at
``land_speed``. ``disarm`` (only when landed) stops the motors; ``close`` hands back if the low-level stream is on.

A hold that begins on the ground (below ``landed_height_m``, e.g. a dry run before take-off) sends nothing: the
vehicle stays where it is rather than being sent a go_to that would spin its motors up.

Landed: the Crazyflie logs no landed state that every firmware has; this link reports ``landed`` when, after a
land was commanded, the estimate is within ``landed_height_m`` of the ground and still (|vz| < 0.1 m/s), or
before the flight when the motors were never unlocked.

Imports neither torch, ray nor pybullet; cflib is imported lazily (``pip install 'entropilot[crazyflie]'``).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from typing import Any

import numpy as np

from entropilot.deploy.links.base import Clock, CtbrVehicleLink, LinkError, Telemetry
from entropilot.inputs import InputError
from entropilot.vehicle.frames import rotation_from_euler

__all__ = [
    "CrazyflieLink",
    "LOG_ATTITUDE",
    "LOG_POSITION",
    "THRUST_MAX",
    "action_from_setpoint",
    "check_uri",
    "rotation_from_stabilizer",
    "setpoint_from_action",
    "telemetry_from_log",
]

THRUST_MAX = 65535
PARAM_UINT8 = 0x08  # cflib ParamTocElement type code for uint8_t
RATE_MODE, ANGLE_MODE = 0, 1  # firmware's stabilization modes (flightmode.stabModeRoll / stabModePitch)
LOG_POSITION = (
    "stateEstimate.x",
    "stateEstimate.y",
    "stateEstimate.z",
    "stateEstimate.vx",
    "stateEstimate.vy",
    "stateEstimate.vz",
)
LOG_ATTITUDE = ("stabilizer.roll", "stabilizer.pitch", "stabilizer.yaw", "gyro.x", "gyro.y", "gyro.z")


# cflib's URI forms (its drivers' own patterns): radio://DONGLE/CHANNEL/RATE/ADDRESS is the usual one.
_RADIO_URI = re.compile(r"radio://[0-9]+(/(?P<channel>[0-9]+)(/(250K|1M|2M)(/[0-9A-Fa-f]{1,10})?)?)?(\?.*)?")
_OTHER_URI = re.compile(r"(usb://[0-9]+|(udp|tcp|serial|prrt)://[^\s]+)")


def check_uri(text: str, name: str = "uri") -> str:
    """A cflib URI (radio://0/80/2M/E7E7E7E7E7, usb://0, udp://HOST...), else InputError naming ``name``."""
    radio = _RADIO_URI.fullmatch(text)
    if radio and (radio["channel"] is None or int(radio["channel"]) <= 125):
        return text
    if not radio and _OTHER_URI.fullmatch(text):
        return text
    raise InputError(name, text, "write a cflib URI: radio://DONGLE/CHANNEL(0-125)/RATE(250K|1M|2M)/ADDRESS or usb://N")


def _cflib():
    try:
        import cflib.crtp
        from cflib.crazyflie import Crazyflie
        from cflib.crazyflie.log import LogConfig
    except ImportError as err:  # pragma: no cover - an optional extra
        raise LinkError("the Crazyflie link needs cflib: pip install 'entropilot[crazyflie]'") from err
    return cflib.crtp, Crazyflie, LogConfig


# ---- conversions ----------------------------------------------------------------------------
def setpoint_from_action(action, max_body_rate: float) -> tuple[float, float, float, int]:
    """Normalized ctbr action -> the (roll, pitch, yawrate, thrust) arguments of cflib's ``send_setpoint`` in rate
    mode: deg/s, deg/s, deg/s, uint16 (see the module docstring for the signs)."""
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    rates = np.degrees(a[1:4] * float(max_body_rate))
    thrust = int(round(min(max((a[0] + 1.0) / 2.0, 0.0), 1.0) * THRUST_MAX))
    return float(rates[0]), float(rates[1]), float(-rates[2]), thrust


def action_from_setpoint(roll: float, pitch: float, yawrate: float, thrust: int, max_body_rate: float) -> np.ndarray:
    """The inverse of ``setpoint_from_action`` (what the vehicle executes), clipped to [-1, 1]."""
    rates = np.radians([roll, pitch, -yawrate]) / float(max_body_rate)
    return np.clip(np.concatenate([[2.0 * thrust / THRUST_MAX - 1.0], rates]), -1.0, 1.0)


def rotation_from_stabilizer(roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """The Crazyflie's logged stabilizer angles (deg, legacy inverted pitch) -> body-to-world rotation (ours)."""
    return rotation_from_euler(math.radians(roll_deg), -math.radians(pitch_deg), math.radians(yaw_deg))


def telemetry_from_log(
    values: dict[str, float], timestamp: float, *, armed: bool = False, mode: str = "unknown", landed: bool = False
) -> Telemetry:
    """Log values (the names in LOG_POSITION + LOG_ATTITUDE, in the Crazyflie's units) -> Telemetry (ours)."""
    position = np.array([values[f"stateEstimate.{k}"] for k in ("x", "y", "z")])
    velocity = np.array([values[f"stateEstimate.{k}"] for k in ("vx", "vy", "vz")])
    rotation = rotation_from_stabilizer(values["stabilizer.roll"], values["stabilizer.pitch"], values["stabilizer.yaw"])
    rates = np.radians([values["gyro.x"], values["gyro.y"], values["gyro.z"]])
    return Telemetry(timestamp, position, velocity, rotation, rates, armed, mode, landed)


# ---- the link -------------------------------------------------------------------------------
class CrazyflieLink(CtbrVehicleLink):
    """A Crazyflie over cflib (``uri`` in cflib's syntax, e.g. ``radio://0/80/2M/E7E7E7E7E7``).

    ``cf``: an existing ``cflib.crazyflie.Crazyflie`` to use instead of opening ``uri`` (already connected, or bound
    to a link driver; ``connect`` then neither opens nor, on ``close``, closes it). ``connect`` opens the link
    (waiting ``connect_timeout_s`` for the TOCs), starts the two log blocks and waits for a state
    estimate (rate mode is set just before the first setpoint); ``read_telemetry`` returns None when the position
    block is older than ``telemetry_timeout_s``.
    """

    link_name = "Crazyflie"

    def __init__(
        self,
        uri: str = "radio://0/80/2M/E7E7E7E7E7",
        *,
        control_hz: int = 48,
        max_body_rate: float = 6.0,
        hover_action=None,
        cf=None,
        clock: Clock | None = None,
        use_high_level: bool = True,
        log_period_ms: int = 10,
        telemetry_timeout_s: float = 0.5,
        connect_timeout_s: float = 10.0,
        hold_duration_s: float = 1.0,
        land_speed: float = 0.3,
        landed_height_m: float = 0.05,
        resend_s: float = 1.0,
        wait_for_telemetry: bool = True,
    ):
        super().__init__(
            uri, control_hz=control_hz, max_body_rate=max_body_rate, hover_action=hover_action, clock=clock
        )
        self.use_high_level = bool(use_high_level)
        self.log_period_ms = int(log_period_ms)
        self.telemetry_timeout_s = float(telemetry_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.hold_duration_s = float(hold_duration_s)
        self.land_speed = float(land_speed)
        self.landed_height_m = float(landed_height_m)
        self.resend_s = float(resend_s)
        self.wait_for_telemetry = bool(wait_for_telemetry)
        self.setpoints_sent = 0
        self._given_cf = cf
        self.cf = cf
        self._owns_cf = False
        self._lock = threading.Lock()
        self._log_configs: list[Any] = []
        self._reset_state()

    def _reset_state(self) -> None:
        self._values: dict[str, float] = {}
        self._position_rx: float | None = None
        self._attitude_rx: float | None = None
        self._connected = False
        self._unlocked = False  # the zero-thrust setpoint has gone out (the firmware's thrust lock is open)
        self._rate_mode = False  # roll/pitch were switched to rate mode (restored on close)
        self._streaming = False  # low-level setpoints have control (hand back with notify_setpoint_stop)
        self._mode = "idle"  # idle | rate | hold | land | stopped
        self._mode_target: np.ndarray | None = None
        self._mode_since = 0.0
        self._last_request = -math.inf

    # ---- VehicleLink --------------------------------------------------------------------
    def connect(self) -> None:
        if self._given_cf is None:
            check_uri(self.address)
        crtp, Crazyflie, LogConfig = _cflib()
        self.close()
        self._reset_state()
        if self._given_cf is not None:
            self.cf, self._owns_cf = self._given_cf, False
        else:
            crtp.init_drivers()
            self.cf, self._owns_cf = Crazyflie(rw_cache="./cache"), True
            ready, failed = threading.Event(), []

            def on_failure(uri: str, msg: str) -> None:
                failed.append(msg)
                ready.set()

            self.cf.fully_connected.add_callback(lambda uri: ready.set())
            self.cf.connection_failed.add_callback(on_failure)
            self.cf.open_link(self.address)
            if not ready.wait(self.connect_timeout_s) or failed:
                self.close()
                # cflib's message carries a whole traceback: its first line says what failed.
                why = (
                    failed[0].strip().splitlines()[0]
                    if failed
                    else f"not connected within {self.connect_timeout_s:g} s"
                )
                raise LinkError(f"cannot connect to the Crazyflie at {self.address}: {why}")
        self._connected = True
        try:
            self._start_logging(LogConfig)
        except Exception as err:  # cflib raises KeyError / AttributeError / plain Exception
            self.close()
            raise LinkError(f"cannot set up the Crazyflie at {self.address}: {err}") from err
        if not self.wait_for_telemetry:
            return
        deadline = self.clock.now() + self.connect_timeout_s
        while self.clock.now() < deadline:
            if self.read_telemetry() is not None:
                return
            self.clock.sleep(0.02)
        self.close()
        raise LinkError(f"no state estimate from the Crazyflie at {self.address} within {self.connect_timeout_s:g} s")

    def read_telemetry(self) -> Telemetry | None:
        with self._lock:
            if not self._connected or self._position_rx is None or self._attitude_rx is None:
                return None
            if self.clock.now() - self._position_rx > self.telemetry_timeout_s:
                return None
            values, stamp, mode = dict(self._values), self._position_rx, self._mode
            armed = self._unlocked and mode != "stopped"
        landed = not armed or (
            mode == "land"
            and values["stateEstimate.z"] < self.landed_height_m
            and abs(values["stateEstimate.vz"]) < 0.1
        )
        return telemetry_from_log(values, stamp, armed=armed, mode=mode, landed=landed)

    def send_action(self, action) -> None:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise LinkError(f"refusing action {action.tolist()}: need 4 finite numbers")
        self._send_setpoint(*setpoint_from_action(action, self.max_body_rate))
        with self._lock:
            self._mode = "rate"

    def arm(self) -> None:
        """Roll and pitch to rate mode and open the firmware's thrust lock (`_unlock`)."""
        self._require_connection()
        try:
            self._unlock()
        except Exception as err:
            raise LinkError(f"sending to {self.address} failed: {err}") from err
        with self._lock:
            if self._mode == "stopped":
                self._mode = "idle"

    def hold(self) -> None:
        self._enter_or_stream("hold")

    def land(self) -> None:
        self._enter_or_stream("land")

    def disarm(self) -> None:
        self._require_connection()
        telemetry = self.read_telemetry()
        if telemetry is None or not telemetry.landed:
            raise LinkError("refusing to disarm: the vehicle does not report itself on the ground")
        try:
            if self.use_high_level:
                self.cf.high_level_commander.stop()
            self.cf.commander.send_stop_setpoint()
        except Exception as err:
            raise LinkError(f"sending to {self.address} failed: {err}") from err
        with self._lock:
            self._mode, self._streaming = "stopped", False

    def close(self) -> None:
        # Closing a lost link must not raise: each step is best effort.
        cf = self.cf
        if cf is not None and self._connected and self._streaming:
            with contextlib.suppress(Exception):
                cf.commander.send_notify_setpoint_stop()  # hand back: low-level setpoints no longer take priority
            self._streaming = False
        if cf is not None and self._connected and self._rate_mode:
            self._rate_mode = False
            with contextlib.suppress(Exception):  # a gamepad flying after us expects angle mode again
                for name in ("flightmode.stabModeRoll", "flightmode.stabModePitch"):
                    cf.param.set_value_raw(name, PARAM_UINT8, ANGLE_MODE)
        for config in self._log_configs:
            with contextlib.suppress(Exception):
                config.stop()
                config.delete()
        self._log_configs = []
        if cf is not None and self._owns_cf:
            with contextlib.suppress(Exception):
                cf.close_link()
            self.cf = None
        self._connected = False

    # ---- internals ----------------------------------------------------------------------
    def _set_rate_mode(self) -> None:
        """Roll and pitch of the RPYT setpoint as rates (deg/s). Raw parameter writes: no TOC round trip needed."""
        for name in ("flightmode.stabModeRoll", "flightmode.stabModePitch"):
            self.cf.param.set_value_raw(name, PARAM_UINT8, RATE_MODE)
        self._rate_mode = True

    def _start_logging(self, LogConfig) -> None:
        for name, variables, handler in (
            ("entropilot_position", LOG_POSITION, self._on_position),
            ("entropilot_attitude", LOG_ATTITUDE, self._on_attitude),
        ):
            config = LogConfig(name=name, period_in_ms=self.log_period_ms)
            for variable in variables:
                config.add_variable(variable, "float")
            self.cf.log.add_config(config)
            config.data_received_cb.add_callback(handler)
            config.start()
            self._log_configs.append(config)

    def _on_position(self, timestamp, data, logconf) -> None:
        with self._lock:
            self._values.update({k: float(data[k]) for k in LOG_POSITION})
            self._position_rx = self.clock.now()

    def _on_attitude(self, timestamp, data, logconf) -> None:
        with self._lock:
            self._values.update({k: float(data[k]) for k in LOG_ATTITUDE})
            self._attitude_rx = self.clock.now()

    def _unlock(self) -> None:
        """Before the first setpoint: roll and pitch to rate mode, then one zero-thrust setpoint (the firmware ignores
        thrust until it has seen one). Not on connect, so that a dry run, which sends nothing, changes nothing."""
        if not self._unlocked:
            self._set_rate_mode()
            self.cf.commander.send_setpoint(0.0, 0.0, 0.0, 0)
            self._unlocked = True
            self._streaming = True

    def _send_setpoint(self, roll: float, pitch: float, yawrate: float, thrust: int) -> None:
        self._require_connection()
        try:
            self._unlock()
            self.cf.commander.send_setpoint(roll, pitch, yawrate, int(thrust))
        except Exception as err:
            raise LinkError(f"sending to {self.address} failed: {err}") from err
        self._streaming = True
        self.setpoints_sent += 1

    def _enter_or_stream(self, mode: str) -> None:
        """Hold / land: hand back from the low-level stream once, then command the onboard controller (the
        high-level commander once per ``resend_s``, or a streamed position setpoint every call)."""
        self._require_connection()
        now = self.clock.now()
        with self._lock:
            entering = self._mode != mode
            values = dict(self._values)
        if entering:
            if "stateEstimate.x" not in values:
                raise LinkError(f"cannot {mode}: no state estimate yet")
            here = np.array([values[f"stateEstimate.{k}"] for k in ("x", "y", "z")])
            with self._lock:
                self._mode, self._mode_target, self._mode_since = mode, here, now
                self._last_request = -math.inf
        target, since = self._mode_target, self._mode_since
        assert target is not None  # set (above, now or on an earlier call) whenever _mode is hold or land
        yaw = math.radians(values.get("stabilizer.yaw", 0.0))
        try:
            if self._streaming and self.use_high_level:
                self.cf.commander.send_notify_setpoint_stop()  # the high-level commander takes over
                self._streaming = False
            if mode == "hold" and float(target[2]) < self.landed_height_m:
                return  # on the ground: holding means staying there (a go_to would spin the motors up)
            if self.use_high_level:
                if now - self._last_request < self.resend_s:
                    return
                self._last_request = now
                if mode == "hold":
                    self.cf.high_level_commander.go_to(
                        float(target[0]), float(target[1]), float(target[2]), yaw, self.hold_duration_s
                    )
                else:
                    z = values.get("stateEstimate.z", float(target[2]))  # re-planned from where it is now
                    self.cf.high_level_commander.land(0.0, max(1.0, z / self.land_speed), yaw=yaw)
            else:
                z = float(target[2]) if mode == "hold" else max(0.0, float(target[2]) - self.land_speed * (now - since))
                self.cf.commander.send_position_setpoint(float(target[0]), float(target[1]), z, math.degrees(yaw))
                self._streaming = True
        except Exception as err:
            raise LinkError(f"sending to {self.address} failed: {err}") from err

    def _require_connection(self) -> None:
        if self.cf is None or not self._connected:
            raise LinkError("not connected")

    def __repr__(self) -> str:
        return f"CrazyflieLink({self.address!r}, control_hz={self.control_hz}, max_body_rate={self.max_body_rate:g})"
