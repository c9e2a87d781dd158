"""Clip-Cov and KL-Cov against small hand-computed batches: which samples (or sample-dimension pairs) they select
and the loss they return; then the PPO learner's use of them (built without Ray)."""

import math

import gymnasium as gym
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from entropilot.policies.covariance import (
    CovarianceSettings,
    centered_covariance,
    clip_cov_loss,
    gaussian_logp_per_dim,
    kl_cov_loss,
)
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner

CLIP = 0.2
# Six valid samples and a seventh, invalid one (masked) whose huge values must change nothing.
# Means over the valid six: A 0, logp 0, so cov = A * logp = [2, 3, 0, 1, 4, 0].
ADVANTAGES = torch.tensor([2.0, 1.5, 0.0, -1.0, -2.0, -0.5, 100.0])
LOGP = torch.tensor([1.0, 2.0, 0.0, -1.0, -2.0, 0.0, 100.0])
VALID = torch.tensor([True] * 6 + [False])


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_centered_covariance_uses_valid_samples_only():
    covariance = centered_covariance(LOGP, ADVANTAGES, VALID)
    assert covariance[:6].tolist() == [2.0, 3.0, 0.0, 1.0, 4.0, 0.0] and covariance[6] == -math.inf


def test_clip_cov_detaches_band_samples_that_ppo_did_not_clip():
    logp = LOGP.clone().requires_grad_()
    # Sample 1 (A > 0) has ratio e^0.5 > 1 + CLIP: PPO clips it, so Clip-Cov must not pick it though its cov (3)
    # is in the band. Band (1, 5), strict: samples 0 (cov 2) and 4 (cov 4); sample 3 (cov 1) sits on the edge.
    logp_old = LOGP.detach() - torch.tensor([0.0, 0.5, 0, 0, 0, 0, 0])
    settings = CovarianceSettings("clip_cov", fraction=1.0, lower=1.0, upper=5.0)
    result = clip_cov_loss(logp, logp_old, ADVANTAGES, VALID, settings, CLIP, generator())
    assert result.num_candidates == 2
    assert result.selected.tolist() == [True, False, False, False, True, False, False]
    # Kept samples: PPO's loss max(-A r, -A clip(r)): sample 1 -1.5 * 1.2, sample 3 +1, samples 2 and 5 (r = 1)
    # 0 and 0.5; the selected ones count 0, and the mean runs over all six valid samples.
    assert result.loss.item() == pytest.approx((-1.5 * 1.2 + 1.0 + 0.5) / 6)
    result.loss.backward()
    # d/dlogp of -A r = -A r / 6 where the loss is live; 0 where selected (0, 4), clipped (1) or masked (6).
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0]) / 6
    torch.testing.assert_close(logp.grad, expected)


def test_clip_cov_draws_its_subset_at_random_with_the_generator():
    settings = CovarianceSettings("clip_cov", fraction=0.01, lower=1.0, upper=5.0)  # selects max(int(0.06), 1) = 1
    picks = set()
    for seed in range(20):
        first = clip_cov_loss(LOGP, LOGP, ADVANTAGES, VALID, settings, CLIP, generator(seed)).selected
        again = clip_cov_loss(LOGP, LOGP, ADVANTAGES, VALID, settings, CLIP, generator(seed)).selected
        assert torch.equal(first, again) and first.sum() == 1
        picks.add(int(first.nonzero()))
    assert picks == {0, 1, 4}  # the band (no sample clipped here: every ratio is 1)


def test_kl_cov_penalizes_the_top_covariance_samples_on_the_unclipped_surrogate():
    logp = LOGP.clone().requires_grad_()
    logp_old = LOGP.detach() - torch.tensor([0.0, 0.5, 0, 0, 0, 0, 0])  # sample 1: ratio e^0.5, not clipped here
    settings = CovarianceSettings("kl_cov", fraction=2 / 6, kl_coef=1.0)  # top max(int(2), 1) = 2 by cov
    result = kl_cov_loss(logp, logp_old, ADVANTAGES, VALID, settings)
    assert result.selected.tolist() == [False, True, False, False, True, False, False]
    ratio_1 = math.exp(0.5)
    # -A r for every sample (no clip: 1.5 * e^0.5, where PPO would take 1.5 * 1.2), + |logp - logp_old| on 1 and 4.
    losses = [-2.0, -1.5 * ratio_1 + 0.5, 0.0, 1.0, 2.0 + 0.0, 0.5]
    assert result.loss.item() == pytest.approx(sum(losses) / 6)
    result.loss.backward()
    # |x|' is sign(x): +1 for sample 1, 0 for sample 4, whose logp has not moved yet (as torch.abs in the reference).
    expected = torch.tensor([-2.0, -1.5 * ratio_1 + 1.0, 0.0, 1.0, 2.0, 0.5, 0.0]) / 6
    torch.testing.assert_close(logp.grad, expected)


# Per dimension: four samples, two dims, mean 0 and std 1 now, so z = a. Score -z^2/2; per column means -0.625.
ACTIONS = torch.tensor([[0.0, 2.0], [2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
DIM_ADVANTAGES = torch.tensor([1.0, -1.0, 2.0, -2.0])
DIM_VALID = torch.ones(4, dtype=torch.bool)
# (A - 0) * (score + 0.625): sample 1's dim 0 (bad advantage far out) and sample 0's dim 0 (good advantage at the
# mean) are the pairs whose gradient shrinks std_0 most.
DIM_COVARIANCE = [[0.625, -1.375], [1.375, -0.625], [0.25, 0.25], [-1.25, -1.25]]


def current_logp_dims():
    mean = torch.zeros(4, 2, requires_grad=True)
    log_std = torch.zeros(4, 2, requires_grad=True)
    logp_dims, z = gaussian_logp_per_dim(mean, log_std, ACTIONS)
    return logp_dims, z, (mean, log_std)


def test_per_dimension_score_and_covariance():
    logp_dims, z, _ = current_logp_dims()
    torch.testing.assert_close(z, ACTIONS)
    joint = TorchDiagGaussian.from_logits(torch.zeros(4, 4)).logp(ACTIONS)
    torch.testing.assert_close(logp_dims.sum(-1), joint)  # the dims add up to RLlib's logp
    covariance = centered_covariance(-0.5 * z**2, DIM_ADVANTAGES, DIM_VALID)
    assert covariance.tolist() == DIM_COVARIANCE


def test_per_dimension_kl_cov():
    logp_dims, z, _ = current_logp_dims()
    # The behaviour policy differed on the two pairs that will be selected: sample 0's dim-0 mean was 0.5, sample
    # 1's dim-0 log std 0.1.
    old_mean, old_log_std = torch.zeros(4, 2), torch.zeros(4, 2)
    old_mean[0, 0], old_log_std[1, 0] = 0.5, 0.1
    old_dims, _ = gaussian_logp_per_dim(old_mean, old_log_std, ACTIONS)
    delta_00 = 0.5 * 0.5**2  # logp_00 - logp_old_00 = -0 + 0.5 * 0.25
    delta_10 = -0.5 * 4 + 0.5 * 4 * math.exp(-0.2) + 0.1  # -z^2/2 now, minus -z^2 e^-0.2 / 2 - 0.1 then
    settings = CovarianceSettings("kl_cov", per_dimension=True, fraction=0.25, kl_coef=2.0)  # 2 of 8 pairs
    result = kl_cov_loss(logp_dims, old_dims.detach(), DIM_ADVANTAGES, DIM_VALID, settings, -0.5 * z.detach() ** 2)
    assert result.selected.tolist() == [[True, False], [True, False], [False, False], [False, False]]
    losses = [
        -1.0 * math.exp(delta_00) + 2.0 * abs(delta_00),
        1.0 * math.exp(delta_10) + 2.0 * abs(delta_10),
        -2.0,
        2.0,
    ]
    assert result.loss.item() == pytest.approx(sum(losses) / 4)


def test_a_per_dimension_logp_without_its_score_is_refused():
    logp_dims, _, _ = current_logp_dims()
    settings = CovarianceSettings("kl_cov", per_dimension=True, fraction=0.25)
    with pytest.raises(ValueError, match=r"per-dimension logp \[4, 2\] needs its score"):
        kl_cov_loss(logp_dims, logp_dims.detach(), DIM_ADVANTAGES, DIM_VALID, settings)


def test_per_dimension_clip_cov_stops_only_the_selected_pairs_gradient():
    logp_dims, z, (mean, log_std) = current_logp_dims()
    logp_old = logp_dims.detach().sum(-1) - torch.tensor([math.log(1.5), 0.0, 0.0, 0.0])  # sample 0: PPO clips it
    settings = CovarianceSettings("clip_cov", per_dimension=True, fraction=1.0, lower=0.5, upper=5.0)
    score = -0.5 * z.detach() ** 2
    result = clip_cov_loss(logp_dims, logp_old, DIM_ADVANTAGES, DIM_VALID, settings, CLIP, generator(), score)
    # In the band (0.5, 5): pairs (0, 0) and (1, 0); sample 0 is clipped by PPO, so only (1, 0) is left.
    assert result.num_candidates == 1
    assert result.selected.tolist() == [[False, False], [True, False], [False, False], [False, False]]
    # The loss value is PPO's: sample 0 at the clip (-1 * 1.2), the others at ratio 1.
    assert result.loss.item() == pytest.approx((-1.2 + 1.0 - 2.0 + 2.0) / 4)
    result.loss.backward()
    # Sample 1's dim 0 takes no gradient (its mean and log std there); its dim 1 still does; sample 0 is clipped.
    assert mean.grad[1, 0] == 0 and log_std.grad[1, 0] == 0
    assert log_std.grad[1, 1] != 0 and mean.grad[0].abs().sum() == 0
    # d(-A r)/d log_std_i = -A r (z_i^2 - 1) / N: sample 1 (A = -1), dim 1 (z = 0): -0.25.
    assert log_std.grad[1, 1].item() == pytest.approx(-0.25)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="cov"), "mode must be one of"),
        (dict(mode="kl_cov", fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(mode="clip_cov", lower=2.0, upper=1.0), "lower < upper"),
        (dict(mode="kl_cov", kl_coef=-1.0), "kl_coef must be >= 0"),
    ],
)
def test_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CovarianceSettings(**kwargs)


def learner_loss(covariance_control):
    """One PPO loss on a fixed batch, from a Learner built without Ray; its value and the batch's pieces."""
    config = (
        PPOConfig()
        .environment("Pendulum-v1")
        .training(use_kl_loss=False, entropy_coeff=0.0)
        .learners(
            learner_class=EntropyControlledPPOLearner, learner_config_dict={"covariance_control": covariance_control}
        )
    )
    learner = config.build_learner(env=gym.make("Pendulum-v1"))
    module = learner.module["default_policy"]
    torch.manual_seed(0)
    module.set_state(RLModuleSpec.from_module(module).build().get_state())
    obs = torch.randn(16, 3)
    with torch.no_grad():
        old_inputs = module.forward_train({"obs": obs})["action_dist_inputs"] + 0.1 * torch.randn(16, 2)
        old_dist = TorchDiagGaussian.from_logits(old_inputs)
        actions = old_dist.sample()
    batch = {
        "obs": obs,
        "actions": actions,
        "action_logp": old_dist.logp(actions),
        "action_dist_inputs": old_inputs,
        "advantages": torch.randn(16),
        "value_targets": torch.randn(16),
    }
    fwd_out = module.forward_train(batch)
    module_config = learner.config.get_config_for_module("default_policy")
    loss = learner.compute_loss_for_module(
        module_id="default_policy", config=module_config, batch=batch, fwd_out=fwd_out
    )
    return loss, batch, fwd_out["action_dist_inputs"]


def test_the_learner_swaps_ppo_surrogate_for_the_covariance_term():
    plain, batch, inputs = learner_loss(None)
    settings = {"mode": "kl_cov", "fraction": 0.25, "kl_coef": 1.0}
    swapped, _, _ = learner_loss(settings)
    logp = TorchDiagGaussian.from_logits(inputs).logp(batch["actions"])
    ratio = torch.exp(logp - batch["action_logp"])
    advantages = batch["advantages"]
    ppo_term = -torch.min(advantages * ratio, advantages * ratio.clamp(1 - 0.3, 1 + 0.3)).mean()  # RLlib's clip 0.3
    valid = torch.ones(16, dtype=torch.bool)
    expected = kl_cov_loss(logp, batch["action_logp"], advantages, valid, CovarianceSettings(**settings)).loss
    assert (swapped - plain).item() == pytest.approx((expected - ppo_term).item(), abs=1e-6)
