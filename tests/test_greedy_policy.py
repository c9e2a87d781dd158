"""GreedyPolicy, the deterministic policy training evaluates (and export reproduces): mean for PPO, tanh(mean) for
SAC, the argmax of each sub-action for a categorical policy."""

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig

from entropilot.envs import HOVER_DISCRETE_ID, HOVER_ID
from entropilot.platform.algorithm import ObservationFilterStats
from entropilot.platform.evaluation import GreedyPolicy


def module_and_obs(config, env_id=HOVER_ID):
    env = gym.make(env_id)
    module = config.environment(env_id).get_rl_module_spec(env=env.unwrapped).build()
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


def test_a_batch_of_observations_is_one_forward_pass_with_the_same_actions():
    module, obs = module_and_obs(PPOConfig())
    stats = ObservationFilterStats(mean=np.zeros(22), std=np.full(22, 2.0), clip=5.0, count=100)
    policy = GreedyPolicy(module, stats)
    batch = np.stack([obs, obs * 0.5, obs * 3.0]).astype(np.float32)
    actions = policy(batch)
    assert actions.shape == (3, 4) and policy(obs).shape == (4,)
    np.testing.assert_allclose(actions, np.stack([policy(o) for o in batch]), atol=1e-6)


def test_categorical_greedy_action_is_each_sub_actions_argmax():
    config = PPOConfig().rl_module(model_config={"free_log_std": False})
    module, obs = module_and_obs(config, HOVER_DISCRETE_ID)
    with torch.no_grad():  # large logits, so the argmax is not a near-tie
        module.pi.net.mlp[-1].weight.mul_(100.0)
    policy = GreedyPolicy(module, None)
    assert policy.categorical_sizes == (5, 5, 5) and not policy.squashed
    rng = np.random.default_rng(0)
    for o in [obs, *rng.normal(size=(20, 22)).astype(np.float32)]:
        logits = dist_inputs(module, o).reshape(3, 5)
        action = policy(o)
        assert action.dtype == np.int64 and action.shape == (3,)
        np.testing.assert_array_equal(action, logits.argmax(axis=1))
