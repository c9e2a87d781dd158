"""The batched world (``DroneVectorEnv``: N drones, one PyBullet world) against the single env, with real PyBullet:
parity drone by drone through autoresets, Gymnasium's vector contract, seeding, drones that never touch, errors."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pybullet as p
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_match import check_environments_match
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from entropilot.envs import HOVER_ID, SWARM_ID, WAYPOINT_ID, HoverSettings, make_vector_env
from entropilot.envs.pid import CascadedPID
from entropilot.envs.pybullet_world import PyBulletWorld
from entropilot.envs.single_drone import HoverEnv
from entropilot.envs.vector import DroneVectorEnv

# Every random stream of an episode in use: domain randomization (airframe, action delay, extra wind), noise-level
# randomization, gusty wind, sensor noise, tilted starts and (waypoints) jittered waypoints; on a true airframe that
# differs from the nominal one.
HARD = dict(
    sensor_noise=dict(position=0.01, velocity=0.02, attitude=0.01, angular_velocity=0.05),
    randomization=dict(
        mass=0.1, inertia=0.1, kf=0.1, km=0.1, motor_time_constant=0.2, noise=0.3, action_delay_steps=1, wind_speed=0.25
    ),
    wind=dict(mean=(0.3, -0.2, 0.0), gust_std=0.4),
    start_tilt_deg=20.0,
    true_airframe=dict(mass=0.95),
)
WAYPOINT_HARD = {**HARD, "randomize_waypoints": 0.1}


def options(env_id: str) -> dict:
    return WAYPOINT_HARD if env_id == WAYPOINT_ID else HARD


@pytest.mark.parametrize(
    "env_id, num_envs, drones",
    [
        (HOVER_ID, 1, [0]),
        (HOVER_ID, 7, [0, 3, 6]),
        (HOVER_ID, 64, [0, 21, 63]),
        (WAYPOINT_ID, 7, [2, 5]),
        (WAYPOINT_ID, 64, [40]),
    ],
)
def test_drone_k_flies_as_the_single_env_seeded_seed_plus_k(env_id, num_envs, drones):
    """Drone k of an N-drone world and ``gym.make(env_id)`` reset with seed + k, given the same actions, agree over
    whole episodes and through autoresets: a PID flight that runs its full time (6 s hover, 12 s waypoints), then
    random actions with the rotors off that crash within a second, then the PID again, with domain randomization,
    gusts and sensor noise on; the other drones fly random actions and restart on their own.

    Measured (worst over these cases): positions 1.8e-13 m, rotation entries 4.5e-14, rewards 2.7e-13, observations
    (float32) 5.8e-11 (a rare last-bit rounding of a value near 0); terminated, truncated, crash and success exact.
    Drone 0 agrees to the bit everywhere. The rest comes from the frames: drone i's world x, y carry its frame's
    offset on the grid (8 m apart), which rounds them at that offset's precision (ulp(8 m) = 1.8e-15 m). Bullet's
    island solver changes nothing: drones sharing one frame agree to the bit (the next tests)."""
    kwargs = options(env_id)
    vec = make_vector_env(env_id, num_envs, **kwargs)
    singles = {k: gym.make(env_id, **kwargs) for k in drones}
    pids = {k: CascadedPID.for_env(singles[k]) for k in drones}
    seed, steps = 100, singles[drones[0]].unwrapped.settings.max_episode_steps
    obs, info = vec.reset(seed=seed)
    single_obs = {}
    for k in drones:
        single_obs[k], single_info = singles[k].reset(seed=seed + k)
        np.testing.assert_array_equal(obs[k], single_obs[k])
        assert info["distance"][k] == pytest.approx(single_info["distance"], abs=1e-9)
    rng = np.random.default_rng(0)
    worst = dict(position=0.0, rotation=0.0, reward=0.0, distance=0.0, observation=0.0)
    seen = {"full length": 0, "success": 0, "crash": 0, "autoreset": 0}
    restarting, none = np.zeros(num_envs, dtype=bool), np.zeros(num_envs, dtype=bool)
    for t in range(2 * steps + 100):
        pid_phase = t < steps + 10 or t >= steps + 60
        actions = rng.uniform(-1, 1, (num_envs, 4)).astype(np.float32)
        for k in drones:
            actions[k] = pids[k](single_obs[k]) if pid_phase else [-1.0, *actions[k, 1:]]
        obs, rewards, terminated, truncated, info = vec.step(actions)
        for k in drones:
            if restarting[k]:  # next-step autoreset: the single env resets where the vector env restarts drone k
                single_obs[k], single_info = singles[k].reset()
                pids[k].reset()
                seen["autoreset"] += 1
                single = (0.0, False, False, single_info)
            else:
                single_obs[k], *single = singles[k].step(actions[k])
            reward, single_terminated, single_truncated, single_info = single
            assert (terminated[k], truncated[k]) == (single_terminated, single_truncated), (t, k)
            for key in ("is_success", "crash"):
                assert info.get(f"_{key}", none)[k] == (key in single_info), (t, k, key)
                if key in single_info:
                    assert info[key][k] == single_info[key], (t, k, key)
            seen["full length"] += single_truncated
            seen["success"] += single_info.get("is_success", False)
            seen["crash"] += "crash" in single_info
            drone, single_drone = vec.sim.drones[k], singles[k].unwrapped.sim.drones[0]
            for name, ours, theirs in (
                ("position", drone.position, single_drone.position),
                ("rotation", drone.rotation, single_drone.rotation),
                ("observation", obs[k].tolist(), single_obs[k].tolist()),
                ("reward", [rewards[k]], [reward]),
                ("distance", [info["distance"][k]], [single_info["distance"]]),
            ):
                worst[name] = max(worst[name], *(abs(a - b) for a, b in zip(ours, theirs)))
        restarting = terminated | truncated
    assert worst["position"] < 1e-6 and worst["rotation"] < 1e-6 and worst["observation"] < 1e-6, worst
    assert worst["reward"] < 1e-9 and worst["distance"] < 1e-9, worst
    # what was compared: every drone's full-length episode, crash and restarts; successes
    assert seen["full length"] >= len(drones) and seen["crash"] >= len(drones), seen
    assert seen["autoreset"] >= 2 * len(drones) and seen["success"] >= 1, seen


@pytest.mark.parametrize("env_id", [HOVER_ID, WAYPOINT_ID])
def test_same_batches_as_gymnasiums_sync_vector_env_of_single_envs(env_id):
    """Observations, rewards, terminated, truncated and every info key with its mask and dtype, as
    ``SyncVectorEnv`` of N single envs gives them, through many autoresets."""
    vec = gym.make_vec(env_id, num_envs=6, vectorization_mode="vector_entry_point", **options(env_id))
    sync = gym.make_vec(env_id, num_envs=6, vectorization_mode="sync", **options(env_id))
    assert isinstance(vec, DroneVectorEnv) and isinstance(sync, gym.vector.SyncVectorEnv)
    (obs, info), (sync_obs, sync_info) = vec.reset(seed=3), sync.reset(seed=3)
    vec.action_space.seed(3)
    ends = 0
    for step in range(400):
        assert_same_batch((obs, info), (sync_obs, sync_info), step)
        actions = vec.action_space.sample()
        obs, rewards, terminated, truncated, info = vec.step(actions)
        sync_obs, sync_rewards, sync_terminated, sync_truncated, sync_info = sync.step(actions)
        assert rewards.dtype == sync_rewards.dtype == np.float64
        np.testing.assert_allclose(rewards, sync_rewards, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(terminated, sync_terminated)
        np.testing.assert_array_equal(truncated, sync_truncated)
        ends += terminated.sum() + truncated.sum()
    assert ends >= 20


def assert_same_batch(ours, theirs, step):
    (obs, info), (sync_obs, sync_info) = ours, theirs
    assert obs.dtype == sync_obs.dtype == np.float32 and obs.shape == sync_obs.shape
    # Drone 0 flies in the world's own frame: to the bit. The others fly in offset frames and agree to ~1e-13 m in
    # float64, which can round to the neighbouring float32 (seen once in ~30 unseeded runs: 7.45e-9 at step 312).
    np.testing.assert_array_equal(obs[0], sync_obs[0], err_msg=f"step {step}")
    np.testing.assert_array_max_ulp(obs, sync_obs, maxulp=1)
    assert info.keys() == sync_info.keys(), step
    for key, value in info.items():
        assert value.dtype == sync_info[key].dtype, key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, sync_info[key], rtol=0, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_array_equal(value, sync_info[key], err_msg=key)


def test_gymnasiums_environment_match_check_passes():
    """Gymnasium's own equivalence check (``check_environments_match``; Gymnasium 1.2 has no vector env checker)
    against ``SyncVectorEnv`` of one single env: spaces, reset and step data, infos."""
    vec = make_vector_env(HOVER_ID, 1, **HARD)
    sync = gym.make_vec(HOVER_ID, num_envs=1, vectorization_mode="sync", **HARD)
    check_environments_match(vec, sync, num_steps=300, seed=7, skip_render=True, info_comparison="equivalence")


def test_make_vec_builds_the_batched_world_with_gymnasiums_vector_contract():
    env = gym.make_vec(HOVER_ID, num_envs=5, vectorization_mode="vector_entry_point", action_mode="motors")
    assert isinstance(env, DroneVectorEnv) and env.num_envs == 5 and env.settings.action_mode == "motors"
    assert env.spec.id == HOVER_ID and env.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    single = gym.make(HOVER_ID)
    assert isinstance(single.unwrapped, HoverEnv)  # the single-env registration is intact
    assert env.single_observation_space == single.observation_space
    assert env.single_action_space == single.action_space
    assert env.observation_space == batch_space(single.observation_space, 5)
    assert env.action_space == batch_space(single.action_space, 5)
    obs, info = env.reset(seed=0)
    assert obs.shape == (5, 22) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
    assert rewards.shape == (5,) and rewards.dtype == np.float64
    assert terminated.dtype == truncated.dtype == np.bool_ and info["distance"].dtype == np.float64
    assert info["_distance"].all()
    assert isinstance(gym.make_vec(WAYPOINT_ID, num_envs=2), DroneVectorEnv)  # the default mode for our ids
    env.close()
    assert env.closed and env.sim.world.client is None


def test_seeding_follows_sync_vector_env():
    env = make_vector_env(HOVER_ID, 4, **HARD)
    first, _ = env.reset(seed=10)
    again, _ = env.reset(seed=[10, 11, 12, 13])
    np.testing.assert_array_equal(first, again)
    assert env.np_random_seed == (10, 11, 12, 13) and len(env.np_random) == 4
    for i in range(4):
        single, _ = gym.make(HOVER_ID, **HARD).reset(seed=10 + i)
        np.testing.assert_array_equal(first[i], single)
    unseeded, _ = env.reset()  # the streams go on, as a single env's does without a seed
    assert not np.array_equal(unseeded, first)
    with pytest.raises(ValueError, match="one per drone, num_envs=4, got 3"):
        env.reset(seed=[1, 2, 3])


def test_next_step_autoreset_ignores_the_action_and_restarts_only_that_drone():
    env = make_vector_env(HOVER_ID, 3)
    env.reset(seed=0)
    hover = np.tile(env.sim.hover_action(), (3, 1))
    fall = hover.copy()
    fall[1] = [-1.0, 0.0, 0.0, 0.0]  # rotors off: drone 1 hits the ground
    for _ in range(100):
        _, rewards, terminated, truncated, info = env.step(fall)
        if terminated[1]:
            break
    assert terminated.tolist() == [False, True, False] and info["crash"][1] == "ground_impact"
    assert info["_crash"].tolist() == [False, True, False] and rewards[1] < 0
    assert info["_is_success"].tolist() == [False, True, False] and not info["is_success"][1]
    single = gym.make(HOVER_ID)
    single.reset(seed=1)
    for _ in range(100):  # the single env seeded 1, through its crash and its next reset, as drone 1
        _, _, crashed, _, _ = single.step(fall[1])
        if crashed:
            break
    expected, expected_info = single.reset()
    before = env.sim.state.copy()
    weird = fall.copy()
    weird[1] = [1.0, -1.0, 1.0, -1.0]  # ignored: drone 1 restarts at this step
    obs, rewards, terminated, truncated, info = env.step(weird)
    assert rewards[1] == 0.0 and not terminated[1] and not truncated[1]
    np.testing.assert_allclose(obs[1], expected, atol=1e-6)
    assert info["distance"][1] == pytest.approx(expected_info["distance"], abs=1e-9)
    assert "crash" not in info and "is_success" not in info
    assert not np.array_equal(env.sim.state[[0, 2]], before[[0, 2]])  # the others flew on


def test_reset_mask_restarts_only_the_masked_drones():
    env = make_vector_env(HOVER_ID, 3)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(np.tile(env.sim.hover_action(), (3, 1)))
    mask = np.array([False, True, False])
    again, info = env.reset(seed=0, options={"reset_mask": mask})
    np.testing.assert_array_equal(again[[0, 2]], obs[[0, 2]])
    assert not np.array_equal(again[1], obs[1])
    assert info["_distance"].tolist() == [False, True, False] and info["distance"][0] == 0.0
    with pytest.raises(ValueError, match=r"reset_mask.*shape \(3,\)"):
        env.reset(options={"reset_mask": np.ones(4, dtype=bool)})


def test_drones_never_touch_one_another_even_at_the_same_spot():
    """In a world of independent drones (the filter alone, every drone in one frame), bodies that share a spot and
    fly into one another and into the ground meet only the ground: each moves to the bit as a body alone in a world."""
    s = HoverSettings()
    n = 4
    shared = PyBulletWorld(s.airframe, n, s.physics_hz, s.control_hz, drones_collide=False)
    alone = PyBulletWorld(s.airframe, 1, s.physics_hz, s.control_hz)
    for i in range(n):
        shared.place(i, (0.0, 0.0, 0.3), (0.0, 0.0, 0.0, 1.0), (0.0, 0.0, -1.0), (0.0, 0.0, 0.0))
    alone.place(0, (0.0, 0.0, 0.3), (0.0, 0.0, 0.0, 1.0), (0.0, 0.0, -1.0), (0.0, 0.0, 0.0))
    torque = [(1e-6, 0.0, 0.0)] * n
    ground_contacts = 0
    for step in range(150):
        up = (0.0, 0.0, s.airframe.weight * (1.3 if step % 40 < 10 else 0.5))
        bodies, lone = shared.step([up] * n, torque), alone.step([up], torque[:1])
        assert all(body == lone[0] for body in bodies), step
        for a, b in itertools.combinations(shared.bodies, 2):
            assert p.getContactPoints(a, b, physicsClientId=shared.client) == ()
        ground_contacts += bool(p.getContactPoints(shared.bodies[0], shared.ground, physicsClientId=shared.client))
    assert ground_contacts > 10  # they did reach the ground, together


def test_drones_started_at_one_spot_fly_as_one_single_env():
    """Every drone of the vector env seeded alike (the same start, the same point of its frame) and flown by the same
    PID flies as the one single env."""
    env, single = make_vector_env(HOVER_ID, 8, **HARD), gym.make(HOVER_ID, **HARD)
    obs, _ = env.reset(seed=[0] * 8)
    single_obs, _ = single.reset(seed=0)
    pid = CascadedPID.for_env(single)
    for _ in range(single.unwrapped.settings.max_episode_steps):
        action = pid(single_obs)
        obs, _, terminated, truncated, info = env.step(np.tile(action, (8, 1)))
        single_obs, _, _, _, single_info = single.step(action)
        np.testing.assert_allclose(obs, np.tile(single_obs, (8, 1)), rtol=0, atol=1e-6)
    assert truncated.all() and (info["is_success"] == single_info["is_success"]).all()


def test_render_gives_one_frame_per_drone():
    env = make_vector_env(HOVER_ID, 2, render_mode="rgb_array")
    env.reset(seed=0)
    frames = env.render()
    assert len(frames) == 2 and all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    assert all(f.std() > 5 for f in frames)  # a real picture: each camera finds its drone in its frame
    assert make_vector_env(HOVER_ID, 2).render() is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: make_vector_env(SWARM_ID, 4), "the swarm already holds N drones"),
        (lambda: make_vector_env("entropilot/Nope-v0", 4), "got env_id='entropilot/Nope-v0'"),
        (lambda: make_vector_env(HOVER_ID, 0), "num_envs=0 is invalid"),
        (lambda: make_vector_env(HOVER_ID, 2, control_hz=50), "control_hz=50"),
        (lambda: make_vector_env(HOVER_ID, 2, bogus=1), "bogus"),
        (lambda: make_vector_env(HOVER_ID, 2, render_mode="human"), "render_mode='human'"),
    ],
)
def test_bad_construction_names_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_bad_actions_name_the_problem():
    env = make_vector_env(HOVER_ID, 3)
    with pytest.raises(ResetNeeded):
        env.step(np.zeros((3, 4), dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*got shape \(4,\)"):
        env.step(np.zeros(4, dtype=np.float32))
    actions = np.zeros((3, 4), dtype=np.float32)
    actions[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"finite.*drone\(s\) \[2\]"):
        env.step(actions)
