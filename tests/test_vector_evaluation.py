"""Evaluation in a vector env: all episodes at once, one controller call per step, gives the results of flying them
one after the other on the same held-out seeds (`run_vector_episodes` vs `run_episodes`)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig

from entropilot.envs import HOVER_ID, WAYPOINT_ID, make_env
from entropilot.envs.evaluate import run_episodes, run_vector_episodes
from entropilot.envs.pid import CascadedPID
from entropilot.platform.algorithm import ObservationFilterStats
from entropilot.platform.evaluation import GreedyPolicy

EPISODES, SEED = 4, 1_000_000
SHORT = {"episode_seconds": 2.0, "success_seconds": 1.0}


def fly_both(env_id: str, kwargs: dict, mode: str, one_by_one, batched, reset_batched=None) -> tuple[list, list]:
    """(one episode after another, all at once in a vector env of `mode`); the vector env flies twice: a reused one
    gives the same."""
    single = make_env(env_id, **kwargs)
    vector = gym.make_vec(env_id, num_envs=EPISODES, vectorization_mode=mode, **kwargs)
    try:
        reset = getattr(one_by_one, "reset", None)
        at_once = run_vector_episodes(vector, batched, SEED)
        if reset_batched is not None:
            reset_batched()
        again = run_vector_episodes(vector, batched, SEED)
        assert [(r.episode_return, r.length) for r in again] == [(r.episode_return, r.length) for r in at_once]
        return run_episodes(single, one_by_one, EPISODES, SEED, reset_controller=reset), at_once
    finally:
        single.close()
        vector.close()


def assert_same_flights(one_by_one: list, at_once: list, exact: bool) -> None:
    """Field by field; to the bit for single envs stepped side by side, within 1e-6 for the batched world (its drones
    fly in frames offset from the world's origin, which rounds differently)."""
    assert [r.seed for r in at_once] == [SEED + k for k in range(EPISODES)]
    for one, many in zip(one_by_one, at_once):
        assert (many.seed, many.success, many.length, many.crash, many.agent) == (
            one.seed,
            one.success,
            one.length,
            one.crash,
            one.agent,
        )
        if exact:
            assert (many.episode_return, many.final_distance) == (one.episode_return, one.final_distance)
            np.testing.assert_array_equal(many.positions, one.positions)
            np.testing.assert_array_equal(many.targets, one.targets)
        else:
            assert many.episode_return == pytest.approx(one.episode_return, rel=1e-6)
            assert many.final_distance == pytest.approx(one.final_distance, rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(many.positions, one.positions, atol=1e-6)
            np.testing.assert_allclose(many.targets, one.targets, atol=1e-6)


VECTOR_MODES = ["sync", "vector_entry_point"]  # SyncVectorEnv of single envs; the batched DroneVectorEnv


@pytest.mark.parametrize("mode", VECTOR_MODES)
@pytest.mark.parametrize(("env_id", "kwargs"), [(HOVER_ID, SHORT), (WAYPOINT_ID, {})])
def test_vector_evaluation_equals_one_episode_after_another(env_id, kwargs, mode):
    # The PID baseline, one controller per drone (it integrates the position error): successes.
    settings = make_env(env_id, **kwargs)
    pid, pids = CascadedPID.for_env(settings), [CascadedPID.for_env(settings) for _ in range(EPISODES)]
    settings.close()

    def batched(obs: np.ndarray) -> np.ndarray:
        return np.stack([pid(o) for pid, o in zip(pids, obs)])

    def reset_all() -> None:
        for each in pids:
            each.reset()

    one_by_one, at_once = fly_both(env_id, kwargs, mode, pid, batched, reset_all)
    assert any(r.success for r in at_once)
    assert_same_flights(one_by_one, at_once, exact=mode == "sync")


@pytest.mark.parametrize("mode", VECTOR_MODES)
def test_greedy_policy_flies_a_batch_as_it_flies_each_drone(mode):
    # An untrained policy (it crashes or drifts: crash reasons and truncations) acting on all drones in one forward,
    # whose batched matrix products may round differently from one row's.
    torch.manual_seed(0)
    env = make_env(HOVER_ID)
    module = PPOConfig().environment(HOVER_ID).get_rl_module_spec(env=env.unwrapped).build()
    env.close()
    stats = ObservationFilterStats(mean=np.full(22, 0.1), std=np.full(22, 0.5), clip=10.0, count=100)
    policy = GreedyPolicy(module, stats)
    one_by_one, at_once = fly_both(HOVER_ID, SHORT, mode, policy, policy)
    assert {r.crash for r in at_once} - {None}  # some crashed
    assert_same_flights(one_by_one, at_once, exact=False)
