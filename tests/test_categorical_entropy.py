"""Entropy of categorical policies (Discrete, MultiDiscrete) in the measure framework: per sub-action and total, its
reachable range, the refusal of unreachable thresholds and of Gaussian-only settings, and the rollout measure
entropy-aware initialization reads."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from entropilot.policies.entropy import measured_entropies, multi_categorical_entropy
from entropilot.policies.entropy_init import RolloutSample, entropy_of_rollouts
from entropilot.policies.entropy_range import MEASURES, categorical_sizes, entropy_key, measure_range


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
    space = gym.spaces.MultiDiscrete([5, 5, 5])
    for measure in MEASURES:  # a categorical policy has one entropy, whatever the measure
        assert entropy_key(measure, space) == "categorical"
        assert measure_range(measure, space) == pytest.approx((0.0, 3 * math.log(5)))
    assert measure_range("effective", gym.spaces.Discrete(7)) == pytest.approx((0.0, math.log(7)))
    uniform = multi_categorical_entropy(torch.zeros(1, 15), (5, 5, 5))
    assert uniform.total.item() == pytest.approx(3 * math.log(5), rel=1e-6)
    random = multi_categorical_entropy(torch.randn(1000, 15), (5, 5, 5))
    assert (random.per_dim <= math.log(5) + 1e-6).all() and (random.per_dim >= 0).all()
    with pytest.raises(ValueError, match=r"13 entries .* \[5, 5, 5\] need 15"):
        multi_categorical_entropy(torch.zeros(2, 13), (5, 5, 5))


def test_categorical_sizes_and_entropy_names_of_spaces():
    assert categorical_sizes(gym.spaces.Discrete(7)) == (7,)
    assert categorical_sizes(gym.spaces.MultiDiscrete([5, 5, 3])) == (5, 5, 3)
    assert categorical_sizes(gym.spaces.Box(-1, 1, (4,))) is None
    assert [entropy_key(m, gym.spaces.Box(-1, 1, (4,))) for m in MEASURES] == list(MEASURES)
    with pytest.raises(ValueError, match="entropy measure must be one of"):
        entropy_key("executed", gym.spaces.Discrete(3))


def test_measured_entropies_of_a_categorical_policy_are_its_sub_actions_entropies():
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    measured = measured_entropies(logits, gym.spaces.MultiDiscrete([5, 3]), normalize_actions=True)
    assert list(measured) == ["categorical"]
    torch.testing.assert_close(measured["categorical"], multi_categorical_entropy(logits, (5, 3)).per_dim)
    single = measured_entropies(logits[:, :5], gym.spaces.Discrete(5), normalize_actions=False)["categorical"]
    assert single.shape == (32, 1)
    with pytest.raises(ValueError, match="supported: Box, Discrete, MultiDiscrete"):
        measured_entropies(logits, gym.spaces.Dict({}), normalize_actions=True)


def test_entropy_of_rollouts_is_the_mean_categorical_entropy_over_steps():
    logits = np.random.default_rng(0).normal(size=(200, 10))
    sample = RolloutSample(np.zeros((200, 22)), logits, gym.spaces.MultiDiscrete([5, 5]))
    expected = multi_categorical_entropy(torch.as_tensor(logits), (5, 5)).per_dim.mean(0)
    for measure in MEASURES:
        estimate = entropy_of_rollouts(sample, measure, normalize_actions=True)
        torch.testing.assert_close(estimate.per_dim, expected)
        assert estimate.total.item() == pytest.approx(expected.sum().item())


def test_the_config_refuses_unreachable_categorical_targets_before_ray():
    from entropilot.envs import HOVER_DISCRETE_ID
    from entropilot.platform.config import ConfigError, parse_config

    discrete = {"env": {"id": HOVER_DISCRETE_ID}}
    cfg = parse_config({**discrete, "entropy": {"init": {"threshold": 4.8}, "control": {"target": [[0, 4.8], [9, 1]]}}})
    assert cfg.entropy.init.threshold == 4.8 and cfg.entropy_name == "categorical"
    reach = r"the categorical entropy of MultiDiscrete\(\[5 5 5\]\) lies in \[0.00, 4.83\] nats"
    with pytest.raises(ConfigError, match=rf"entropy.init.threshold: unreachable: {reach} \(got 4.9\)"):
        parse_config({**discrete, "entropy": {"init": {"threshold": 4.9}}})
    with pytest.raises(ConfigError, match=rf"entropy.init.threshold: unreachable: {reach} \(got -0.5\)"):
        parse_config({**discrete, "entropy": {"init": {"threshold": -0.5}}})
    with pytest.raises(ConfigError, match=rf"entropy.control.target: unreachable: {reach}"):
        parse_config({**discrete, "entropy": {"control": {"target": [[0, 5.0], [100, 1.0]]}}})
    three = {"env": {"id": HOVER_DISCRETE_ID, "kwargs": {"velocity_levels": [-0.3, 0.0, 0.3]}}}
    with pytest.raises(ConfigError, match=r"lies in \[0.00, 3.30\] nats"):
        parse_config({**three, "entropy": {"init": {"threshold": 4.0}}})
    parse_config({"entropy": {"init": {"threshold": 4.9}, "control": {"target": 5.5}}})  # hover: effective, 4 dims


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"initial_std": 0.5}}, "model.initial_std"),
        ({"entropy": {"control": {"mode": "sigma_schedule"}}}, "entropy.control.mode"),
        ({"entropy": {"covariance": {"mode": "clip_cov", "per_dimension": True}}}, "entropy.covariance.per_dimension"),
    ],
)
def test_the_config_refuses_gaussian_std_settings_for_a_categorical_policy(overrides, field):
    from entropilot.envs import HOVER_DISCRETE_ID
    from entropilot.platform.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=rf"{field}: .*a categorical policy has no Gaussian std"):
        parse_config({"env": {"id": HOVER_DISCRETE_ID}, **overrides})
    parse_config({"env": {"id": HOVER_DISCRETE_ID}, "model": {"output_gain": 3.0}})  # the gain scales the logits
