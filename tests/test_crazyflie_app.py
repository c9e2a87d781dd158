"""The Crazyflie out-of-tree controller app (entropilot/deploy/firmware/crazyflie), compiled on the host against
stand-ins of the firmware's types (tests/data/crazyflie_host): the observation it builds from the firmware's state
estimate is the envs', its ctbr action is what entropilot's ground link makes the firmware do, it runs the policy at
the trained rate and hands control back on anything non-finite. With CRAZYFLIE_FIRMWARE pointing at a
crazyflie-firmware checkout it also compiles against the firmware's own headers with the firmware's own flags."""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import needs_cc, sealed_policy_file
from onnx import helper

from entropilot.deploy.c_export import generate_c
from entropilot.deploy.c_toolchain import find_host_compiler
from entropilot.deploy.contract import INPUT_NAME, OUTPUT_NAME
from entropilot.deploy.firmware import CRAZYFLIE_APP
from entropilot.deploy.links.base import ctbr_hover_action
from entropilot.deploy.links.crazyflie import rotation_from_stabilizer, setpoint_from_action
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.envs import HOVER_ID, OBSERVATION_NAMES
from entropilot.envs.pid import CascadedPID
from entropilot.vehicle.frames import euler_from_rotation, quaternion_from_rotation, rotation_from_quaternion

pytestmark = needs_cc

HOST = Path(__file__).parent / "data" / "crazyflie_host"
N = len(OBSERVATION_NAMES)
STOCK, RATES, MOTORS = 0, 1, 2  # entropilotDecision_t
MODE_DISABLE, MODE_ABS, MODE_VELOCITY = 0, 1, 2  # stab_mode_t
CONTROL_MODE_FORCE = 2  # control_mode_t controlModeForce
MAX_BODY_RATE = 6.0
# The Crazyflie firmware's own C flags for its sources (tools/kbuild/Makefile.kbuild KBUILD_CFLAGS, the Makefile's
# ARCH_CFLAGS for a release build), less the target options: the app must build warning-free under them.
FIRMWARE_WARNINGS = ("-Wall", "-Wmissing-braces", "-Wdouble-promotion", "-std=gnu11", "-Os", "-Werror")
ARM_TARGET = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-fno-math-errno")


def _policy_file(path: Path, action_mode: str) -> None:
    """A small nonlinear policy (MatMul, Add, Tanh, Clip) whose actions move with every observation entry."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "W"], ["wx"]),
        helper.make_node("Add", ["wx", "b"], ["y"]),
        helper.make_node("Tanh", ["y"], ["t"]),
        helper.make_node("Clip", ["t", "lo", "hi"], [OUTPUT_NAME]),
    ]
    constants = {
        "W": (rng.standard_normal((N, 4)) * 0.3).astype(np.float32),
        "b": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "lo": np.float32(-1.0),
        "hi": np.float32(1.0),
    }
    sealed_policy_file(path, nodes, constants, action_mode=action_mode)


def _build(folder: Path, action_mode: str):
    _policy_file(folder / "policy.onnx", action_mode)
    generate_c(folder / "policy.onnx").write(folder)
    sources = [HOST / "host_driver.c", CRAZYFLIE_APP / "src" / "entropilot_app.c", folder / "policy.c"]
    library = folder / "libapp.so"
    includes = ["-I", str(CRAZYFLIE_APP / "src"), "-I", str(folder), "-I", str(HOST)]
    command = [find_host_compiler(), *FIRMWARE_WARNINGS, "-Wextra", "-fPIC", "-shared", *includes]
    done = subprocess.run([*command, *map(str, sources), "-o", str(library)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(library))
    floats = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    ints = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    counters = np.ctypeslib.ndpointer(np.uint32, flags="C_CONTIGUOUS")
    lib.host_observation.argtypes = [floats, floats, floats, ctypes.c_float, floats]
    lib.host_rate_setpoint.argtypes = [floats, ints, floats]
    lib.host_motor_forces.argtypes = [floats, floats]
    lib.host_app_init.argtypes = [ctypes.c_ubyte, ctypes.c_float]
    lib.host_app_enable.argtypes = [ctypes.c_ubyte]
    lib.host_app_tick.argtypes = [ctypes.c_int, floats, floats]
    lib.host_app_read.argtypes = [counters, floats, floats]
    return lib, OnnxPolicy(folder / "policy.onnx")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("cf-ctbr"), "ctbr")


def _f32(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def _legacy_attitude(q: np.ndarray) -> tuple[float, float, float]:
    """state->attitude as the firmware's Kalman filter writes it from its quaternion (kalman_core.c,
    kalmanCoreExternalizeState: ZYX Euler angles in degrees, pitch negated for the legacy CF2 body frame)."""
    roll, pitch, yaw = euler_from_rotation(rotation_from_quaternion(q))
    return math.degrees(roll), -math.degrees(pitch), math.degrees(yaw)


def _firmware_state(observation: np.ndarray, target: np.ndarray) -> np.ndarray:
    """An env observation as the firmware's state estimate: position, velocity (m, m/s), quaternion, gyro (deg/s)."""
    position = observation[0:3].astype(np.float64) + target
    rotation = observation[3:12].astype(np.float64).reshape(3, 3)
    return _f32([*position, *observation[12:15], *quaternion_from_rotation(rotation), *np.degrees(observation[15:18])])


def _hover_flight(steps: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Observations of a PID hover flight from a tilted, moving start (every group of the observation varies)."""
    env = gym.make(HOVER_ID)
    pid = CascadedPID.for_env(env)
    obs, _ = env.reset(seed=4)
    observations = []
    for _ in range(steps):
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(pid(obs))
        if terminated or truncated:
            obs, _ = env.reset(seed=5)
    target = np.asarray(env.unwrapped.settings.target, dtype=np.float64)
    env.close()
    return np.stack(observations).astype(np.float32), target


# ---- the observation ----------------------------------------------------------------------------
def test_the_observation_from_the_firmware_state_is_the_envs(app):
    lib, _ = app
    observations, target = _hover_flight()
    assert np.ptp(observations[:, 3:18], axis=0).min() > 1e-3  # attitude, velocity and rates all move
    for observation in observations:
        built = np.zeros(N, dtype=np.float32)
        state = _firmware_state(observation, target)
        lib.host_observation(state, _f32(target), _f32(observation[18:22]), 0.0, built)
        assert np.abs(built - observation).max() <= 1e-6, np.abs(built - observation).max()


def test_the_rotation_agrees_with_the_legacy_euler_angles_and_the_ground_link(app):
    # The app reads the estimator's quaternion; the ground link reads stabilizer.roll/pitch/yaw with the legacy
    # pitch sign. Both must give the same body-to-world rotation for the same estimate.
    lib, _ = app
    rng = np.random.default_rng(11)
    for _ in range(200):
        q = rng.standard_normal(4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        roll, pitch, yaw = _legacy_attitude(q)
        state = _f32([0, 0, 0, 0, 0, 0, *q, 0, 0, 0])
        built = np.zeros(N, dtype=np.float32)
        lib.host_observation(state, _f32([0, 0, 0]), _f32([0, 0, 0, 0]), 0.0, built)
        assert np.abs(built[3:12] - rotation_from_stabilizer(roll, pitch, yaw).reshape(9)).max() <= 2e-6


def test_position_errors_are_clamped_to_the_trained_box(app):
    lib, _ = app
    state = _f32([3.0, -0.2, -4.0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    built = np.zeros(N, dtype=np.float32)
    lib.host_observation(state, _f32([0.0, 0.0, 1.0]), _f32([0, 0, 0, 0]), 0.5, built)
    assert built[:3].tolist() == pytest.approx([0.5, -0.2, -0.5])


# ---- the action ---------------------------------------------------------------------------------
def test_a_ctbr_action_is_what_the_ground_link_makes_the_firmware_do(app):
    lib, _ = app
    rng = np.random.default_rng(2)
    actions = np.concatenate([rng.uniform(-1, 1, (300, 4)), [[-1, 0, 0, 0], [1, 1, -1, 1], [-0.98, 0, 0, 0]]])
    for action in _f32(actions):
        modes, out = np.zeros(6, dtype=np.int32), np.zeros(4, dtype=np.float32)
        lib.host_rate_setpoint(action, modes, out)
        # The ground link's setpoint, as cflib packs it (Commander.send_setpoint: roll, -pitch, yawrate, thrust) and
        # the firmware decodes it in rate mode (crtp_commander_rpyt.c): rates as sent, yaw negated, thrust bounded.
        roll, pitch, yawrate, thrust = setpoint_from_action(action, MAX_BODY_RATE)
        wire_roll, wire_pitch, wire_yaw = roll, -pitch, yawrate
        expected_thrust = 0.0 if thrust < 1000 else min(thrust, 60000)
        assert modes.tolist() == [MODE_DISABLE] * 3 + [MODE_VELOCITY] * 3
        assert out[:3] == pytest.approx([wire_roll, wire_pitch, -wire_yaw], rel=1e-6, abs=1e-4)
        assert abs(out[3] - expected_thrust) <= 1.0  # float32 rounding of the same uint16 conversion


def test_a_motors_action_sets_each_motors_share_of_full_thrust(app):
    lib, _ = app
    forces = np.zeros(4, dtype=np.float32)
    mode = lib.host_motor_forces(_f32([-1.0, -0.5, 0.5, 1.0]), forces)
    assert mode == CONTROL_MODE_FORCE and forces.tolist() == [0.0, 0.25, 0.75, 1.0]


# ---- the controller's steps ---------------------------------------------------------------------
def _tick(lib, position_setpoint: bool, state: np.ndarray, target=(0.0, 0.0, 1.0)) -> int:
    return lib.host_app_tick(int(position_setpoint), _f32(target), state)


def _read(lib):
    counters, observation, action = np.zeros(4, np.uint32), np.zeros(N, np.float32), np.zeros(4, np.float32)
    lib.host_app_read(counters, observation, action)
    engaged, enable, steps, faults = counters.tolist()
    return {"engaged": engaged, "enable": enable, "steps": steps, "faults": faults}, observation, action


HOVER_STATE = _f32([0.1, -0.2, 0.9, 0.05, 0.0, -0.1, 1, 0, 0, 0, 3.0, -2.0, 1.0])


def test_the_policy_runs_at_its_control_rate_and_its_actions_are_the_policys(app):
    lib, policy = app
    lib.host_app_init(1, 0.5)
    steps, previous = [], np.array(ctbr_hover_action(), dtype=np.float32)
    for tick in range(1000):
        assert _tick(lib, True, HOVER_STATE) == RATES
        counters, observation, action = _read(lib)
        if counters["steps"] > len(steps):
            steps.append(tick)
            assert observation[18:22] == pytest.approx(previous)  # the previous action, hover at first
            assert np.abs(action - policy(observation)).max() <= 1e-5  # generated C == onnxruntime
            previous = action.copy()
    assert steps[0] == 0 and len(steps) == 48  # from the first tick, 48 times in 1000 ticks (48 Hz at 1 kHz)
    assert set(np.diff(steps).tolist()) == {20, 21}


def test_control_goes_back_to_the_stock_controller(app):
    lib, _ = app
    lib.host_app_init(0, 0.5)
    assert _tick(lib, True, HOVER_STATE) == STOCK  # not enabled
    lib.host_app_enable(1)
    assert _tick(lib, False, HOVER_STATE) == STOCK  # a manual setpoint: not the policy's to fly
    assert _read(lib)[0]["engaged"] == 0
    assert _tick(lib, True, HOVER_STATE) == RATES and _read(lib)[0]["engaged"] == 1
    assert _tick(lib, False, HOVER_STATE) == STOCK and _read(lib)[0]["engaged"] == 0

    bad = HOVER_STATE.copy()
    bad[11] = np.nan  # a gyro axis
    assert _tick(lib, True, bad) == STOCK  # the first tick of an engagement runs the policy: caught at once
    assert _read(lib)[0] == {"engaged": 0, "enable": 0, "steps": 0, "faults": 1}
    assert all(_tick(lib, True, HOVER_STATE) == STOCK for _ in range(100))  # stays with the stock controller
    lib.host_app_enable(1)  # re-armed by hand (the parameter)
    assert _tick(lib, True, HOVER_STATE) == RATES
    counters, observation, _ = _read(lib)
    assert counters["steps"] == 1 and observation[18:22] == pytest.approx(ctbr_hover_action())


@pytest.mark.integration  # a second build
def test_a_motors_policy_drives_the_motors(tmp_path):
    lib, policy = _build(tmp_path, "motors")
    lib.host_app_init(1, 0.5)
    assert _tick(lib, True, HOVER_STATE) == MOTORS
    _, observation, action = _read(lib)
    assert observation[18:22] == pytest.approx([ctbr_hover_action()[0]] * 4)  # the motors' hover action
    assert np.abs(action - policy(observation)).max() <= 1e-5


# ---- the real firmware ---------------------------------------------------------------------------
@pytest.mark.integration  # four builds
def test_the_app_compiles_against_the_firmware_headers_with_its_flags(tmp_path):
    firmware = os.environ.get("CRAZYFLIE_FIRMWARE")
    if not firmware:
        pytest.skip("set CRAZYFLIE_FIRMWARE to a crazyflie-firmware checkout to compile against its headers")
    root = Path(firmware)
    _policy_file(tmp_path / "policy.onnx", "ctbr")
    generate_c(tmp_path / "policy.onnx").write(tmp_path)
    interface = [
        "src/modules/interface",
        "src/modules/interface/controller",
        "src/hal/interface",
        "src/utils/interface",
        "src/utils/interface/lighthouse",
        "src/config",
    ]
    includes = [f"-I{root / d}" for d in interface] + [f"-I{CRAZYFLIE_APP / 'src'}", f"-I{tmp_path}"]
    cross = shutil.which("arm-none-eabi-gcc")
    compiler, target = (cross, ARM_TARGET) if cross else (find_host_compiler(), ())
    sources = [CRAZYFLIE_APP / "src" / f for f in ("entropilot_app.c", "entropilot_controller.c")]
    for source in [*sources, tmp_path / "policy.c", HOST / "host_driver.c"]:
        out = tmp_path / (source.stem + ".o")
        command = [compiler, *target, *FIRMWARE_WARNINGS, "-DCRAZYFLIE_FW", *includes, "-c", str(source)]
        command += ["-o", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{source.name}:\n{done.stderr}"


@pytest.mark.integration  # the whole firmware: minutes
def test_the_app_builds_into_a_firmware_image(tmp_path):
    firmware = os.environ.get("CRAZYFLIE_FIRMWARE")
    if not firmware or not (Path(firmware) / "vendor" / "FreeRTOS" / "tasks.c").is_file():
        pytest.skip("set CRAZYFLIE_FIRMWARE to a crazyflie-firmware checkout with its submodules to build the image")
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None:
        pytest.skip("needs make and arm-none-eabi-gcc")
    app = tmp_path / "app"
    shutil.copytree(CRAZYFLIE_APP, app)
    _policy_file(tmp_path / "policy.onnx", "ctbr")
    generate_c(tmp_path / "policy.onnx").write(app / "src" / "policy")
    done = subprocess.run(
        ["make", "-j2", f"CRAZYFLIE_BASE={firmware}"], cwd=app, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (app / "build" / "cf2.bin").stat().st_size > 100_000
    symbols = subprocess.run(["arm-none-eabi-nm", str(app / "build" / "cf2.elf")], capture_output=True, text=True)
    assert {"controllerOutOfTree", "entropilot_policy"} <= {line.split()[-1] for line in symbols.stdout.splitlines()}
    assert "CONFIG_CONTROLLER_OOT=y" in (app / "build" / ".config").read_text()
