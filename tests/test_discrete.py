"""The discrete-command task (entropilot/HoverDiscrete-v0) and its flight: command indices, the velocity loop, the
nearest-command baseline, and the autopilot flying a command policy tick for tick as the env steps it."""

import gymnasium as gym
import numpy as np
import pytest

from entropilot.deploy.autopilot import Autopilot
from entropilot.deploy.command import CommandPolicy
from entropilot.deploy.links.sim import SimLink
from entropilot.deploy.safety import Fault, FlightState
from entropilot.envs import HOVER_DISCRETE_ID, HOVER_ID, make_env, validate_env_kwargs, vehicle_env
from entropilot.envs.commands import NearestCommand
from entropilot.envs.discrete import command_contract
from entropilot.vehicle.commands import command_meaning, velocity_command

RANDOMIZED = {"randomization": {"mass": 0.05, "inertia": 0.05, "kf": 0.05, "km": 0.05, "motor_time_constant": 0.1}}


def command_policy(policy, env) -> CommandPolicy:
    """``policy`` (obs -> indices) on board, with the command contract export would write for ``env``."""
    settings = env.unwrapped.settings
    return CommandPolicy(policy, command_contract(settings), settings.control_hz)


def fly_env(env, policy, seed):
    """One episode of ``policy`` (obs -> indices) in the env: (last info, true positions after every step)."""
    obs, _ = env.reset(seed=seed)
    positions, done = [env.unwrapped.sim.position[0].copy()], False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        positions.append(env.unwrapped.sim.position[0].copy())
        done = terminated or truncated
    return info, np.array(positions)


def test_indices_name_velocity_commands():
    levels = (-0.5, -0.1, 0.0, 0.1, 0.5)
    assert velocity_command(levels, np.array([0, 2, 4])) == [-0.5, 0.0, 0.5]
    assert velocity_command(levels, [1.0, 3.0, 2.0]) == [-0.1, 0.1, 0.0]  # integral floats are indices too
    for bad, fragment in (
        ([0, 1], r"shape \(3,\)"),
        ([0, 1, 5], r"in \[0, 4\], got \[0, 1, 5\]"),
        ([0.5, 1, 1], "integer"),
    ):
        with pytest.raises(ValueError, match=fragment):
            velocity_command(levels, bad)
    assert (
        command_meaning(levels)[2]
        == "velocity command along world z (z up), m/s: 0 -> -0.5, 1 -> -0.1, 2 -> +0, 3 -> +0.1, 4 -> +0.5"
    )


def test_the_env_steps_the_simulator_through_the_velocity_loop():
    env = gym.make(HOVER_DISCRETE_ID, start_low=[0, 0, 1], start_high=[0, 0, 1], start_tilt_deg=0, start_velocity=0)
    env.reset(seed=0)
    for _ in range(96):  # 2 s of +0.5 m/s along x
        _, reward, terminated, _, info = env.step(np.array([4, 2, 2]))
    assert not terminated and info["velocity_command"] == [0.5, 0.0, 0.0] and 0 < reward <= 1
    velocity = env.unwrapped.sim.velocity[0]
    assert velocity[0] == pytest.approx(0.5, abs=0.05) and np.abs(velocity[1:]).max() < 0.05
    with pytest.raises(ValueError, match=r"in \[0, 4\]"):
        env.step(np.array([5, 2, 2]))


def test_command_repeat_holds_each_command_for_that_many_periods():
    one, four = gym.make(HOVER_DISCRETE_ID), gym.make(HOVER_DISCRETE_ID, command_repeat=4)
    one.reset(seed=1)
    four.reset(seed=1)
    rewards = [one.step(np.array([3, 1, 4]))[1] for _ in range(4)]
    _, reward, *_ = four.step(np.array([3, 1, 4]))
    assert reward == pytest.approx(sum(rewards))
    np.testing.assert_array_equal(one.unwrapped.sim.position, four.unwrapped.sim.position)
    steps = 0
    four.reset(seed=1)
    while not any(four.step(np.array([2, 2, 2]))[2:4]):
        steps += 1
    assert steps + 1 == 6 * 48 // 4  # a 6 s episode is 72 decisions


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"velocity_levels": [0.5, -0.5]}, "strictly increasing"),
        ({"velocity_levels": [-4.0, 0.0, 4.0]}, r"within \+-3.0 m/s"),
        ({"velocity_levels": [0.0]}, "2 to 15"),
        ({"command_repeat": 0}, r"command_repeat=0 .* \[1, 288\]"),
    ],
)
def test_bad_command_options_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_env_kwargs(HOVER_DISCRETE_ID, kwargs)
    with pytest.raises(ValueError, match="velocity_levels"):
        validate_env_kwargs(HOVER_ID, {"velocity_levels": [-0.5, 0.5]})  # hover has no commands


def test_the_nearest_command_baseline_needs_two_speeds_a_side():
    """What the default table is for: five levels hold every held-out start within 0.1 m; three limit-cycle."""
    five = make_env(HOVER_DISCRETE_ID, **RANDOMIZED)
    three = make_env(HOVER_DISCRETE_ID, velocity_levels=[-0.3, 0.0, 0.3], **RANDOMIZED)
    results = {
        name: [fly_env(env, NearestCommand.for_env(env), seed)[0] for seed in range(1_000_000, 1_000_006)]
        for name, env in (("five", five), ("three", three))
    }
    assert all(info["is_success"] and info["distance"] < 0.06 for info in results["five"])
    assert sum(info["is_success"] for info in results["three"]) <= 2


def test_vehicle_env_is_hover_without_the_command_options():
    kwargs = {"velocity_levels": [-1.0, 0.0, 1.0], "command_repeat": 2, "episode_seconds": 3.0, **RANDOMIZED}
    assert vehicle_env(HOVER_DISCRETE_ID, kwargs) == (HOVER_ID, {"episode_seconds": 3.0, **RANDOMIZED})
    assert vehicle_env(HOVER_ID, {"episode_seconds": 3.0}) == (HOVER_ID, {"episode_seconds": 3.0})
    with pytest.raises(ValueError, match="takes command indices"):
        SimLink(make_env(HOVER_DISCRETE_ID))


@pytest.mark.parametrize("repeat", [1, 4])
def test_the_autopilot_flies_a_command_policy_as_the_env_steps_it(repeat):
    """The onboard command layer (CommandPolicy over SimLink's hover drone) and the env's are the same code: with the
    rate limit off, the flight is the env's episode to the bit."""
    kwargs = {"command_repeat": repeat, **RANDOMIZED}
    env = make_env(HOVER_DISCRETE_ID, **kwargs)
    info, positions = fly_env(env, NearestCommand.for_env(env), seed=3)
    vehicle_id, vehicle_kwargs = vehicle_env(HOVER_DISCRETE_ID, kwargs)
    link = SimLink(make_env(vehicle_id, **vehicle_kwargs), seed=3)
    link.connect()
    policy = command_policy(NearestCommand.for_env(env), env)
    log = Autopilot(policy, link, link.target, max_action_rate=None).run(duration_s=6.0)
    ticks = env.unwrapped.settings.max_episode_steps
    np.testing.assert_array_equal(np.array(link.trajectory[: ticks + 1])[::repeat], positions)
    assert info["is_success"] and link.flight_result(log).success and not log.failsafes
    assert log.final_state is FlightState.DISARMED
    # With the default rate limit (what `entropilot fly` uses) it still holds the point.
    link.connect()
    log = Autopilot(command_policy(NearestCommand.for_env(env), env), link, link.target).run(duration_s=6.0)
    assert link.flight_result(log).success


def test_an_index_outside_the_table_is_a_policy_error_not_a_command():
    env = make_env(HOVER_DISCRETE_ID)
    link = SimLink(make_env(HOVER_ID), seed=0)
    link.connect()
    ticks = [0]

    def policy(obs):
        ticks[0] += 1
        return np.array([2, 2, 2]) if ticks[0] < 24 else np.array([2, 7, 2])

    log = Autopilot(command_policy(policy, env), link, link.target).run(duration_s=2.0)
    hold = log.failsafes[0]
    assert (
        hold.fault is Fault.POLICY_ERROR
        and hold.state is FlightState.HOLD
        and "in [0, 4], got [2, 7, 2]" in hold.reason
    )
    assert link.commands["action"] == 23  # the bad index was never sent as anything
    assert log.final_state is FlightState.DISARMED
