"""The lean gradient step gives RLlib's numbers: clipping, nan/inf handling and a whole PPO update."""

import copy

import gymnasium as gym
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.torch_utils import clip_gradients

from entropilot.policies.lean_gradients import clip_gradients_foreach, with_rllib_gradients
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner


def gradients(scale: float = 1.0, poison: float | None = None) -> dict:
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 19), (64,), (8,)]
    grads = {f"p{i}": scale * torch.randn(shape, generator=generator) for i, shape in enumerate(shapes)}
    if poison is not None:
        grads["p1"][3] = poison
    return grads


@pytest.mark.parametrize("clip_by", ["global_norm", "norm", "value"])
@pytest.mark.parametrize(
    "scale, poison", [(1.0, None), (1e-3, None), (1e3, None), (1.0, float("nan")), (1.0, float("inf"))]
)
def test_clipping_equals_rllibs(clip_by, scale, poison):
    ours, theirs = gradients(scale, poison), gradients(scale, poison)
    norm_ours = clip_gradients_foreach(ours, grad_clip=0.5, grad_clip_by=clip_by)
    norm_theirs = clip_gradients(theirs, grad_clip=0.5, grad_clip_by=clip_by)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], equal_nan=True)
    if clip_by == "global_norm":
        torch.testing.assert_close(norm_ours, norm_theirs)


StockGradientsLearner = with_rllib_gradients(EntropyControlledPPOLearner)  # the reference


def build_learner(learner_class):
    config = (
        PPOConfig()
        .environment("Pendulum-v1")
        .training(lr=1e-3, grad_clip=0.5, minibatch_size=32, num_epochs=2, entropy_coeff=0.0)
        .learners(learner_class=learner_class)
    )
    learner = config.build_learner(env=gym.make("Pendulum-v1"))
    module = learner.module["default_policy"]
    torch.manual_seed(0)
    module.set_state(RLModuleSpec.from_module(module).build().get_state())
    return learner


def batch(poison: bool) -> dict:
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(64, 3, generator=generator)
    if poison:
        obs[5, 0] = float("nan")  # its gradients are nan: RLlib zeroes them and steps
    inputs = torch.randn(64, 2, generator=generator) * 0.1
    return {
        "obs": obs,
        "actions": torch.randn(64, 1, generator=generator),
        "action_logp": torch.randn(64, generator=generator) - 1.0,
        "action_dist_inputs": inputs,
        "advantages": torch.randn(64, generator=generator),
        "value_targets": torch.randn(64, generator=generator),
        "vf_preds": torch.randn(64, generator=generator),
    }


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan-gradients"])
def test_a_ppo_update_equals_rllibs_gradient_step(poison):
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    learners = [build_learner(EntropyControlledPPOLearner), build_learner(StockGradientsLearner)]
    fused = [learner.get_optimizer("default_policy").defaults["fused"] for learner in learners]
    assert fused == [True, None]
    data = batch(poison)
    for learner in learners:
        samples = MultiAgentBatch({"default_policy": SampleBatch(copy.deepcopy(data))}, env_steps=64)
        for step in range(3):
            learner.update(batch=samples, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 64 * (step + 1)})
    ours, theirs = (learner.module["default_policy"].state_dict() for learner in learners)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert not any(torch.isnan(value).any() for value in ours.values())


def test_an_lr_schedule_in_the_config_reaches_the_optimizer_and_follows_env_steps():
    """`algorithm.lr: [[env_steps, lr], ...]` is RLlib's piecewise schedule on the lean learner's fused Adam."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    from entropilot.envs import make_env
    from entropilot.platform.algorithm import algorithm_config, algorithm_settings
    from entropilot.platform.config.loading import parse_config

    cfg = parse_config({"resources": {"gpu": "off"}}, ["algorithm.lr=[[0,0.001],[1000,0.0001]]"])
    learner = algorithm_config(**algorithm_settings(cfg)).build_learner(env=make_env("entropilot/Hover-v0"))
    optimizer = learner.get_optimizer("default_policy")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    generator = torch.Generator().manual_seed(0)
    obs_size = learner.module["default_policy"].observation_space.shape[0]
    data = {
        "obs": torch.randn(64, obs_size, generator=generator),
        "actions": torch.randn(64, 4, generator=generator),
        "action_logp": torch.randn(64, generator=generator) - 1.0,
        "action_dist_inputs": torch.randn(64, 8, generator=generator) * 0.1,
        "advantages": torch.randn(64, generator=generator),
        "value_targets": torch.randn(64, generator=generator),
        "vf_preds": torch.randn(64, generator=generator),
    }
    seen = []
    for lifetime_steps in (500, 2000):
        samples = MultiAgentBatch({"default_policy": SampleBatch(copy.deepcopy(data))}, env_steps=64)
        learner.update(batch=samples, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: lifetime_steps})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([5.5e-4, 1e-4])  # linear between the points, held past the last
