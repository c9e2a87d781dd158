"""The Gymnasium/RLlib contract of every entropilot env, with real PyBullet: spaces, seeding, episodes, errors."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from entropilot.envs import (
    COMMAND_ENVS,
    HOVER_ID,
    OBSERVATION_NAMES,
    OBSERVATION_SIZE,
    SINGLE_AGENT_IDS,
    SWARM_ID,
    WAYPOINT_ID,
    action_space,
    make_env,
    validate_env_kwargs,
)
from entropilot.envs.pid import CascadedPID


@pytest.mark.parametrize("env_id", SINGLE_AGENT_IDS)
@pytest.mark.parametrize("action_mode", ["ctbr", "motors"])
def test_check_env_passes(env_id, action_mode):
    if env_id in COMMAND_ENVS and action_mode == "motors":
        with pytest.raises(ValueError, match="action_mode='motors' is invalid: must be 'ctbr'"):
            gym.make(env_id, action_mode=action_mode)  # its velocity loop commands thrust + body rates
        return
    env = gym.make(env_id, action_mode=action_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unbounded-Box warning is expected for physical quantities
        check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (OBSERVATION_SIZE,) == (len(OBSERVATION_NAMES),)
    assert env.action_space == action_space(env_id, {"action_mode": action_mode})  # what config validation reads
    assert env.action_space.shape == ((4,) if env_id not in COMMAND_ENVS else (3,))
    env.close()


def rollout(env, seed, steps=60):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    trajectory = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 4).astype(np.float32) - [0.1, 0, 0, 0])
        trajectory.append(np.append(obs, reward))
        if terminated or truncated:
            obs, _ = env.reset()
    return np.concatenate(trajectory)


def test_same_seed_same_trajectory_with_noise_wind_and_randomization():
    kwargs = dict(
        sensor_noise={"position": 0.01, "velocity": 0.02, "attitude": 0.01, "angular_velocity": 0.05},
        wind={"mean": [0.5, 0.0, 0.0], "gust_std": 0.3},
        randomization={"mass": 0.1, "inertia": 0.1, "kf": 0.05, "km": 0.05, "motor_time_constant": 0.3, "noise": 0.5},
    )
    a, b = gym.make(HOVER_ID, **kwargs), gym.make(HOVER_ID, **kwargs)
    np.testing.assert_array_equal(rollout(a, 7), rollout(b, 7))
    assert not np.array_equal(rollout(a, 7), rollout(b, 8))


def test_reset_moves_the_same_bodies_instead_of_reloading():
    env = gym.make(HOVER_ID)
    env.reset(seed=0)
    bodies = list(env.unwrapped.sim.world.bodies)
    for seed in range(5):
        env.reset(seed=seed)
    assert env.unwrapped.sim.world.bodies == bodies
    import pybullet as p

    assert p.getNumBodies(physicsClientId=env.unwrapped.sim.world.client) == 2  # ground + drone


@pytest.mark.parametrize("action_mode", ["ctbr", "motors"])
def test_pid_baseline_hovers_with_success(action_mode):
    env = gym.make(HOVER_ID, action_mode=action_mode, randomization={"mass": 0.05, "kf": 0.05})
    pid = CascadedPID.for_env(env)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        pid.reset()
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(pid(obs))
            done = terminated or truncated
        assert truncated and not terminated
        assert info["is_success"] is True
        assert info["distance"] < 0.1


@pytest.mark.parametrize("action_mode", ["ctbr", "motors"])
def test_pid_flies_a_batch_of_drones_as_it_flies_each_alone(action_mode):
    envs = [gym.make(HOVER_ID, action_mode=action_mode, start_tilt_deg=40.0) for _ in range(5)]
    batch_pid, alone = CascadedPID.for_env(envs[0]), [CascadedPID.for_env(env) for env in envs]
    obs = np.stack([env.reset(seed=seed)[0] for seed, env in enumerate(envs)])
    for _ in range(30):  # steep starts: the tilt limit and the clips are on the path
        actions = batch_pid(obs)
        assert actions.shape == (5, 4) and actions.dtype == np.float32
        np.testing.assert_array_equal(actions, np.stack([pid(o) for pid, o in zip(alone, obs)]))
        obs = np.stack([env.step(a)[0] for env, a in zip(envs, actions)])
    with pytest.raises(ValueError, match="reset"):
        batch_pid(obs[:3])
    batch_pid.reset()
    assert batch_pid(obs[:3]).shape == (3, 4)


def test_pid_tracks_waypoints_and_circle():
    for trajectory in ("waypoints", "circle"):
        env = gym.make(WAYPOINT_ID, trajectory=trajectory)
        pid = CascadedPID.for_env(env)
        obs, _ = env.reset(seed=3)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(pid(obs))
            done = terminated or truncated
        assert not terminated
        if trajectory == "waypoints":
            assert info["waypoint_index"] == len(env.unwrapped.settings.waypoints) - 1
            assert info["is_success"]
        else:
            # 0.39 m/s reference, no velocity feed-forward in the observation: the PID trails by ~1 s
            assert info["distance"] < 0.5


def test_hover_action_alone_does_not_succeed_from_offset_start():
    """Success must be earned: holding hover thrust from a start 0.5 m away never reaches the target."""
    env = gym.make(HOVER_ID, start_low=[0.5, 0.5, 1.5], start_high=[0.5, 0.5, 1.5], start_tilt_deg=0, start_velocity=0)
    env.reset(seed=0)
    hover = env.unwrapped.sim.hover_action()
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(hover)
        done = terminated or truncated
    assert info["is_success"] is False


@pytest.mark.parametrize(
    "action, reason",
    [
        (np.array([-1.0, 0, 0, 0]), "ground_impact"),  # rotors off: falls and hits the ground fast
        (np.array([-0.1, 1.0, 0, 0]), "tilt"),  # full roll rate: flips past the tilt limit
        (np.array([1.0, 0, 0, 0]), "left_arena"),  # full thrust: climbs out of the arena
    ],
)
def test_crash_terminates(action, reason):
    env = gym.make(HOVER_ID, arena_half_size=1.5)
    env.reset(seed=0)
    for _ in range(env.unwrapped.settings.max_episode_steps):
        _, reward, terminated, truncated, info = env.step(action.astype(np.float32))
        if terminated or truncated:
            break
    assert terminated and not truncated
    assert info["crash"] == reason
    assert info["is_success"] is False
    assert reward < 0  # the crash penalty outweighs the step reward


def test_every_fall_with_rotors_off_is_a_ground_impact():
    # Ground contact can stop a body inside one control period: from ~0.6 m (seeds 13 and 16) the speed read after
    # the step is ~0 although the drone hit at ~3 m/s. The impact counts the speed at either end of the period.
    env = gym.make(HOVER_ID)
    off = np.array([-1.0, 0, 0, 0], dtype=np.float32)
    reasons = []
    for seed in range(40):
        env.reset(seed=seed)
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, info = env.step(off)
        reasons.append(info.get("crash"))
    assert reasons == ["ground_impact"] * 40


def test_truncates_at_episode_length():
    env = gym.make(HOVER_ID, episode_seconds=1.0, success_seconds=0.5, control_hz=48)
    obs, _ = env.reset(seed=0)
    pid = CascadedPID.for_env(env)
    for step in range(1, 49):
        obs, _, terminated, truncated, _ = env.step(pid(obs))
        assert not terminated
        assert truncated == (step == 48)


def test_render_rgb_array():
    env = gym.make(HOVER_ID, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    assert frame.std() > 5  # a real picture, not a blank image


@pytest.mark.parametrize("control_hz", [48, 30])
def test_a_flights_gif_renders_the_frames_it_keeps_and_plays_in_real_time(tmp_path, control_hz):
    from PIL import Image

    from entropilot.envs.evaluate import run_episodes
    from entropilot.envs.plots import save_gif

    env = gym.make(HOVER_ID, render_mode="rgb_array", control_hz=control_hz, episode_seconds=0.5, success_seconds=0.25)
    (result,) = run_episodes(env, CascadedPID.for_env(env), 1, seed=0, record_frames=True)
    stride = 2 if control_hz == 48 else 1  # a GIF keeps at most 24 frames per second
    assert len(result.frames) == 1 + result.length // stride
    save_gif(result.frames, str(tmp_path / "flight.gif"), control_hz)
    with Image.open(tmp_path / "flight.gif") as gif:
        durations = [gif.seek(k) or gif.info["duration"] for k in range(gif.n_frames)]
    assert gif.n_frames == len(result.frames)
    # each frame shows for its control steps' time, to the GIF format's 1/100 s
    assert all(abs(d / 1000 - stride / control_hz) < 0.01 for d in durations)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"action_mode": "thrust"}, "action_mode='thrust'"),
        ({"control_hz": 50}, "control_hz=50"),
        ({"airframe": "x500"}, "x500"),
        ({"motor_time_constant": -0.1}, "motor_time_constant=-0.1"),
        ({"randomization": {"mass": 1.5}}, "randomization.mass=1.5"),
        ({"randomization": {"masss": 0.1}}, "masss"),
        ({"bogus": 1}, "bogus"),
        ({"start_low": [0, 0, 2], "start_high": [1, 1, 1]}, "start_low"),
        ({"replay_crash_starts": 1.5}, "replay_crash_starts=1.5"),
        ({"observation_frame": "body"}, "observation_frame='body'"),
    ],
)
def test_bad_options_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        validate_env_kwargs(HOVER_ID, kwargs)
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        gym.make(HOVER_ID, **kwargs)


def test_negative_mass_airframe_is_rejected():
    from entropilot.vehicle.airframe import CRAZYFLIE_2X

    with pytest.raises(ValueError, match=r"mass must be a finite number > 0, got -0.027"):
        CRAZYFLIE_2X.replace(mass=-0.027)


def test_bad_actions_name_the_problem():
    env = gym.make(HOVER_ID)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got shape \(3,\)"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0], dtype=np.float32))
    with pytest.raises(ValueError, match="unknown env id"):
        make_env("entropilot/Nope-v0")


def test_swarm_is_an_rllib_multi_agent_env():
    from ray.rllib.env.multi_agent_env import MultiAgentEnv

    env = make_env(SWARM_ID, num_drones=3)
    assert all(space == action_space(SWARM_ID, {"num_drones": 3}) for space in env.action_spaces.values())
    assert isinstance(env, MultiAgentEnv)
    obs, infos = env.reset(seed=0)
    assert sorted(obs) == env.possible_agents == ["drone_0", "drone_1", "drone_2"]
    assert all(o.shape == (OBSERVATION_SIZE,) for o in obs.values())
    pids = {a: CascadedPID() for a in env.possible_agents}
    done = False
    while not done:
        obs, rewards, terminateds, truncateds, infos = env.step({a: pids[a](o) for a, o in obs.items()})
        done = terminateds["__all__"] or truncateds["__all__"]
    assert truncateds["__all__"] and all(info["is_success"] for info in infos.values())


def test_swarm_collision_terminates_both_drones():
    env = make_env(SWARM_ID, num_drones=3, spacing=0.3)
    env.reset(seed=0)
    # drone_0 and drone_1 fly at each other at 1 m/s; drone_2 hovers well away
    env.sim.place(
        env.rng,
        [[-0.2, 0, 1], [0.2, 0, 1], [1.0, 0, 1]],
        [[0, 0, 0, 1]] * 3,
        [[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 0]],
        np.zeros((3, 3)),
    )
    hover = env.sim.hover_action()
    for _ in range(20):
        obs, rewards, terminateds, truncateds, infos = env.step({a: hover for a in env.agents})
        if terminateds.get("drone_0"):
            break
    assert terminateds["drone_0"] and terminateds["drone_1"] and not terminateds["drone_2"]
    assert infos["drone_0"]["crash"] == infos["drone_1"]["crash"] == "collision"
    assert env.agents == ["drone_2"] and not terminateds["__all__"]
    with pytest.raises(ValueError, match="not an active agent"):
        env.step({"drone_0": hover})


def test_swarm_downwash_pushes_only_the_drone_below():
    def height_after(downwash, upper_x):
        env = make_env(SWARM_ID, num_drones=2, spacing=0.3, downwash=downwash, ground_effect=False)
        env.reset(seed=0)
        env.sim.place(env.rng, [[0, 0, 0.8], [upper_x, 0, 1.6]], [[0, 0, 0, 1]] * 2, np.zeros((2, 3)), np.zeros((2, 3)))
        hover = env.sim.hover_action()
        for _ in range(12):
            env.step({"drone_0": hover, "drone_1": hover})
        return env.sim.position[:, 2]

    below_with, below_without = height_after(True, 0.0), height_after(False, 0.0)
    assert below_with[0] < below_without[0] - 0.05  # in the wake: pushed down
    assert below_with[1] == pytest.approx(below_without[1], abs=1e-6)  # the upper drone feels nothing
    beside_with, beside_without = height_after(True, 0.5), height_after(False, 0.5)
    assert beside_with[0] == pytest.approx(beside_without[0], abs=1e-3)  # 0.5 m to the side: outside the wake


def test_the_crash_penalty_is_an_option():
    rewards = {}
    for penalty in (2.0, 10.0):
        env = gym.make(HOVER_ID, crash_penalty=penalty)
        env.reset(seed=0)
        terminated = False
        while not terminated:  # no thrust: it falls and hits the ground
            _, reward, terminated, _, info = env.step(np.array([-1.0, 0.0, 0.0, 0.0], dtype=np.float32))
        rewards[penalty] = reward
        assert info["crash"] == "ground_impact"
        env.close()
    assert rewards[10.0] == pytest.approx(rewards[2.0] - 8.0, abs=1e-12) and rewards[2.0] < -1.0


def fall(env, seed=None) -> tuple[np.ndarray, str]:
    """Reset (with ``seed``), then cut the thrust to the episode's end: (start position, crash reason or None)."""
    obs, _ = env.reset(seed=seed)
    start = np.array(env.unwrapped.sim.drones[0].position)
    ended = False
    while not ended:
        _, _, terminated, truncated, info = env.step(np.array([-1.0, 0.0, 0.0, 0.0], dtype=np.float32))
        ended = terminated or truncated
    return start, info.get("crash")


def test_crashed_starts_are_replayed_in_training_only_where_asked():
    replaying = gym.make(HOVER_ID, replay_crash_starts=1.0)
    crashed_start, reason = fall(replaying, seed=0)
    assert reason == "ground_impact"
    for _ in range(3):  # every later reset starts where the crashed episode started, whatever it draws
        start, _ = fall(replaying)
        np.testing.assert_array_equal(start, crashed_start)
    assert len(replaying.unwrapped.episode.rules.crash_starts) == 4
    plain = gym.make(HOVER_ID)  # off by default: starts come from the start box, in the same random stream as ever
    first, _ = fall(plain, seed=0)
    np.testing.assert_array_equal(first, crashed_start)
    assert not np.array_equal(fall(plain)[0], first) and plain.unwrapped.episode.rules.crash_starts == []
    with pytest.raises(ValueError, match="replay_crash_starts"):
        make_env(SWARM_ID, replay_crash_starts=0.5)


def test_training_only_options_stay_out_of_evaluation_and_flight():
    from entropilot.envs import flight_kwargs

    kwargs = {"replay_crash_starts": 0.3, "max_tilt_deg": 45.0}
    assert flight_kwargs(kwargs) == {"max_tilt_deg": 45.0} and kwargs["replay_crash_starts"] == 0.3


def test_an_export_flies_the_env_a_checkpoint_trained_on_without_its_training_only_options(tmp_path):
    import shutil

    from entropilot.deploy.export import checkpoint_info
    from entropilot.platform.train import CONFIG_FILE

    shutil.copy("configs/hover.yaml", tmp_path / CONFIG_FILE)  # replays crashed starts, in a 45-degree envelope
    env_kwargs = checkpoint_info(tmp_path).env_kwargs
    assert "replay_crash_starts" not in env_kwargs and env_kwargs["max_tilt_deg"] == 45.0


def test_randomized_wind_blows_from_any_direction_up_to_its_speed():
    env = gym.make(HOVER_ID, wind={"mean": [0.2, 0.0, 0.0]}, randomization={"wind_speed": 1.5})
    winds = []
    for seed in range(40):
        env.reset(seed=seed)
        winds.append(env.unwrapped.sim.air_velocity[0].copy())
        env.step(env.unwrapped.sim.hover_action())
        np.testing.assert_array_equal(env.unwrapped.sim.air_velocity[0], winds[-1])  # steady within the episode
    extra = np.array(winds) - [0.2, 0.0, 0.0]
    speed = np.linalg.norm(extra, axis=1)
    assert speed.max() <= 1.5 and speed.max() > 1.0 and (extra[:, 2] == 0).all()
    assert (extra[:, 0] < -0.3).any() and (extra[:, 1] > 0.3).any() and (extra[:, 1] < -0.3).any()
    env.close()
    still = gym.make(HOVER_ID, wind={"mean": [0.2, 0.0, 0.0]})
    still.reset(seed=0)
    np.testing.assert_array_equal(still.unwrapped.sim.air_velocity[0], [0.2, 0.0, 0.0])
    still.close()
