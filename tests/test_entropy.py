"""Entropy estimators checked against torch.distributions, numerical integrals and exact quantization."""

import math

import pytest
import torch
from torch.distributions import Categorical, Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from entropilot.policies.entropy import (
    categorical_entropy,
    clipped_gaussian_entropy,
    diag_gaussian_entropy,
    executed_entropy,
    split_diag_gaussian_inputs,
    squashed_gaussian_entropy,
)

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


def _quantized_entropy(mean: float, std: float, low: float, high: float, resolution: float) -> float:
    """Exact entropy of clip(x, low, high) binned at `resolution`, atoms apart, plus log(resolution)."""
    edges = torch.linspace(low, high, round((high - low) / resolution) + 1, dtype=torch.float64)
    cdf = torch.special.ndtr((edges - mean) / std)
    probabilities = torch.cat([cdf.diff(), cdf[:1], 1 - cdf[-1:]])
    probabilities = probabilities[probabilities > 0]
    return (-(probabilities * probabilities.log()).sum()).item() + math.log(resolution)


@pytest.mark.parametrize("mean,std", [(0.0, 0.3), (0.8, 0.3), (1.0, 0.5), (2.0, 0.5), (0.0, 2.0), (-3.0, 1.0)])
def test_clipped_gaussian_equals_its_definition_by_quantization(mean, std):
    params = torch.tensor([mean, math.log(std)], dtype=torch.float64)
    estimate = clipped_gaussian_entropy(params[:1], params[1:], -1.0, 1.0)
    assert estimate.total.item() == pytest.approx(_quantized_entropy(mean, std, -1.0, 1.0, 1e-3), abs=1e-4)


@pytest.mark.parametrize("std", [0.05, 0.3, 1.0])
def test_executed_entropy_falls_as_mean_saturates(std):
    mean = torch.linspace(0.0, 6.0, 301, dtype=torch.float64).unsqueeze(-1)
    entropy = clipped_gaussian_entropy(mean, torch.full_like(mean, math.log(std)), -1.0, 1.0).total
    assert (entropy.diff() <= 1e-9).all()
    assert entropy[-1].item() == pytest.approx(math.log(1e-3), abs=1e-3)
    assert entropy[0] - entropy[-1] > 5.0


def test_executed_entropy_limits():
    log_std = torch.tensor([math.log(0.5)], dtype=torch.float64)
    gaussian = diag_gaussian_entropy(log_std).total
    centered = torch.zeros(1, dtype=torch.float64)
    # Bounds -> infinity: the plain Gaussian entropy.
    for bound in (1e3, math.inf):
        wide = clipped_gaussian_entropy(centered, log_std, -bound, bound).total
        torch.testing.assert_close(wide, gaussian)
    # std -> 0 inside the box: the Gaussian entropy; pinned past a bound: log(resolution).
    tiny_log_std = torch.tensor([math.log(1e-4)], dtype=torch.float64)
    inside = clipped_gaussian_entropy(torch.tensor([0.3], dtype=torch.float64), tiny_log_std, -1.0, 1.0).total
    torch.testing.assert_close(inside, diag_gaussian_entropy(tiny_log_std).total)
    pinned = clipped_gaussian_entropy(torch.tensor([1.2], dtype=torch.float64), tiny_log_std, -1.0, 1.0).total
    assert pinned.item() == pytest.approx(math.log(1e-3))
    # Mean exactly on a bound: half the mass is an atom.
    on_bound = clipped_gaussian_entropy(torch.ones(1, dtype=torch.float64), tiny_log_std, -1.0, 1.0, 1e-2)
    half_gaussian = 0.5 * diag_gaussian_entropy(tiny_log_std).total
    expected = -0.5 * math.log(0.5 / 1e-2) + half_gaussian
    torch.testing.assert_close(on_bound.total, expected)


def test_executed_entropy_batch_helper_and_gradients():
    mean = torch.tensor([[0.0, 5.0], [0.5, -8.0], [-0.2, 3.0]], requires_grad=True)
    log_std = torch.tensor([[-1.0, -1.0], [0.0, -30.0], [0.5, 2.0]], requires_grad=True)
    low = torch.tensor([-1.0, -math.inf])
    high = torch.tensor([1.0, 1.0])
    total, per_dim = executed_entropy(mean, log_std, low, high)
    rows = clipped_gaussian_entropy(mean, log_std, low, high)
    assert total.shape == () and per_dim.shape == (2,)
    torch.testing.assert_close(per_dim, rows.per_dim.mean(0))
    torch.testing.assert_close(total, rows.total.mean())
    total.backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_std.grad).all()
    with torch.no_grad():
        assert torch.isfinite(executed_entropy(mean, log_std, -1.0, 1.0).total)


def test_executed_entropy_accepts_rllib_inputs():
    inputs = torch.zeros(10, 8)
    inputs[:, 4:] = math.log(0.2)
    total, per_dim = executed_entropy(*split_diag_gaussian_inputs(inputs), low=-1.0, high=1.0)
    expected = torch.full((4,), GAUSSIAN_ENTROPY_STD_1 + math.log(0.2))
    torch.testing.assert_close(per_dim, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(total, per_dim.sum())


def test_executed_entropy_rejects_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        clipped_gaussian_entropy(torch.zeros(1), torch.zeros(1), -1.0, 1.0, resolution=0.0)
