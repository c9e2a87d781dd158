"""Physics checks of the drone simulator with real PyBullet: hover, free fall, torque signs, rotor lag,
thrust limits, Crazyflie constants, ground effect, drag, downwash, randomization, bad settings."""

from __future__ import annotations

import contextlib
import math

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest

from entropilot.envs import HOVER_ID
from entropilot.envs.physics import (
    ROTOR_SPIN,
    Aerodynamics,
    Mixer,
    RateController,
    RotorModel,
    drone_state,
    rotor_positions,
)
from entropilot.envs.settings import DroneSettings, HoverSettings
from entropilot.envs.simulator import DroneSimulator
from entropilot.vehicle.airframe import CRAZYFLIE_2X, GRAVITY

LEVEL = (0.0, 0.0, 0.0, 1.0)  # quaternion (x, y, z, w)
CW = ROTOR_SPIN < 0  # rotors spinning clockwise seen from above


@contextlib.contextmanager
def simulator(num_drones: int = 1, downwash: bool = False, **settings):
    sim = DroneSimulator(DroneSettings(**settings), num_drones=num_drones, downwash=downwash)
    try:
        yield sim
    finally:
        sim.close()


def place(sim, positions, velocities=None, body_rates=None, quaternions=None):
    n = sim.num_drones
    sim.place(
        np.random.default_rng(0),
        np.asarray(positions, dtype=float),
        quaternions or [LEVEL] * n,
        np.zeros((n, 3)) if velocities is None else np.asarray(velocities, dtype=float),
        np.zeros((n, 3)) if body_rates is None else np.asarray(body_rates, dtype=float),
    )


def fly(sim, actions, steps: int) -> np.ndarray:
    """Step with constant actions; returns the (steps + 1, N, 3) positions."""
    actions = np.broadcast_to(np.asarray(actions, dtype=float), (sim.num_drones, 4))
    positions = [sim.position.copy()]
    for _ in range(steps):
        sim.step(actions, None)
        positions.append(sim.position.copy())
    return np.array(positions)


def motors_action(sim, delta_per_rotor) -> np.ndarray:
    """The motors-mode hover action plus a per-rotor offset."""
    return (sim.hover_action() + np.asarray(delta_per_rotor, dtype=float))[None, :]


# ---- equilibrium and free fall ------------------------------------------------------------------------


@pytest.mark.parametrize("action_mode", ["motors", "ctbr"])
def test_hover_action_holds_altitude_for_two_seconds(action_mode):
    with simulator(action_mode=action_mode) as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        path = fly(sim, sim.hover_action(), steps=2 * sim.settings.control_hz)
        drift = np.abs(path[:, 0] - [0.0, 0.0, 1.0]).max(axis=0)
        assert drift[2] < 0.01, f"altitude drift {drift[2]:.4f} m"
        assert drift[:2].max() < 1e-6  # symmetric thrust: no sideways motion
        assert sim.tilt_cosine()[0] > 1 - 1e-9
        np.testing.assert_allclose(sim.rpm, CRAZYFLIE_2X.hover_rpm, rtol=1e-9)


def test_free_fall_at_g_with_rotors_off():
    with simulator(action_mode="motors") as sim:
        place(sim, [[0.0, 0.0, 2.0]])
        sim.rotors.reset(0.0)  # no lag left to decay: zero thrust (and so zero rotor drag) from the start
        steps = 24  # 0.5 s, a 1.2 m drop: well before the ground
        path = fly(sim, [-1.0] * 4, steps)
        t = np.arange(steps + 1) / sim.settings.control_hz
        drop = 2.0 - path[:, 0, 2]
        np.testing.assert_allclose(drop[-1], 0.5 * GRAVITY * t[-1] ** 2, rtol=0.01)
        # Bullet's semi-implicit Euler at physics_hz: drop after n substeps = g dt^2 n (n + 1) / 2 exactly.
        n = np.arange(steps + 1) * sim.settings.substeps
        dt = 1.0 / sim.settings.physics_hz
        np.testing.assert_allclose(drop, GRAVITY * dt**2 * n * (n + 1) / 2, atol=1e-9)
        np.testing.assert_allclose(sim.velocity[0], [0.0, 0.0, -GRAVITY * t[-1]], atol=1e-9)


# ---- torque signs ------------------------------------------------------------------------------------


def test_rotor_layout_is_x_forward_y_left():
    xy = rotor_positions(CRAZYFLIE_2X)
    # 0 front-right, 1 back-right, 2 back-left, 3 front-left
    assert (np.sign(xy) == [[1, -1], [-1, -1], [-1, 1], [1, 1]]).all()
    np.testing.assert_allclose(np.hypot(xy[:, 0], xy[:, 1]), CRAZYFLIE_2X.arm)
    # CCW, CW, CCW, CW as on the Crazyflie 2.x (M1 front-right CCW); diagonal pairs share a spin direction
    assert list(CW) == [False, True, False, True]


def test_speeding_up_clockwise_rotors_yaws_counter_clockwise():
    """A rotor spinning clockwise seen from above has its angular momentum along -z; the motor drives it
    with a -z torque and the body takes the reaction, +z. So speeding up the CW rotors (ROTOR_SPIN = -1)
    and slowing the CCW ones (same total thrust) turns the body counter-clockwise seen from above: a
    positive yaw rate about body z (up), i.e. the nose swings from x toward y (left)."""
    with simulator(action_mode="motors") as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        fly(sim, motors_action(sim, np.where(CW, 0.1, -0.1)), steps=10)
        rates = sim.body_rates[0]
        assert rates[2] > 0.5
        assert np.abs(rates[:2]).max() < 1e-6 * rates[2]  # the CW pair is diagonal: no roll or pitch torque
        assert sim.rotation[0, 1, 0] > 0.0  # body x now points a little toward world +y

        # and the opposite: faster CCW rotors yaw clockwise
        place(sim, [[0.0, 0.0, 1.0]])
        fly(sim, motors_action(sim, np.where(CW, -0.1, 0.1)), steps=10)
        assert sim.body_rates[0, 2] < -0.5


def test_more_thrust_on_the_left_rolls_right_and_on_the_front_pitches_up():
    xy = rotor_positions(CRAZYFLIE_2X)
    with simulator(action_mode="motors") as sim:
        # left rotors (y > 0) up, right ones down: positive roll about x (forward), the right side drops
        place(sim, [[0.0, 0.0, 1.0]])
        fly(sim, motors_action(sim, np.where(xy[:, 1] > 0, 0.05, -0.05)), steps=5)
        wx, wy, wz = sim.body_rates[0]
        assert wx > 0.5 and abs(wy) < 1e-6 * wx and abs(wz) < 1e-6 * wx
        assert sim.rotation[0, 2, 1] > 0.0  # body y (left) now points up: rolled right

        # front rotors (x > 0) up: negative pitch about y (left), the nose rises
        place(sim, [[0.0, 0.0, 1.0]])
        fly(sim, motors_action(sim, np.where(xy[:, 0] > 0, 0.05, -0.05)), steps=5)
        wx, wy, wz = sim.body_rates[0]
        assert wy < -0.5 and abs(wx) < 1e-6 * -wy and abs(wz) < 1e-6 * -wy
        assert sim.rotation[0, 2, 0] > 0.0  # body x (nose) now points up


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ctbr_body_rate_commands_turn_the_body_the_commanded_way(axis):
    with simulator(action_mode="ctbr") as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        action = sim.hover_action().astype(float)
        action[1 + axis] = 0.5  # +3 rad/s about body axis
        fly(sim, action, steps=12)
        rates = sim.body_rates[0]
        assert rates[axis] > 1.5
        assert np.abs(np.delete(rates, axis)).max() < 0.05 * rates[axis]


def test_drone_state_rotation_is_pybullets_to_the_bit_and_body_rates_are_r_transpose_w():
    rng = np.random.default_rng(7)
    for q, w in zip(rng.normal(size=(20000, 4)).tolist(), rng.normal(size=(20000, 3)).tolist()):
        state = drone_state((0.0, 0.0, 1.0), tuple(q), (0.0, 0.0, 0.0), tuple(w), [0.0] * 4)
        assert state.rotation == p.getMatrixFromQuaternion(q)
    rotation = np.array(state.rotation).reshape(3, 3)
    np.testing.assert_allclose(state.body_rates, rotation.T @ w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)


# ---- rotors and thrust -------------------------------------------------------------------------------


def test_rotor_lag_reaches_63_percent_at_one_time_constant():
    tau, control_hz, substeps = 0.05, 100, 10  # tau = 5 control periods; 1 kHz physics
    rotors = RotorModel(1, substeps, 1.0 / (control_hz * substeps))
    rotors.set_time_constants(np.array([tau]))
    rotors.reset(0.0)
    command = np.array([[20000.0, 10000.0, 0.0, 5000.0]])
    for _ in range(int(round(tau * control_hz))):
        rotors.advance(command)
    np.testing.assert_allclose(
        rotors.rpm / np.where(command > 0, command, 1.0), np.where(command > 0, 1 - math.exp(-1), 0.0)
    )


def test_rotor_lag_mean_rpm_squared_equals_the_substep_average():
    substeps, dt, tau = 7, 1.0 / 700, 0.03
    rotors = RotorModel(2, substeps, dt)
    rotors.set_time_constants(np.array([tau, 2 * tau]))
    rotors.rpm = [[1000.0, 15000.0, 20000.0, 0.0], [21000.0, 3000.0, 14000.0, 14000.0]]
    start, command = rotors.rpm, np.array([[20000.0, 0.0, 14000.0, 21000.0], [0.0, 21000.0, 14000.0, 100.0]])
    mean_sq = rotors.advance(command)
    a = np.exp(-dt / np.array([tau, 2 * tau]))[:, None]
    k = np.arange(1, substeps + 1)[:, None, None]
    per_substep = command + (start - command) * a**k  # exact solution at the end of substep k
    np.testing.assert_allclose(mean_sq, (per_substep**2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rotors.rpm, per_substep[-1], rtol=1e-12)


def test_rotor_lag_in_the_simulator_uses_the_settings_time_constant():
    with simulator(action_mode="motors", physics_hz=1000, control_hz=100, motor_time_constant=0.05) as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        sim.rotors.reset(0.0)
        fly(sim, [1.0] * 4, steps=5)
        np.testing.assert_allclose(sim.rpm, CRAZYFLIE_2X.max_rpm * (1 - math.exp(-1)), rtol=1e-9)


def test_crazyflie_hover_and_max_rpm():
    assert round(CRAZYFLIE_2X.hover_rpm) == 14468
    assert round(CRAZYFLIE_2X.max_rpm) == 21703
    np.testing.assert_allclose(4 * CRAZYFLIE_2X.kf * CRAZYFLIE_2X.hover_rpm**2, CRAZYFLIE_2X.weight)
    with simulator(action_mode="motors") as sim:
        np.testing.assert_allclose(sim.rpm_command(sim.hover_action()[None, :]), CRAZYFLIE_2X.hover_rpm, rtol=1e-6)


@pytest.mark.parametrize("action_mode", ["motors", "ctbr"])
def test_thrust_limits(action_mode):
    af = CRAZYFLIE_2X
    with simulator(action_mode=action_mode) as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        full = [[1.0, 1.0, 1.0, 1.0]] if action_mode == "motors" else [[1.0, 0.0, 0.0, 0.0]]
        thrust = af.kf * sim.rpm_command(np.array(full)) ** 2
        np.testing.assert_allclose(thrust, af.max_thrust_per_motor, rtol=1e-12)
        np.testing.assert_allclose(thrust.sum(), af.thrust_to_weight * af.weight, rtol=1e-12)
        zero = [[-1.0, 0.0, 0.0, 0.0]] if action_mode == "ctbr" else [[-1.0] * 4]
        np.testing.assert_array_equal(sim.rpm_command(np.array(zero)), 0.0)
        # every action in the box maps inside [0, max] per rotor (ctbr saturates the mixer's output)
        corners = np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 4)).reshape(4, -1).T
        rpm = np.array([sim.rpm_command(c[None, :])[0] for c in corners])
        assert rpm.min() >= 0.0 and rpm.max() <= af.max_rpm * (1 + 1e-12)
        # out-of-range actions are clipped: what executes is recorded
        sim.step(np.array([[5.0, -5.0, 0.5, np.inf]]), None)
        np.testing.assert_array_equal(sim.last_action, [[1.0, -1.0, 0.5, 1.0]])


def test_full_thrust_accelerates_at_thrust_to_weight_minus_one_g():
    af = CRAZYFLIE_2X
    with simulator(action_mode="motors", drag=False, ground_effect=False) as sim:
        place(sim, [[0.0, 0.0, 1.0]])
        sim.rotors.reset(af.max_rpm)
        fly(sim, [1.0] * 4, steps=6)
        t = 6 / sim.settings.control_hz
        np.testing.assert_allclose(sim.velocity[0, 2], (af.thrust_to_weight - 1.0) * GRAVITY * t, rtol=1e-9)


def test_array_interfaces_match_the_per_drone_math():
    mixer, rates = Mixer(CRAZYFLIE_2X), RateController(CRAZYFLIE_2X)
    rng = np.random.default_rng(3)
    setpoint, measured = rng.uniform(-6, 6, (5, 3)), rng.uniform(-6, 6, (5, 3))
    torque = rates.torque(setpoint, measured)
    assert torque.shape == (5, 3)
    np.testing.assert_array_equal(torque[2], rates.drone_torque(*setpoint[2], *measured[2]))
    collective = rng.uniform(0, 1.0, 5)
    thrusts = mixer.rotor_thrusts(collective, torque * 1e-3)
    assert thrusts.shape == (5, 4) and thrusts.min() >= 0 and thrusts.max() <= mixer.max_thrust
    np.testing.assert_array_equal(thrusts[4], mixer.drone_rotor_thrusts(collective[4], *torque[4] * 1e-3))
    # unsaturated, the mixer inverts the allocation: thrusts give back the commanded collective and torque
    small = mixer.rotor_thrusts(np.array([0.26]), np.array([[1e-5, -2e-5, 1e-6]]))[0]
    xy = rotor_positions(CRAZYFLIE_2X)
    yaw = -ROTOR_SPIN * CRAZYFLIE_2X.km / CRAZYFLIE_2X.kf
    wrench = [small.sum(), small @ xy[:, 1], -small @ xy[:, 0], small @ yaw]
    np.testing.assert_allclose(wrench, [0.26, 1e-5, -2e-5, 1e-6], rtol=1e-9)


def test_mixer_caps_thrust_as_the_firmware_does_keeping_the_torque():
    mixer = Mixer(CRAZYFLIE_2X)
    top = mixer.max_thrust
    torque = (2e-4, -1e-4, 0.0)
    free = np.array(mixer.drone_rotor_thrusts(2.0 * top, *torque))  # room on every rotor: the allocation inverted
    full = np.array(mixer.drone_rotor_thrusts(4.0 * top, *torque))  # full collective: the highest rotor at its top
    assert free.max() < top and full.max() == pytest.approx(top, rel=1e-12)
    # every rotor gave up the same excess, so the differences between rotors (the torque) are unchanged
    np.testing.assert_allclose(np.diff(full), np.diff(free), rtol=1e-9)
    assert full.sum() < 4.0 * top
    # the excess comes off the top; a rotor pushed below 0 stops at 0
    low = np.array(mixer.drone_rotor_thrusts(0.0, *torque))
    assert low.min() == 0.0 and low.max() > 0.0


# ---- aerodynamics -------------------------------------------------------------------------------------


def test_ground_effect_raises_thrust_near_the_ground_and_vanishes_high_up():
    aero = Aerodynamics(CRAZYFLIE_2X, drag=True, ground_effect=True, downwash=False)
    level = np.eye(3)[None]
    gain = [aero.ground_effect_gain(np.array([[0.0, 0.0, z]]), level)[0, 0] for z in (0.05, 0.1, 0.2, 0.5, 1.0, 3.0)]
    assert gain[0] > gain[1] > 1.03 and np.all(np.diff(gain[1:]) < 0)
    assert gain[-1] - 1.0 < 1e-4
    below = aero.ground_effect_min_height * 0.5
    assert aero.ground_effect_gain(np.array([[0.0, 0.0, below]]), level)[0, 0] == gain[0]  # clipped, not diverging
    upside_down = np.diag([1.0, -1.0, -1.0])[None]
    assert aero.ground_effect_gain(np.array([[0.0, 0.0, 0.1]]), upside_down)[0].tolist() == [1.0] * 4
    off = Aerodynamics(CRAZYFLIE_2X, drag=True, ground_effect=False, downwash=False)
    assert off.ground_effect_gain(np.array([[0.0, 0.0, 0.1]]), level)[0].tolist() == [1.0] * 4

    # end to end: at 8 cm the hover thrust lifts the drone only with ground effect on
    climbs = {}
    for on in (True, False):
        with simulator(action_mode="motors", ground_effect=on) as sim:
            place(sim, [[0.0, 0.0, 0.08]])
            fly(sim, sim.hover_action(), steps=3)
            climbs[on] = sim.velocity[0, 2]
    assert climbs[True] > 0.01 and abs(climbs[False]) < 1e-9


def test_drag_opposes_motion_relative_to_the_air():
    aero = Aerodynamics(CRAZYFLIE_2X, drag=True, ground_effect=False, downwash=False)
    rng = np.random.default_rng(0)
    rpm = np.full((1, 4), CRAZYFLIE_2X.hover_rpm)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.linalg.det(q))
        velocity = rng.normal(size=(1, 3))
        force_world = rotation @ aero.body_force(rotation[None], velocity, np.zeros((1, 3)), rpm, np.zeros((1, 3)))[0]
        assert force_world @ velocity[0] < 0
        # moving with the wind: no drag
        np.testing.assert_allclose(
            aero.body_force(rotation[None], velocity, velocity, rpm, np.zeros((1, 3))), 0.0, atol=1e-18
        )

    # end to end: a drone coasting at 2 m/s slows down only with drag on
    speeds = {}
    for on in (True, False):
        with simulator(action_mode="motors", drag=on) as sim:
            place(sim, [[0.0, 0.0, 1.0]], velocities=[[2.0, 0.0, 0.0]])
            fly(sim, sim.hover_action(), steps=24)
            speeds[on] = sim.velocity[0, 0]
    assert speeds[False] == pytest.approx(2.0, abs=1e-9)
    assert 0.5 < speeds[True] < 1.99


def test_downwash_pushes_down_the_drone_below_and_not_one_to_the_side():
    aero = Aerodynamics(CRAZYFLIE_2X, drag=True, ground_effect=True, downwash=True)
    above, below, side = [0.0, 0.0, 1.0], [0.0, 0.0, 0.6], [1.5, 0.0, 0.6]
    force = aero.downwash_forces(np.array([above, below, side]))
    assert force[1] < -0.01 and force[0] == 0.0 and abs(force[2]) < 1e-12

    finals = {}
    for on in (True, False):
        with simulator(3, downwash=on, action_mode="motors") as sim:
            place(sim, [above, below, side])
            fly(sim, sim.hover_action(), steps=4)
            finals[on] = sim.position.copy()
    assert finals[True][1, 2] < finals[False][1, 2] - 1e-3  # the one below sinks
    np.testing.assert_allclose(finals[True][[0, 2]], finals[False][[0, 2]], atol=1e-12)  # the others do not notice


def test_n_drones_fly_exactly_as_n_single_drones():
    """One code path: two far-apart drones in one world step exactly as two one-drone worlds."""
    rng = np.random.default_rng(1)
    actions = rng.uniform(-0.3, 0.3, (30, 2, 4)) + [-0.1, 0, 0, 0]
    starts, velocities = np.array([[0.0, 0.0, 1.0], [2.0, 1.0, 1.2]]), np.array([[0.1, 0.0, 0.0], [0.0, -0.2, 0.1]])
    with (
        simulator(2, action_mode="ctbr") as pair,
        simulator(action_mode="ctbr") as a,
        simulator(action_mode="ctbr") as b,
    ):
        place(pair, starts, velocities)
        place(a, starts[:1], velocities[:1])
        place(b, starts[1:], velocities[1:])
        for step in actions:
            pair.step(step, None)
            a.step(step[:1], None)
            b.step(step[1:], None)
        np.testing.assert_array_equal(pair.state, np.concatenate([a.state, b.state]))


# ---- randomization and errors -------------------------------------------------------------------------


def test_same_seed_same_randomized_parameters_and_trajectory():
    spreads = {"mass": 0.2, "inertia": 0.2, "kf": 0.1, "km": 0.1, "motor_time_constant": 0.3}

    def run(seed):
        with simulator(
            2, action_mode="ctbr", randomization=spreads, wind={"mean": [0.3, 0, 0], "gust_std": 0.2}
        ) as sim:
            rng = np.random.default_rng(seed)
            sim.randomize(rng)
            place(sim, [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
            path = [sim.state.copy()]
            for _ in range(20):
                sim.step(rng.uniform(-0.2, 0.2, (2, 4)), rng)
                path.append(sim.state.copy())
            return sim.true_airframes, np.array(path)

    (frames_a, path_a), (frames_b, path_b), (frames_c, _) = run(4), run(4), run(5)
    assert frames_a == frames_b and frames_a != frames_c
    np.testing.assert_array_equal(path_a, path_b)
    for frame in frames_a + frames_c:
        assert abs(frame.mass / CRAZYFLIE_2X.mass - 1) <= 0.2
        assert abs(frame.kf / CRAZYFLIE_2X.kf - 1) <= 0.1
    assert frames_a[0] != frames_a[1]  # each drone draws its own


def test_bad_settings_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match=r"mass.*-0\.01"):
        CRAZYFLIE_2X.replace(mass=-0.01)
    with pytest.raises(ValueError, match=r"control_hz=50"):
        HoverSettings(physics_hz=240, control_hz=50)
    with pytest.raises(ValueError, match=r"action_mode='attitude'"):
        HoverSettings(action_mode="attitude")
    env = gym.make(HOVER_ID)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        env.step(np.zeros(3, dtype=np.float32))
    env.close()
    with simulator(2) as sim:
        with pytest.raises(ValueError, match=r"\(2, 4\).*\(1, 4\)"):
            sim.step(np.zeros((1, 4)), None)
