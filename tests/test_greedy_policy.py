"""GreedyPolicy, the deterministic policy training evaluates (and export reproduces): mean for PPO, tanh(mean) for
SAC."""

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig

from entropilot.envs import HOVER_ID
from entropilot.platform.algorithm import ObservationFilterStats
from entropilot.platform.evaluation import GreedyPolicy


def module_and_obs(config):
    env = gym.make(HOVER_ID)
    module = config.environment(HOVER_ID).get_rl_module_spec(env=env.unwrapped).build()
    obs, _ = env.reset(seed=0)
    return module, obs


def dist_inputs(module, obs):
    with torch.no_grad():
        return module.forward_inference({"obs": torch.as_tensor(obs[None])})["action_dist_inputs"][0].numpy()


def test_ppo_greedy_action_is_the_clipped_gaussian_mean():
    module, obs = module_and_obs(PPOConfig())
    policy = GreedyPolicy(module, None)
    assert not policy.squashed
    mean = dist_inputs(module, obs)[:4]
    np.testing.assert_allclose(policy(obs), np.clip(mean, -1, 1), atol=1e-6)


def test_sac_greedy_action_is_tanh_of_the_mean():
    module, obs = module_and_obs(SACConfig())
    policy = GreedyPolicy(module, None)
    assert policy.squashed
    mean = dist_inputs(module, obs)[:4]
    np.testing.assert_allclose(policy(obs), np.tanh(mean), atol=1e-6)


def test_filter_statistics_normalize_before_the_network():
    module, obs = module_and_obs(PPOConfig())
    stats = ObservationFilterStats(mean=obs.astype(np.float64), std=np.full(22, 2.0), clip=10.0, count=100)
    policy = GreedyPolicy(module, stats)
    zeros_action = np.clip(dist_inputs(module, np.zeros(22, dtype=np.float32))[:4], -1, 1)
    np.testing.assert_allclose(policy(obs), zeros_action, atol=1e-6)  # obs == mean normalizes to zeros
