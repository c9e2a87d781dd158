"""CrazyflieLink at the packet level, without a radio: cflib's real ``Crazyflie`` bound to an in-memory CRTP link
driver that records every packet sent and can inject packets from the "vehicle"; the recorded packets are decoded
(port / channel / struct layout) and checked against the mapping the link documents."""

from __future__ import annotations

import math
import queue
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

cflib = pytest.importorskip("cflib")

from cflib.crazyflie import Crazyflie  # noqa: E402
from cflib.crazyflie.log import LogTocElement  # noqa: E402
from cflib.crazyflie.toc import Toc  # noqa: E402
from cflib.crtp.crtpdriver import CRTPDriver  # noqa: E402
from cflib.crtp.crtpstack import CRTPPacket, CRTPPort  # noqa: E402

from entropilot.deploy.links.base import LinkError, SimClock  # noqa: E402
from entropilot.deploy.links.crazyflie import (  # noqa: E402
    LOG_ATTITUDE,
    LOG_POSITION,
    CrazyflieLink,
    action_from_setpoint,
    rotation_from_stabilizer,
    setpoint_from_action,
    telemetry_from_log,
)

MAX_RATE = 6.0
LOG_CHAN_SETTINGS, LOG_CHAN_DATA = 1, 2
LOG_CREATE_COMMANDS = (0, 6)  # CMD_CREATE_BLOCK, CMD_CREATE_BLOCK_V2


class LoopbackDriver(CRTPDriver):
    """A CRTP link driver in memory: ``sent`` holds (port, channel, bytes) of every packet cflib sends; ``inject``
    queues a packet from the vehicle. Log blocks are acknowledged like the firmware does."""

    def __init__(self):
        super().__init__()
        self.needs_resending = False  # no resend timers: every packet "arrives"
        self.sent: list[tuple[int, int, bytes]] = []
        self.incoming: queue.Queue = queue.Queue()
        self.log_block_ids: list[int] = []

    def connect(self, uri, radio_link_statistics_callback, link_error_callback):
        """Nothing to open: packets stay in this object (CRTPDriver's interface requires the method)."""

    def send_packet(self, pk):
        data = bytes(pk.data)
        self.sent.append((pk.port, pk.channel, data))
        if pk.port == CRTPPort.LOGGING and pk.channel == LOG_CHAN_SETTINGS and data[0] in LOG_CREATE_COMMANDS:
            self.log_block_ids.append(data[1])
            self.inject(CRTPPort.LOGGING, LOG_CHAN_SETTINGS, bytes([data[0], data[1], 0]))

    def inject(self, port: int, channel: int, data: bytes) -> None:
        pk = CRTPPacket()
        pk.set_header(port, channel)
        pk.data = data
        self.incoming.put(pk)

    def receive_packet(self, wait=0):
        try:
            if wait == 0:
                return self.incoming.get_nowait()
            return self.incoming.get(timeout=None if wait < 0 else wait)
        except queue.Empty:
            return None

    def get_status(self):
        return "loopback"

    def get_name(self):
        return "loopback"

    def scan_interface(self, address=None):
        return []

    def enum(self):
        return []

    def get_help(self):
        return None

    def close(self):
        """Nothing to release (CRTPDriver's interface)."""

    def of(self, port, channel=None):
        return [(p, c, d) for p, c, d in self.sent if p == port and (channel is None or c == channel)]


def _log_toc_element(ident: int, complete_name: str) -> LogTocElement:
    group, name = complete_name.split(".")
    return LogTocElement(ident, bytes([0x07]) + group.encode() + b"\0" + name.encode() + b"\0")  # 0x07: float


def _loopback_crazyflie() -> tuple[LoopbackDriver, Crazyflie]:
    """cflib's real Crazyflie on the in-memory driver, with the log TOC a connection would have downloaded."""
    driver = LoopbackDriver()
    cf = Crazyflie(link=driver)
    cf.log.toc = Toc()  # what a connection would have downloaded: the log variables the link asks for
    for ident, name in enumerate(LOG_POSITION + LOG_ATTITUDE):
        cf.log.toc.add_element(_log_toc_element(ident, name))
    return driver, cf


@pytest.fixture
def vehicle():
    driver, cf = _loopback_crazyflie()
    link = CrazyflieLink(
        "radio://0/80/2M/E7E7E7E7E7",
        control_hz=50,
        max_body_rate=MAX_RATE,
        hover_action=[-0.3, 0, 0, 0],
        cf=cf,
        clock=SimClock(),
        wait_for_telemetry=False,
    )
    link.connect()
    yield link, driver
    link.close()
    cf.link = None  # stops the incoming-packet thread's loop


def _commander(driver):
    """Decoded legacy RPYT setpoints (CRTP port 3, channel 0): (roll, -pitch, yawrate, thrust) on the wire."""
    out = []
    for _, channel, data in driver.of(CRTPPort.COMMANDER):
        assert channel == 0 and len(data) == 14
        out.append(struct.unpack("<fffH", data))
    return out


def _send_log(driver, block: int, values) -> None:
    driver.inject(
        CRTPPort.LOGGING, LOG_CHAN_DATA, bytes([block]) + (1234).to_bytes(3, "little") + struct.pack("<6f", *values)
    )


def _wait(predicate, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


# ---- conversions ----------------------------------------------------------------------------
def test_setpoint_mapping_and_inverse():
    roll, pitch, yawrate, thrust = setpoint_from_action([0.0, 0.5, -0.25, 1.0], MAX_RATE)
    assert thrust == round(0.5 * 65535)
    assert roll == pytest.approx(math.degrees(0.5 * MAX_RATE))
    assert pitch == pytest.approx(math.degrees(-0.25 * MAX_RATE))
    assert yawrate == pytest.approx(-math.degrees(MAX_RATE))  # the firmware negates legacy yaw rate
    assert setpoint_from_action([-1, 0, 0, 0], MAX_RATE)[3] == 0
    assert setpoint_from_action([1, 0, 0, 0], MAX_RATE)[3] == 65535
    assert setpoint_from_action([7, 0, 0, 0], MAX_RATE)[3] == 65535  # clamped
    a = np.array([0.2, -0.4, 0.6, -0.8])
    np.testing.assert_allclose(action_from_setpoint(*setpoint_from_action(a, MAX_RATE), MAX_RATE), a, atol=1e-4)


def test_rotation_from_stabilizer_frames():
    np.testing.assert_allclose(rotation_from_stabilizer(0, 0, 90), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # roll +30 deg about body x (forward): the left axis tips up
    r = rotation_from_stabilizer(30, 0, 0)
    np.testing.assert_allclose(r[:, 1], [0, math.cos(math.radians(30)), math.sin(math.radians(30))], atol=1e-12)
    # stabilizer.pitch is legacy (positive = nose up): the body x axis points up in the world
    r = rotation_from_stabilizer(0, 20, 0)
    assert r[2, 0] == pytest.approx(math.sin(math.radians(20)))
    r = rotation_from_stabilizer(10, -15, 200)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_telemetry_from_log_units():
    values = dict(
        zip(LOG_POSITION + LOG_ATTITUDE, [1.0, -2.0, 0.5, 0.1, 0.2, -0.3, 0.0, 0.0, 90.0, 180.0, -90.0, 45.0])
    )
    t = telemetry_from_log(values, 3.0, armed=True, mode="rate")
    np.testing.assert_allclose(t.position, [1, -2, 0.5])
    np.testing.assert_allclose(t.velocity, [0.1, 0.2, -0.3])
    np.testing.assert_allclose(t.body_rates, [math.pi, -math.pi / 2, math.pi / 4])
    np.testing.assert_allclose(t.rotation @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # yaw 90: facing world +y
    assert t.timestamp == 3.0 and t.armed and t.mode == "rate"


# ---- the link over the loopback driver --------------------------------------------------------
def test_connect_only_listens_and_arm_sets_rate_mode(vehicle):
    link, driver = vehicle
    assert len(driver.log_block_ids) == 2
    assert driver.of(CRTPPort.PARAM, 3) == [] and _commander(driver) == []  # a dry run changes nothing
    link.arm()
    params = [d for _, _, d in driver.of(CRTPPort.PARAM, 3)]  # MISC channel: raw writes by name
    assert params == [b"\0flightmode\0stabModeRoll\0\x08\x00", b"\0flightmode\0stabModePitch\0\x08\x00"]


def test_unlock_then_stream_then_hand_back(vehicle):
    link, driver = vehicle
    with pytest.raises(LinkError):
        link.send_action([0, 0, 0, float("nan")])
    assert _commander(driver) == []
    link.arm()
    assert _commander(driver) == [(0.0, 0.0, 0.0, 0)]  # the first setpoint: zero thrust opens the thrust lock
    link.arm()  # idempotent: no second unlock
    assert len(_commander(driver)) == 1
    actions = [[0.0, 0.5, -0.25, 1.0], [-0.3, 0, 0, 0], [1.0, -1.0, 1.0, -1.0]]
    for k, action in enumerate(actions, start=1):
        link.send_action(action)
        sent = _commander(driver)
        assert len(sent) == 1 + k  # exactly one setpoint per tick
        roll, neg_pitch, yawrate, thrust = sent[-1]
        want = setpoint_from_action(action, MAX_RATE)
        assert thrust == want[3] == round(min(max((action[0] + 1) / 2, 0), 1) * 65535)
        assert roll == pytest.approx(math.degrees(action[1] * MAX_RATE), rel=1e-6)
        assert -neg_pitch == pytest.approx(math.degrees(action[2] * MAX_RATE), rel=1e-6)  # cflib packs -pitch
        assert yawrate == pytest.approx(-math.degrees(action[3] * MAX_RATE), rel=1e-6)
    assert link.setpoints_sent == 3
    generic_before = len(driver.of(CRTPPort.COMMANDER_GENERIC))
    link.close()
    generic = driver.of(CRTPPort.COMMANDER_GENERIC)[generic_before:]
    assert generic == [(CRTPPort.COMMANDER_GENERIC, 1, struct.pack("<BI", 0, 0))]  # notify setpoint stop
    assert len(_commander(driver)) == 4  # no setpoint after the hand-back
    restored = [d for _, _, d in driver.of(CRTPPort.PARAM, 3)][-2:]
    assert restored == [b"\0flightmode\0stabModeRoll\0\x08\x01", b"\0flightmode\0stabModePitch\0\x08\x01"]


def test_first_action_without_arm_is_preceded_by_unlock(vehicle):
    link, driver = vehicle
    link.send_action([0.2, 0, 0, 0])
    sent = _commander(driver)
    assert sent[0] == (0.0, 0.0, 0.0, 0) and sent[1][3] == round(0.6 * 65535) and len(sent) == 2
    assert len(driver.of(CRTPPort.PARAM, 3)) == 2  # rate mode went out with the unlock


def test_telemetry_from_log_packets(vehicle):
    link, driver = vehicle
    assert link.read_telemetry() is None
    pos_block, att_block = driver.log_block_ids
    _send_log(driver, pos_block, [0.1, 0.2, 0.3, 1.0, 0.0, -0.5])
    _send_log(driver, att_block, [0.0, 0.0, 90.0, 57.29577951308232, 0.0, -114.59155902616465])
    assert _wait(lambda: link.read_telemetry() is not None)
    t = link.read_telemetry()
    np.testing.assert_allclose(t.position, [0.1, 0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(t.velocity, [1.0, 0.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(t.body_rates, [1.0, 0.0, -2.0], atol=1e-5)
    np.testing.assert_allclose(t.rotation, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)
    assert t.landed and not t.armed  # never unlocked: on the ground
    link.clock.sleep(1.0)  # stale beyond telemetry_timeout_s: link loss
    assert link.read_telemetry() is None


def test_hold_and_land_hand_back_to_high_level_commander(vehicle):
    link, driver = vehicle
    pos_block, att_block = driver.log_block_ids
    _send_log(driver, pos_block, [0.5, -0.5, 1.2, 0.0, 0.0, 0.0])
    _send_log(driver, att_block, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert _wait(lambda: link.read_telemetry() is not None)
    link.arm()
    link.send_action([-0.3, 0, 0, 0])
    n_setpoints = len(_commander(driver))
    with pytest.raises(LinkError):
        link.disarm()  # flying: refused
    link.hold()
    link.hold()  # idempotent within resend_s: nothing more
    generic = driver.of(CRTPPort.COMMANDER_GENERIC)
    assert generic == [(CRTPPort.COMMANDER_GENERIC, 1, struct.pack("<BI", 0, 0))]
    hl = [d for _, _, d in driver.of(CRTPPort.SETPOINT_HL)]
    assert len(hl) == 1
    if hl[0][0] == 4:  # GO_TO (older firmware protocol): group, relative, x, y, z, yaw, duration
        cmd, group, relative, x, y, z, yaw, duration = struct.unpack("<BBBfffff", hl[0])
    else:  # GO_TO_2: group, relative, linear, x, y, z, yaw, duration
        cmd, group, relative, linear, x, y, z, yaw, duration = struct.unpack("<BBBBfffff", hl[0])
        assert not linear
    assert not relative
    assert cmd in (4, 12)  # GO_TO / GO_TO_2
    assert (x, y, z) == pytest.approx((0.5, -0.5, 1.2)) and duration == pytest.approx(1.0)
    link.land()
    hl = [d for _, _, d in driver.of(CRTPPort.SETPOINT_HL)]
    assert len(hl) == 2
    cmd, group, height, yaw, use_current_yaw, duration = struct.unpack("<BBff?f", hl[1])
    assert cmd == 8 and height == 0.0 and duration == pytest.approx(1.2 / link.land_speed)
    assert len(_commander(driver)) == n_setpoints  # no low-level setpoint after the hand-back
    assert not link.read_telemetry().landed
    _send_log(driver, pos_block, [0.5, -0.5, 0.02, 0.0, 0.0, 0.0])
    assert _wait(lambda: link.read_telemetry().landed)
    link.disarm()
    assert [d for _, _, d in driver.of(CRTPPort.SETPOINT_HL)][-1] == struct.pack("<BB", 3, 0)  # HL stop
    assert driver.of(CRTPPort.COMMANDER_GENERIC)[-1] == (CRTPPort.COMMANDER_GENERIC, 0, struct.pack("<B", 0))


def test_land_without_high_level_commander_streams_a_descent(vehicle):
    link, driver = vehicle
    link.use_high_level = False
    pos_block, att_block = driver.log_block_ids
    _send_log(driver, pos_block, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    _send_log(driver, att_block, [0.0] * 6)
    assert _wait(lambda: link.read_telemetry() is not None)
    link.arm()
    zs = []
    for _ in range(3):
        link.land()
        _, channel, data = driver.of(CRTPPort.COMMANDER_GENERIC)[-1]
        kind, x, y, z, yaw = struct.unpack("<Bffff", data)
        assert channel == 0 and kind == 7  # TYPE_POSITION
        zs.append(z)
        link.clock.sleep(0.5)
    assert zs == pytest.approx([1.0, 1.0 - 0.5 * link.land_speed, 1.0 - link.land_speed])


def test_not_connected_raises():
    link = CrazyflieLink(cf=None)
    with pytest.raises(LinkError):
        link.send_action([0, 0, 0, 0])
    assert link.read_telemetry() is None
    assert link.expected_contract()["action_mode"] == "ctbr"


def test_autopilot_flies_the_link(vehicle):
    """The autopilot's loop over this link: unlock, one setpoint per tick, then hand back to the onboard hold."""
    from entropilot.deploy.autopilot import Autopilot, CallablePolicy

    link, driver = vehicle
    pos_block, att_block = driver.log_block_ids
    _send_log(driver, pos_block, [0.5, -0.5, 1.2, 0.0, 0.0, 0.0])
    _send_log(driver, att_block, [0.0] * 6)
    assert _wait(lambda: link.read_telemetry() is not None)
    policy = CallablePolicy(lambda obs: np.array([0.1, 0.0, 0.0, 0.0], dtype=np.float32), "ctbr", link.control_hz)
    log = Autopilot(policy, link, [0.5, -0.5, 1.2]).run(steps=3, end="hold")
    assert log.commands["action"] == 3 and log.commands["hold"] >= 1, log.summary()
    sent = _commander(driver)
    assert sent[0] == (0.0, 0.0, 0.0, 0) and len(sent) == 4
    assert all(s[3] == round(0.55 * 65535) for s in sent[1:])
    assert driver.of(CRTPPort.COMMANDER_GENERIC) == [(CRTPPort.COMMANDER_GENERIC, 1, struct.pack("<BI", 0, 0))]
    assert driver.of(CRTPPort.SETPOINT_HL)[0][2][0] in (4, 12)  # go_to: the onboard controller holds


def test_hold_on_the_ground_sends_nothing(vehicle):
    link, driver = vehicle
    pos_block, att_block = driver.log_block_ids
    _send_log(driver, pos_block, [0.0, 0.0, 0.01, 0.0, 0.0, 0.0])
    _send_log(driver, att_block, [0.0] * 6)
    assert _wait(lambda: link.read_telemetry() is not None)
    link.hold()
    assert driver.of(CRTPPort.SETPOINT_HL) == [] and driver.of(CRTPPort.COMMANDER_GENERIC) == []
    assert _commander(driver) == []


# ---- the fly command ------------------------------------------------------------------------
HL_LAND_COMMANDS = (3, 8)  # cflib's high-level COMMAND_LAND, COMMAND_LAND_2


def test_the_fly_command_flies_a_crazyflie_link(exported, capsys):
    """``fly --link crazyflie`` after it has made its link: the flight function over cflib on the in-memory driver, a
    real exported policy and the wall clock; a stand-in firmware streams the estimate and lands when told to."""
    from entropilot.deploy.fly import fly_on_link
    from entropilot.deploy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(exported.path)
    driver, cf = _loopback_crazyflie()
    link = CrazyflieLink.from_policy_metadata(policy.metadata, "radio://0/80/2M/E7E7E7E7E7", cf=cf)
    stop = threading.Event()

    def firmware():  # at the target, 1 m up, until a high-level land arrives; then on the ground
        while not stop.is_set():
            if len(driver.log_block_ids) == 2:
                landing = any(d[0] in HL_LAND_COMMANDS for _, _, d in driver.of(CRTPPort.SETPOINT_HL))
                _send_log(driver, driver.log_block_ids[0], [0.0, 0.0, 0.0 if landing else 1.0, 0.0, 0.0, 0.0])
                _send_log(driver, driver.log_block_ids[1], [0.0] * 6)
            time.sleep(0.005)

    thread = threading.Thread(target=firmware, daemon=True)
    thread.start()
    try:
        log = fly_on_link(
            policy, "policy.onnx", link, target=np.array([0.0, 0.0, 1.0]), duration_s=0.5, max_action_rate=40.0
        )
    finally:
        stop.set()
        thread.join()
        cf.link = None
    out = capsys.readouterr().out
    assert "Flying policy.onnx (ctbr, 48 Hz) on CrazyflieLink('radio://0/80/2M/E7E7E7E7E7'" in out
    assert "final state disarmed" in out and "-> disarmed (disarmed on the ground)" in out, out
    assert log.final_state.value == "disarmed" and not log.failsafes
    sent = _commander(driver)
    assert sent[0] == (0.0, 0.0, 0.0, 0) and len(sent) > 1  # unlock, then the policy's setpoints
    assert any(d[0] in HL_LAND_COMMANDS for _, _, d in driver.of(CRTPPort.SETPOINT_HL))
    assert (CRTPPort.COMMANDER_GENERIC, 1, struct.pack("<BI", 0, 0)) in driver.of(CRTPPort.COMMANDER_GENERIC)


def test_fly_without_a_crazyradio_says_so(exported, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from entropilot.cli import main as cli

    monkeypatch.chdir(tmp_path)  # cflib keeps its TOC cache in ./cache
    result = CliRunner().invoke(
        cli, ["fly", str(exported.path), "--link", "crazyflie", "--uri", "radio://0/80/2M/E7E7E7E7E7", "--dry-run"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "cannot connect to the Crazyflie at radio://0/80/2M/E7E7E7E7E7: Couldn't load link driver" in result.output


def test_fly_without_cflib_names_the_extra(exported):
    code = (
        "import sys\n"
        "sys.modules['cflib'] = None  # as if the extra were not installed: importing it fails\n"
        "from entropilot.cli import main\n"
        # --force: past the readiness gate (the test policy has no report), to where the link needs cflib
        f"main(['fly', {str(exported.path)!r}, '--link', 'crazyflie', '--force'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "the Crazyflie link needs cflib: pip install 'entropilot[crazyflie]'" in out.stderr
