"""The MAVLink link against a real MAVLink peer on 127.0.0.1 UDP (the PyBullet SITL behind a PX4-like offboard state
machine): frame conversions, the offboard handshake, a policy flying through Autopilot + MavlinkLink, and the
vehicle's own failsafe when the policy side dies. Wall-clock flights of a few seconds each."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from conftest import write_linear_policy
from pymavlink import mavutil

from entropilot.deploy.autopilot import Autopilot, CallablePolicy
from entropilot.deploy.links.base import LinkError, observation_from_telemetry
from entropilot.deploy.links.mavlink import (
    PX4_MODES,
    MavlinkLink,
    action_from_attitude_target,
    attitude_target_from_action,
    px4_custom_mode,
    px4_mode_name,
)
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.deploy.safety import FlightState
from entropilot.deploy.sitl import MavlinkSitl
from entropilot.envs.pid import CascadedPID
from entropilot.vehicle.frames import (
    FLIP,
    euler_from_rotation,
    ned_from_world,
    quaternion_from_rotation,
    rotation_from_euler,
    rotation_from_quaternion,
    rotation_ned_from_world,
    rotation_world_from_ned,
    world_from_ned,
)

MAV = mavutil.mavlink
HZ = 48
TARGET = (0.0, 0.0, 1.0)
START = {"start_low": (0.3, -0.2, 0.8), "start_high": (0.3, -0.2, 0.8), "start_tilt_deg": 0.0, "start_velocity": 0.0}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sitl():
    vehicle = MavlinkSitl(free_udp_port(), env_kwargs=START).start()
    yield vehicle
    vehicle.stop()


def link_to(sitl, **kwargs) -> MavlinkLink:
    port = sitl.address.rsplit(":", 1)[1]
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", control_hz=HZ, **kwargs)
    link.connect()
    return link


def pid_policy() -> CallablePolicy:
    return CallablePolicy(CascadedPID("cf2x", "ctbr", HZ), "ctbr", HZ)


def random_rotation(rng) -> np.ndarray:
    return rotation_from_quaternion(rng.normal(size=4))


# ---- frames ---------------------------------------------------------------------------------
def test_frame_conversions_round_trip_and_mean_what_px4_means():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, v, w = random_rotation(rng), rng.normal(size=3), rng.normal(size=3)
        assert np.allclose(world_from_ned(ned_from_world(v)), v)
        assert np.allclose(rotation_world_from_ned(rotation_ned_from_world(r)), r)
        assert np.allclose(rotation_from_quaternion(quaternion_from_rotation(r)), r)
        r_ned = rotation_ned_from_world(r)
        assert np.allclose(r_ned.T @ r_ned, np.eye(3)) and np.isclose(np.linalg.det(r_ned), 1.0)
        # the same physical motion in both conventions: world angular velocity R w, body vectors rotate alike
        assert np.allclose(r_ned @ (FLIP @ w), ned_from_world(r @ w))
        # quaternion of the converted rotation = (w, x, -y, -z) of ours (up to sign)
        q, q_ned = quaternion_from_rotation(r), quaternion_from_rotation(r_ned)
        assert np.allclose(q_ned, q * [1, 1, -1, -1]) or np.allclose(q_ned, -q * [1, 1, -1, -1])
        a = rng.uniform(-1, 1, size=4)
        thrust, rates = attitude_target_from_action(a, 6.0)
        assert 0.0 <= thrust <= 1.0 and np.allclose(action_from_attitude_target(thrust, rates, 6.0), a)
    # meanings: 1 m up is z = -1 NED; a left (y+) position is west (y_ned -); yaw left (CCW from above) is a negative
    # FRD yaw rate; a nose-up pitch (ours: negative rate about y left) is a positive FRD pitch rate
    assert np.allclose(ned_from_world([0, 0, 1]), [0, 0, -1]) and np.allclose(ned_from_world([0, 1, 0]), [0, -1, 0])
    assert np.allclose(attitude_target_from_action([1, 0, -0.5, 0.5], 6.0)[1], [0, 3.0, -3.0])
    assert attitude_target_from_action([-1, 0, 0, 0], 6.0)[0] == 0.0
    # level attitude is the identity in both; a yaw of +30 degrees (ours, CCW) is -30 degrees in NED
    yaw = np.radians(30)
    r = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    r_ned = rotation_ned_from_world(r)
    assert np.isclose(np.arctan2(r_ned[1, 0], r_ned[0, 0]), -yaw)
    for name in PX4_MODES:
        assert px4_mode_name(px4_custom_mode(name)) == name
    assert PX4_MODES["offboard"] == (6, 0) and PX4_MODES["hold"] == (4, 3)  # PX4's px4_custom_mode.h


def test_euler_angles_and_quaternions_agree_with_pybullets():
    import pybullet as p

    rng = np.random.default_rng(1)
    for _ in range(50):
        roll, pitch, yaw = rng.uniform(-np.pi, np.pi), rng.uniform(-1.5, 1.5), rng.uniform(-np.pi, np.pi)
        x, y, z, w = p.getQuaternionFromEuler([roll, pitch, yaw])  # pybullet: ZYX, (x, y, z, w)
        r = np.array(p.getMatrixFromQuaternion([x, y, z, w])).reshape(3, 3)
        assert np.allclose(rotation_from_euler(roll, pitch, yaw), r)
        assert np.allclose(rotation_from_quaternion([w, x, y, z]), r)
        assert np.allclose(euler_from_rotation(r), (roll, pitch, yaw))


# ---- the SITL's offboard handshake ---------------------------------------------------------
def test_sitl_rejects_offboard_before_a_second_of_setpoints_and_a_disarm_in_the_air(sitl):
    link = link_to(sitl)
    try:
        assert link.command(MAV.MAV_CMD_COMPONENT_ARM_DISARM, 1) == MAV.MAV_RESULT_ACCEPTED
        assert link.request_mode("offboard") == MAV.MAV_RESULT_TEMPORARILY_REJECTED  # no stream at all
        link.stream_hover(0.5)
        assert link.request_mode("offboard") == MAV.MAV_RESULT_TEMPORARILY_REJECTED  # half a second is not enough
        assert sitl.mode == "hold"
        link.stream_hover(0.6)
        assert link.request_mode("offboard") == MAV.MAV_RESULT_ACCEPTED
        assert sitl.mode == "offboard"
        assert link.command(MAV.MAV_CMD_COMPONENT_ARM_DISARM, 0) == MAV.MAV_RESULT_DENIED  # in the air
        with pytest.raises(LinkError, match="on the ground"):
            link.disarm()
        assert sitl.armed
        telemetry = link.read_telemetry()
        assert telemetry.armed and np.allclose(telemetry.position, sitl.position, atol=0.1)
        # a pause in the stream: the vehicle's own failsafe takes over, and the link says so
        link.arm()  # already armed and in offboard: nothing to do
        time.sleep(0.8)
        assert sitl.mode == "hold" and sitl.armed and link.read_telemetry().mode == "hold"
        with pytest.raises(LinkError, match="left offboard"):
            link.send_action(link.hover_action)
    finally:
        link.close()
    assert [e.kind for e in sitl.events].count("rejected") >= 3


# ---- flights --------------------------------------------------------------------------------
def _tiny_onnx_policy(tmp_path):
    path = tmp_path / "tiny.onnx"
    write_linear_policy(path)
    return OnnxPolicy(path)


def _command_policy():
    """A discrete-command policy (the nearest-command baseline) flown through its velocity loop on board: the
    MAVLink link gets the loop's ctbr action, as from any ctbr policy."""
    from entropilot.deploy.command import CommandPolicy
    from entropilot.envs.commands import NearestCommand
    from entropilot.envs.discrete import command_contract
    from entropilot.envs.settings import HoverDiscreteSettings

    settings = HoverDiscreteSettings()
    return CommandPolicy(NearestCommand(settings.velocity_levels), command_contract(settings), HZ)


@pytest.mark.parametrize("kind", ["pid", "onnx", "command"])
def test_a_policy_hovers_through_mavlink_then_lands_and_disarms(sitl, tmp_path, kind):
    link = link_to(sitl)
    policies = {"pid": pid_policy, "onnx": lambda: _tiny_onnx_policy(tmp_path), "command": _command_policy}
    policy = policies[kind]()
    target = (0.3, -0.2, 1.0) if kind == "onnx" else TARGET  # the tiny policy only controls altitude
    try:
        # wall-clock flight with the vehicle in this process: allow a loaded CI machine's scheduling hiccups
        log = Autopilot(policy, link, target, max_landing_s=8.0, max_telemetry_age_s=0.2).run(duration_s=3.0)
    finally:
        link.close()
    assert log.failsafes == [], log.summary()
    flying = np.array([s.position for s in log.steps if s.state is FlightState.FLYING])
    assert len(flying) >= 0.9 * 3.0 * HZ
    last_second = flying[-HZ:]
    assert np.linalg.norm(last_second - np.array(target), axis=1).max() < 0.15, last_second[-1]
    assert log.final_state is FlightState.DISARMED, log.summary()
    assert sitl.setpoints_received >= 3.0 * HZ
    assert not sitl.armed and sitl.position[2] <= sitl.vehicle.touchdown_height
    assert [e for e in sitl.events if e.kind == "crash"] == []
    assert ("mode", "offboard") in [
        (e.kind, e.detail.split(" -> ")[1].split()[0]) for e in sitl.events if e.kind == "mode"
    ]


def test_a_dry_run_never_arms_or_switches_the_vehicle(sitl):
    link = link_to(sitl)
    mode = sitl.mode
    try:
        log = Autopilot(pid_policy(), link, TARGET, dry_run=True, max_telemetry_age_s=0.2).run(duration_s=1.0)
    finally:
        link.close()
    assert not sitl.armed and sitl.mode == mode and sitl.setpoints_received == 0
    assert [e for e in sitl.events if e.kind in ("mode", "armed", "rejected")] == [], [str(e) for e in sitl.events]
    shadowed = [s for s in log.steps if s.state is FlightState.FLYING]
    assert len(shadowed) >= 0.9 * HZ and all(s.command == "none" and np.isfinite(s.action).all() for s in shadowed)


def test_when_the_policy_side_dies_the_vehicle_holds_then_lands_and_disarms_only_on_the_ground(sitl):
    link = link_to(sitl)
    pid = CascadedPID("cf2x", "ctbr", HZ)
    link.arm()
    assert sitl.mode == "offboard" and sitl.armed
    previous = np.array(link.hover_action, dtype=np.float64)
    start = time.monotonic()
    for k in range(2 * HZ):  # fly the PID for 2 s on the wall clock
        telemetry = link.read_telemetry()
        assert telemetry is not None and telemetry.mode == "offboard"
        previous = pid(observation_from_telemetry(telemetry, TARGET, previous)).astype(np.float64)
        link.send_action(previous)
        link.clock.sleep_until(start + (k + 1) / HZ)
    link.close()  # the policy side is gone: no setpoints, no heartbeats
    died = sitl.now()
    deadline = time.monotonic() + 12.0
    while sitl.armed and time.monotonic() < deadline:
        time.sleep(0.05)
    events = [e for e in sitl.events if e.time >= died - 0.05]
    kinds = [(e.kind, e.detail) for e in events]
    assert not sitl.armed, [str(e) for e in sitl.events]
    failsafe = next(e for e in events if e.kind == "failsafe")
    hold = next(e for e in events if e.kind == "mode" and e.detail.startswith("offboard -> hold"))
    land = next(e for e in events if e.kind == "mode" and e.detail.startswith("hold -> land"))
    disarm = next(e for e in events if e.kind == "disarmed")
    assert 0.3 <= failsafe.time - died <= 1.0, kinds  # setpoint_timeout_s = 0.5 after the last setpoint
    assert failsafe.time <= hold.time < land.time < disarm.time, kinds
    assert land.time - hold.time >= sitl.failsafe_hold_s - 0.05
    assert abs(hold.position[2] - TARGET[2]) < 0.2 and abs(land.position[2] - TARGET[2]) < 0.2  # held its altitude
    assert disarm.position[2] <= sitl.vehicle.touchdown_height  # disarmed only on the ground
    assert [e for e in sitl.events if e.kind in ("crash", "rejected")] == []
    held = [p for t, p in sitl.trajectory if hold.time <= t <= land.time]
    assert np.ptp(np.array(held), axis=0).max() < 0.2  # it held still


# ---- the commands, as separate processes: kill the policy's process mid-flight ------------------------------
@pytest.mark.integration
def test_the_sitl_command_fails_safe_when_the_fly_command_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading

    policy = tmp_path / "tiny.onnx"
    write_linear_policy(policy)
    port = free_udp_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "entropilot.cli"]
    vehicle = subprocess.Popen(
        [*cli, "sitl", "--port", str(port), "--start", "0,0,0.8", "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(vehicle.stdout.readline, "")), daemon=True)
    reader.start()
    flyer = None

    def wait_for(words: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((line for line in list(lines) if words in line), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no {words!r} from the SITL in {timeout} s:\n" + "".join(lines))

    try:
        wait_for("SITL on udpin:", 20)
        flyer = subprocess.Popen(
            [
                *cli,
                "fly",
                str(policy),
                "--link",
                "mavlink",
                "--connect",
                f"udpout:127.0.0.1:{port}",
                "--target",
                "0,0,1",
                "--duration",
                "20",
                "--force",  # the linear policy has no readiness report; this test is about the failsafes
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        wait_for("-> offboard", 20)
        time.sleep(1.5)
        flyer.send_signal(signal.SIGKILL)  # the policy's process dies mid-flight, without a word
        flyer.wait(5)
        disarmed = wait_for("disarmed", 15)
    finally:
        for process in (flyer, vehicle):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT if process is vehicle else signal.SIGKILL)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
    text = "".join(lines)
    after = text[text.index("-> offboard") :]
    order = [after.index(words) for words in ("failsafe", "offboard -> hold", "hold -> land", "disarmed")]
    assert order == sorted(order), text
    assert "refused" not in after and "crash" not in text, text
    z = float(disarmed.rsplit("z=", 1)[1].split()[0])
    assert z <= 0.1, disarmed  # disarmed on the ground
    hold = next(line for line in lines if "offboard -> hold" in line)
    assert abs(float(hold.rsplit("z=", 1)[1].split()[0]) - 1.0) < 0.2, hold  # it was hovering at the target
