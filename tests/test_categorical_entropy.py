"""Entropy of categorical policies (Discrete, MultiDiscrete): per sub-action and total, its maximum, the refusal of
unreachable thresholds, and the rollout measure entropy-aware initialization reads."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from entropilot.policies.entropy import max_categorical_entropy, multi_categorical_entropy
from entropilot.policies.entropy_init import (
    RolloutSample,
    categorical_sizes,
    check_reachable_threshold,
    entropy_of_rollouts,
)


def test_per_sub_action_entropy_matches_torch_and_sums_to_the_joint():
    logits = torch.randn(64, 5 + 5 + 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    estimate = multi_categorical_entropy(logits, (5, 5, 3))
    parts = logits.split([5, 5, 3], dim=-1)
    expected = torch.stack([Categorical(logits=part).entropy() for part in parts], dim=-1)
    torch.testing.assert_close(estimate.per_dim, expected)
    torch.testing.assert_close(estimate.total, expected.sum(-1))
    # Independent sub-actions: the joint distribution over all 75 combinations has the summed entropy.
    joint = (parts[0].log_softmax(-1)[:, :, None, None] + parts[1].log_softmax(-1)[:, None, :, None]).add(
        parts[2].log_softmax(-1)[:, None, None, :]
    )
    torch.testing.assert_close(estimate.total, Categorical(logits=joint.reshape(64, -1)).entropy())


def test_uniform_logits_reach_the_maximum_and_nothing_exceeds_it():
    assert max_categorical_entropy((5, 5, 5)) == pytest.approx(3 * math.log(5))
    uniform = multi_categorical_entropy(torch.zeros(1, 15), (5, 5, 5))
    assert uniform.total.item() == pytest.approx(3 * math.log(5), rel=1e-6)
    random = multi_categorical_entropy(torch.randn(1000, 15), (5, 5, 5))
    assert (random.per_dim <= math.log(5) + 1e-6).all() and (random.per_dim >= 0).all()
    with pytest.raises(ValueError, match=r"13 entries .* \[5, 5, 5\] need 15"):
        multi_categorical_entropy(torch.zeros(2, 13), (5, 5, 5))


def test_categorical_sizes_of_spaces():
    assert categorical_sizes(gym.spaces.Discrete(7)) == (7,)
    assert categorical_sizes(gym.spaces.MultiDiscrete([5, 5, 3])) == (5, 5, 3)
    assert categorical_sizes(gym.spaces.Box(-1, 1, (4,))) is None


def test_a_threshold_above_the_maximum_is_refused_with_the_maximum():
    space = gym.spaces.MultiDiscrete([5, 5, 5])
    check_reachable_threshold(4.8, space)  # below 3 ln 5 = 4.828
    with pytest.raises(ValueError, match=r"threshold=4.9 nats is unreachable .* at most 4.8283 nats .* \[5, 5, 5\]"):
        check_reachable_threshold(4.9, space)
    check_reachable_threshold(100.0, gym.spaces.Box(-1, 1, (4,)))  # continuous: no such bound here


def test_entropy_of_rollouts_is_the_mean_categorical_entropy_over_steps():
    logits = np.random.default_rng(0).normal(size=(200, 10))
    sample = RolloutSample(np.zeros((200, 22)), logits, gym.spaces.MultiDiscrete([5, 5]))
    estimate = entropy_of_rollouts(sample, normalize_actions=True)
    expected = multi_categorical_entropy(torch.as_tensor(logits), (5, 5)).per_dim.mean(0)
    torch.testing.assert_close(estimate.per_dim, expected)
    assert estimate.total.item() == pytest.approx(expected.sum().item())


def test_the_config_refuses_unreachable_categorical_targets_before_ray():
    from entropilot.envs import HOVER_DISCRETE_ID
    from entropilot.platform.config import ConfigError, parse_config

    discrete = {"env": {"id": HOVER_DISCRETE_ID}}
    cfg = parse_config({**discrete, "entropy": {"init": {"threshold": 4.8}, "control": {"target": [[0, 4.8], [9, 1]]}}})
    assert cfg.entropy.init.threshold == 4.8
    with pytest.raises(ConfigError, match=r"entropy.init.threshold: unreachable: .* at most 4.8283 nats .*\(got 4.9\)"):
        parse_config({**discrete, "entropy": {"init": {"threshold": 4.9}}})
    with pytest.raises(ConfigError, match=r"entropy.control.target: unreachable: .* at most 4.8283 nats .*\(got 5.0\)"):
        parse_config({**discrete, "entropy": {"control": {"target": [[0, 5.0], [100, 1.0]]}}})
    three = {"env": {"id": HOVER_DISCRETE_ID, "kwargs": {"velocity_levels": [-0.3, 0.0, 0.3]}}}
    with pytest.raises(ConfigError, match=r"at most 3.2958 nats .* \[3, 3, 3\]"):
        parse_config({**three, "entropy": {"init": {"threshold": 4.0}}})
    parse_config({"entropy": {"init": {"threshold": 4.9}, "control": {"target": 5.5}}})  # Gaussian: no such bound
