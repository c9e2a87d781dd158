"""Entropy estimators checked against torch.distributions, numerical integrals and sampled clipped actions;
the effective entropy's monotonicity and range."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from entropilot.policies.entropy import (
    categorical_entropy,
    diag_gaussian_entropy,
    effective_entropy,
    measured_entropies,
    policy_bounds,
    split_diag_gaussian_inputs,
    squashed_gaussian_entropy,
)
from entropilot.policies.entropy_range import RESOLUTION, measure_range, nats_of_std, std_per_dim

GAUSSIAN_ENTROPY_STD_1 = 0.5 * math.log(2 * math.pi * math.e)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_split_diag_gaussian_inputs_halves_last_axis():
    inputs = torch.arange(12.0).reshape(2, 6)
    mean, log_std = split_diag_gaussian_inputs(inputs)
    assert torch.equal(mean, inputs[:, :3])
    assert torch.equal(log_std, inputs[:, 3:])


def test_split_diag_gaussian_inputs_rejects_odd_width():
    with pytest.raises(ValueError, match="even last axis"):
        split_diag_gaussian_inputs(torch.zeros(4, 5))


def test_diag_gaussian_matches_torch_normal():
    mean = torch.randn(32, 4, generator=_generator(), dtype=torch.float64)
    log_std = torch.randn(32, 4, generator=_generator(1), dtype=torch.float64)
    reference = Normal(mean, log_std.exp()).entropy()
    total, per_dim = diag_gaussian_entropy(log_std)
    torch.testing.assert_close(per_dim, reference)
    torch.testing.assert_close(total, reference.sum(-1))


def test_diag_gaussian_is_differentiable():
    log_std = torch.zeros(8, 3, requires_grad=True)
    diag_gaussian_entropy(log_std).total.mean().backward()
    torch.testing.assert_close(log_std.grad, torch.full((8, 3), 1 / 8))


@pytest.mark.parametrize("mean,std", [(0.0, 0.3), (0.0, 1.0), (1.5, 0.5), (4.0, 1.0), (-0.5, 2.0)])
def test_squashed_gaussian_matches_numerical_integral(mean, std):
    # -E[log p(a)] integrated on a fine grid in pre-tanh space, with p(a) from torch's own TanhTransform.
    u = torch.linspace(mean - 12 * std, mean + 12 * std, 200_001, dtype=torch.float64)
    base = Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    squashed = TransformedDistribution(base, TanhTransform(cache_size=1))
    a = squashed.transforms[0](u)
    log_p = squashed.log_prob(a)
    reference = torch.trapezoid(-base.log_prob(u).exp() * log_p, u)

    estimate = squashed_gaussian_entropy(
        torch.tensor([mean], dtype=torch.float64),
        torch.tensor([math.log(std)], dtype=torch.float64),
        num_samples=400_000,
        generator=_generator(),
    )
    assert estimate.total.item() == pytest.approx(reference.item(), abs=0.02)


def test_squashed_gaussian_matches_large_sample_logp_and_sums_dims():
    mean = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    log_std = torch.tensor([[-1.0, 0.0, 0.5]], dtype=torch.float64)
    squashed = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform(cache_size=1))
    torch.manual_seed(0)
    samples = squashed.sample((200_000,))
    reference_per_dim = -squashed.log_prob(samples).mean(0)

    total, per_dim = squashed_gaussian_entropy(mean, log_std, num_samples=200_000, generator=_generator())
    torch.testing.assert_close(per_dim, reference_per_dim, atol=0.02, rtol=0)
    torch.testing.assert_close(total, per_dim.sum(-1))
    assert per_dim.shape == (1, 3)


def test_squashed_gaussian_below_gaussian_and_differentiable():
    # tanh contracts, so the squashed entropy is always lower; a saturated mean lowers it further.
    mean = torch.tensor([[0.0], [3.0]], requires_grad=True)
    log_std = torch.zeros(2, 1, requires_grad=True)
    estimate = squashed_gaussian_entropy(mean, log_std, num_samples=4096, generator=_generator())
    assert (estimate.per_dim < GAUSSIAN_ENTROPY_STD_1).all()
    assert estimate.total[1] < estimate.total[0] - 1.0
    estimate.total.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad).all()
    with torch.no_grad():
        assert not squashed_gaussian_entropy(mean, log_std).total.requires_grad


def test_categorical_matches_torch_categorical():
    logits = torch.randn(16, 5, generator=_generator(), dtype=torch.float64) * 3
    torch.testing.assert_close(categorical_entropy(logits), Categorical(logits=logits).entropy())
    assert categorical_entropy(torch.zeros(7)).item() == pytest.approx(math.log(7))


def test_categorical_masked_actions_count_zero():
    logits = torch.tensor([0.0, 0.0, -math.inf, 0.0], requires_grad=True)
    entropy = categorical_entropy(logits)
    assert entropy.item() == pytest.approx(math.log(3))
    entropy.backward()
    assert torch.isfinite(logits.grad).all()


def _effective_per_dim(mean, std, low=-1.0, high=1.0, resolution=RESOLUTION):
    params = torch.tensor([[mean, math.log(std)]], dtype=torch.float64)
    return effective_entropy(params[:, :1], params[:, 1:], low, high, resolution).total.item()


@pytest.mark.parametrize("mean,std", [(0.0, 0.3), (0.8, 0.5), (1.0, 0.5), (2.0, 3.0), (-0.5, 10.0), (0.0, 1.0)])
def test_effective_entropy_is_the_gaussian_entropy_of_the_clipped_actions_variance(mean, std):
    samples = (mean + std * torch.randn(1_000_000, generator=_generator(), dtype=torch.float64)).clamp(-1.0, 1.0)
    expected = GAUSSIAN_ENTROPY_STD_1 + 0.5 * math.log(samples.var().item() + RESOLUTION**2)
    assert _effective_per_dim(mean, std) == pytest.approx(expected, abs=2e-3)


def test_effective_entropy_by_hand():
    # N(0, 1) clipped to [-1, 1]: Var = (p - 2 phi(1)) + (1 - p), p = P(|z| < 1) = 0.682689, phi(1) = 0.241971.
    variance = 1 - 2 * 0.241971
    assert _effective_per_dim(0.0, 1.0) == pytest.approx(GAUSSIAN_ENTROPY_STD_1 + 0.5 * math.log(variance), abs=1e-5)
    # A box of half-width 2 around 1: the same policy scaled by 2 scores the same (units of half-widths).
    assert _effective_per_dim(1.0, 2.0, low=-1.0, high=3.0) == pytest.approx(_effective_per_dim(0.0, 1.0))


def test_effective_entropy_rises_with_std_for_every_mean_and_falls_past_the_bounds():
    stds = torch.logspace(-5, 4, 2000, dtype=torch.float64)
    means = torch.linspace(-8, 8, 161, dtype=torch.float64)
    grid = effective_entropy(means[:, None, None], stds.log()[None, :, None], -1.0, 1.0).total  # [means, stds]
    assert (grid.diff(dim=1) > -1e-7).all()
    # From the centre outwards the executed action only loses spread.
    right = grid[means >= 0]
    assert (right.diff(dim=0) < 1e-7).all()
    torch.testing.assert_close(grid, grid.flip(0), atol=1e-7, rtol=0)  # symmetric box, symmetric measure


def test_effective_entropy_limits_and_range():
    # Bounds that do not bite: the Gaussian entropy (with the resolution floor negligible).
    for std in (0.05, 0.1):
        assert _effective_per_dim(0.0, std) == pytest.approx(GAUSSIAN_ENTROPY_STD_1 + math.log(std), abs=1e-3)
    assert _effective_per_dim(0.0, 7.0, -math.inf, math.inf) == pytest.approx(GAUSSIAN_ENTROPY_STD_1 + math.log(7.0))
    # Pinned past a bound (however wide) or deterministic: the floor. Bang-bang: the top.
    low, high = measure_range("effective", gym.spaces.Box(-1, 1, (1,)))
    assert _effective_per_dim(3.0, 1e-3) == pytest.approx(low, abs=1e-9)
    assert _effective_per_dim(0.3, 1e-9) == pytest.approx(low, abs=1e-9)
    assert _effective_per_dim(0.0, 1e6) == pytest.approx(high, abs=1e-6)
    assert _effective_per_dim(60.0, 1e6) < high  # the mean far out: not even odds on the two bounds


def test_effective_entropy_keeps_dtype_and_has_finite_gradients():
    mean = torch.tensor([[0.0, 5.0], [0.5, -8.0], [-0.2, 3.0]], requires_grad=True)
    log_std = torch.tensor([[-1.0, -1.0], [0.0, -30.0], [0.5, 2.0]], requires_grad=True)
    low, high = torch.tensor([-1.0, -math.inf]), torch.tensor([1.0, 1.0])
    total, per_dim = effective_entropy(mean, log_std, low, high)
    assert total.dtype == per_dim.dtype == torch.float32 and per_dim.shape == (3, 2)
    torch.testing.assert_close(total, per_dim.sum(-1))
    total.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad).all()


def test_effective_entropy_rejects_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        effective_entropy(torch.zeros(1), torch.zeros(1), -1.0, 1.0, resolution=0.0)


def test_measured_entropies_of_rllib_gaussian_inputs():
    inputs = torch.zeros(10, 8)
    inputs[:, 4:] = math.log(0.05)
    space = gym.spaces.Box(-2.0, 2.0, (4,), np.float32)
    both = measured_entropies(inputs, space, normalize_actions=True)
    assert set(both) == {"effective", "gaussian"} and both["gaussian"].shape == (10, 4)
    torch.testing.assert_close(both["gaussian"], torch.full((10, 4), GAUSSIAN_ENTROPY_STD_1 + math.log(0.05)))
    torch.testing.assert_close(both["effective"], both["gaussian"], atol=2e-3, rtol=0)
    # Without normalization the policy acts in env units: std 0.05 of a half-width 2 is 0.025 of one.
    raw = measured_entropies(inputs, space, normalize_actions=False)["effective"]
    torch.testing.assert_close(raw, both["effective"] + math.log(0.5), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="supported: Box, Discrete, MultiDiscrete"):
        measured_entropies(inputs, gym.spaces.Tuple([space, space]), normalize_actions=True)


def test_policy_bounds():
    space = gym.spaces.Box(np.array([0.0, -3.0], np.float32), np.array([2.0, 3.0], np.float32))
    low, high = policy_bounds(space, normalize_actions=True)
    assert low.tolist() == [-1.0, -1.0] and high.tolist() == [1.0, 1.0]
    low, high = policy_bounds(space, normalize_actions=False)
    assert low.tolist() == [0.0, -3.0] and high.tolist() == [2.0, 3.0]


def test_measure_ranges_and_their_meaning_in_std():
    box = gym.spaces.Box(-1, 1, (4,))
    low, high = measure_range("effective", box)
    assert (low, high) == pytest.approx((4 * (GAUSSIAN_ENTROPY_STD_1 + math.log(1e-3)), 4 * GAUSSIAN_ENTROPY_STD_1))
    assert measure_range("gaussian", box) == pytest.approx(
        (4 * (GAUSSIAN_ENTROPY_STD_1 - 20), 4 * (GAUSSIAN_ENTROPY_STD_1 + 20))
    )
    assert measure_range("effective", gym.spaces.Discrete(5)) == (0.0, math.log(5))
    assert measure_range("gaussian", gym.spaces.MultiDiscrete([3, 4])) == pytest.approx((0.0, math.log(12)))
    assert std_per_dim(nats_of_std(0.2, 4), 4) == pytest.approx(0.2)
    assert nats_of_std(1.0, 4) == pytest.approx(4 * GAUSSIAN_ENTROPY_STD_1)
    with pytest.raises(ValueError, match="one of"):
        measure_range("executed", box)
