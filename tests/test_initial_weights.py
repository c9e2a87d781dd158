"""The init family on RLlib's default PPO module (built without Ray) and the torch seed of each draw."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from entropilot.policies.initial_weights import InitFamily, draw_seed

OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
ACTIONS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def module(free_log_std: bool, seed: int = 0):
    spec = RLModuleSpec(
        module_class=DefaultPPOTorchRLModule,
        observation_space=OBS,
        action_space=ACTIONS,
        model_config={"fcnet_hiddens": [16], "free_log_std": free_log_std},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return spec.build()


def outputs(m):
    obs = torch.randn(64, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return m.forward_inference({"obs": obs})["action_dist_inputs"].chunk(2, dim=-1)


@pytest.mark.parametrize("free_log_std", [True, False], ids=["free-log-std", "state-log-std"])
def test_output_gain_scales_the_drawn_head_and_initial_std_sets_sigma(free_log_std):
    drawn = module(free_log_std)
    drawn_mean, drawn_log_std = outputs(drawn)
    small = module(free_log_std)
    InitFamily(output_gain=0.01, initial_std=0.3).apply(small)
    mean, log_std = outputs(small)
    torch.testing.assert_close(mean, 0.01 * drawn_mean)
    if free_log_std:
        assert torch.equal(log_std, torch.full_like(log_std, math.log(0.3)))
    else:  # the log-std rows keep 0.01 of their drawn weights, their bias is log 0.3
        drawn_bias = drawn.pi.net.mlp[-1].bias[3:].detach()
        expected = 0.01 * (drawn_log_std - drawn_bias) + math.log(0.3)
        torch.testing.assert_close(log_std, expected)
    # Gains above 1 spread the draws: the same weights, scaled.
    wide = module(free_log_std)
    InitFamily(output_gain=4.0).apply(wide)
    torch.testing.assert_close(outputs(wide)[0], 4.0 * drawn_mean)


def test_rllib_default_is_the_identity_family():
    plain, shaped = module(True), module(True)
    InitFamily().apply(shaped)
    assert all(torch.equal(a, b) for a, b in zip(outputs(plain), outputs(shaped)))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(output_gain=0.0), "output_gain must be"), (dict(initial_std=-1.0), "initial_std must be")],
)
def test_family_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InitFamily(**kwargs)


def test_draw_seeds_never_collide():
    assert draw_seed(0) == 0 and draw_seed(3, 7) == 3007
    seeds = {draw_seed(w, k) for w in range(20) for k in range(1000)}
    assert len(seeds) == 20 * 1000
    with pytest.raises(ValueError, match="draw must be in"):
        draw_seed(1, 1000)


def test_search_outcome_keeps_the_first_clearing_draw_or_the_lowest():
    from entropilot.policies.entropy_init import InitDraw, search_outcome

    draws = [InitDraw(seed, entropy, (entropy,)) for seed, entropy in enumerate([1.0, 3.0, 0.5, 4.0])]
    first = search_outcome(draws, threshold=2.0)
    assert (first.chosen.seed, len(first.draws), first.cleared) == (1, 2, True)
    best = search_outcome(draws, threshold=9.0)
    assert (best.chosen.seed, len(best.draws), best.cleared) == (3, 4, False)
    lowest = search_outcome(draws, threshold=2.0, keep="lowest")
    assert (lowest.chosen.seed, len(lowest.draws), lowest.cleared) == (2, 4, False)
