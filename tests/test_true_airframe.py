"""The vehicle that differs from the nominal one: ``true_airframe`` changes what flies, never what the action mapping
and the PID assume; max thrust belongs to the motors; ``action_delay_steps`` holds actions back."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from entropilot.envs import HOVER_ID, make_env
from entropilot.envs.pid import CascadedPID
from entropilot.envs.settings import DroneSettings, HoverSettings, TrueAirframe
from entropilot.envs.simulator import DroneSimulator
from entropilot.vehicle.airframe import CRAZYFLIE_2X, GRAVITY

LEVEL = (0.0, 0.0, 0.0, 1.0)


def pid_hover(seed: int = 1, **env_kwargs) -> tuple[np.ndarray, dict]:
    """One hover episode flown by the nominal PID: its integrator at the end and the last step's info."""
    env = make_env(HOVER_ID, **env_kwargs)
    try:
        pid = CascadedPID.for_env(env)
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(pid(obs))
            done = terminated or truncated
        return pid.integral.copy(), info
    finally:
        env.close()


def test_a_heavier_true_vehicle_makes_the_pid_find_more_thrust_a_heavier_nominal_one_does_not():
    nominal_integral, nominal_info = pid_hover()
    heavy_integral, heavy_info = pid_hover(true_airframe={"mass": 1.2})
    known_integral, known_info = pid_hover(airframe=CRAZYFLIE_2X.replace(mass=CRAZYFLIE_2X.mass * 1.2))
    # The PID's feed-forward is m_nominal * g; 20 % more true mass must come from the integrator (ki_z = 1.5,
    # clipped at 1 m s: it saturates and the rest is a steady offset below the target).
    assert abs(nominal_integral[2]) < 0.2 and nominal_info["is_success"]
    assert heavy_integral[2] < -0.9
    # A changed nominal airframe is one the PID knows: nothing left for the integrator to find.
    assert abs(known_integral[2] - nominal_integral[2]) < 0.02 and known_info["is_success"]


def test_a_weaker_true_thrust_coefficient_also_shows_in_the_integrator():
    integral, _ = pid_hover(true_airframe={"kf": 0.85})
    assert integral[2] < -0.8


def test_max_thrust_is_a_property_of_the_motors_not_of_the_mass():
    heavier = CRAZYFLIE_2X.replace(mass=CRAZYFLIE_2X.mass * 1.2)
    assert heavier.max_thrust_per_motor == CRAZYFLIE_2X.max_thrust_per_motor
    assert heavier.max_rpm == CRAZYFLIE_2X.max_rpm
    np.testing.assert_allclose(heavier.thrust_to_weight, CRAZYFLIE_2X.thrust_to_weight / 1.2)
    np.testing.assert_allclose(CRAZYFLIE_2X.thrust_to_weight, 2.25, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot lift it"):
        CRAZYFLIE_2X.replace(mass=CRAZYFLIE_2X.mass * 2.3)


@pytest.mark.parametrize(
    ("true_airframe", "thrust_factor", "mass_factor"),
    [({}, 1.0, 1.0), ({"kf": 0.85}, 0.85, 1.0), ({"mass": 1.2}, 1.0, 1.2), ({"max_rpm": 0.9}, 0.81, 1.0)],
)
def test_full_thrust_accelerates_with_the_true_motors_and_mass(true_airframe, thrust_factor, mass_factor):
    settings = DroneSettings(action_mode="motors", drag=False, ground_effect=False, true_airframe=true_airframe)
    sim = DroneSimulator(settings)
    try:
        sim.place(np.random.default_rng(0), [[0.0, 0.0, 1.0]], [LEVEL], np.zeros((1, 3)), np.zeros((1, 3)))
        sim.rotors.reset(settings.vehicle_airframe.max_rpm)
        for _ in range(6):
            sim.step(np.ones((1, 4)), None)
        assert sim.rpm.max() <= settings.vehicle_airframe.max_rpm * (1 + 1e-12)
        t = 6 / settings.control_hz
        expected = (CRAZYFLIE_2X.thrust_to_weight * thrust_factor / mass_factor - 1.0) * GRAVITY * t
        np.testing.assert_allclose(sim.velocity[0, 2], expected, rtol=1e-9)
        # what the action means did not change: the nominal hover action, the nominal mapping
        np.testing.assert_allclose(sim.hover_action(), 2.0 / CRAZYFLIE_2X.thrust_to_weight - 1.0)
    finally:
        sim.close()


def test_the_true_airframe_is_what_randomization_varies_around():
    settings = HoverSettings(true_airframe={"mass": 1.2}, randomization={"mass": 0.05})
    sim = DroneSimulator(settings)
    try:
        rng = np.random.default_rng(0)
        masses = []
        for _ in range(50):
            sim.randomize(rng)
            masses.append(sim.true_airframes[0].mass)
        assert 0.027 * 1.2 * 0.95 <= min(masses) and max(masses) <= 0.027 * 1.2 * 1.05
        assert sim.airframe == CRAZYFLIE_2X  # the nominal one stays
    finally:
        sim.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"true_airframe": {"mass": 0.0}}, "true_airframe.mass=0.0 is invalid"),
        ({"true_airframe": {"payload": 1.2}}, r"unknown key\(s\) \['payload'\]"),
        ({"true_airframe": {"mass": 2.5}}, "cannot lift it"),
        ({"action_delay_steps": -1}, "action_delay_steps=-1 is invalid"),
        ({"action_delay_steps": 1.5}, "action_delay_steps=1.5 is invalid"),
        ({"randomization": {"action_delay_steps": 11}}, r"randomization.action_delay_steps=11 is invalid"),
    ],
)
def test_bad_options_name_themselves(options, message):
    with pytest.raises(ValueError, match=message):
        HoverSettings(**options)


def test_true_airframe_factors_of_one_are_the_nominal_airframe():
    assert TrueAirframe().of(CRAZYFLIE_2X) is CRAZYFLIE_2X
    assert HoverSettings().vehicle_airframe is CRAZYFLIE_2X


def _rollout(actions, seed=3, **options) -> tuple[np.ndarray, np.ndarray]:
    env = gym.make(HOVER_ID, **options)
    try:
        obs, _ = env.reset(seed=seed)
        observations, positions = [obs], [env.unwrapped.sim.position[0].copy()]
        for action in actions:
            obs, *_ = env.step(action)
            observations.append(obs)
            positions.append(env.unwrapped.sim.position[0].copy())
        return np.array(observations), np.array(positions)
    finally:
        env.close()


@pytest.mark.parametrize("delay", [1, 2])
def test_an_action_delay_plays_the_same_flight_late(delay):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.4, 0.2, (20, 4)).astype(np.float32)
    hover = np.array([2.0 / CRAZYFLIE_2X.thrust_to_weight - 1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    late_obs, late = _rollout(actions, action_delay_steps=delay)
    # Without a delay, the same flight: hover for `delay` periods (what the rotors get at first), then the actions.
    _, on_time = _rollout(np.concatenate([np.repeat(hover[None], delay, axis=0), actions]))
    np.testing.assert_array_equal(late, on_time[: len(late)])
    # The observation's previous action is the one commanded last (as the autopilot feeds it), not the delayed one.
    np.testing.assert_array_equal(late_obs[1:, 18:22], np.clip(actions, -1, 1))


def test_randomized_delays_are_drawn_per_episode_within_the_range():
    env = gym.make(HOVER_ID, action_delay_steps=1, randomization={"action_delay_steps": 2})
    try:
        delays = set()
        for seed in range(30):
            env.reset(seed=seed)
            delays.add(env.unwrapped.sim.action_delays[0])
            assert env.unwrapped.sim.physics[0].action_delay == env.unwrapped.sim.action_delays[0]
        assert delays == {1, 2, 3}
    finally:
        env.close()
