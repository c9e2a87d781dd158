"""Entropy of the policy's action distributions (diagonal Gaussian, tanh-squashed Gaussian, categorical)
and of the clipped action the environment actually executes. Plain torch: differentiable, no Ray."""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)
# Beyond 40 standard deviations every tail probability underflows even in float64; clamping the
# standardized bounds there keeps values unchanged and keeps inf * 0 out of the backward pass.
_Z_MAX = 40.0
# Infinite Box bounds become this finite stand-in for the same reason (no action is this large).
_UNBOUNDED = 1e15


class EntropyEstimate(NamedTuple):
    """Entropy in nats: `total` sums the action dimensions, `per_dim` keeps them (last axis)."""

    total: Tensor
    per_dim: Tensor


def split_diag_gaussian_inputs(action_dist_inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Split RLlib's TorchDiagGaussian parameters, `[mean, log_std]` concatenated on the last axis."""
    if action_dist_inputs.shape[-1] % 2:
        raise ValueError(
            f"action_dist_inputs must have an even last axis ([mean, log_std]); got shape "
            f"{tuple(action_dist_inputs.shape)}"
        )
    mean, log_std = action_dist_inputs.chunk(2, dim=-1)
    return mean, log_std


def diag_gaussian_entropy(log_std: Tensor) -> EntropyEstimate:
    """Closed-form entropy of a diagonal Gaussian: 1/2 log(2 pi e) + log_std per dimension.

    The mean does not enter: shifting a distribution does not change its entropy.
    """
    per_dim = _HALF_LOG_2PI_E + log_std
    return EntropyEstimate(per_dim.sum(-1), per_dim)


def squashed_gaussian_entropy(
    mean: Tensor, log_std: Tensor, num_samples: int = 64, generator: torch.Generator | None = None
) -> EntropyEstimate:
    """Sampled entropy of a = tanh(u), u ~ N(mean, exp(log_std)^2), per row of the batch.

    By change of variables log p(a) = log N(u) - log(1 - tanh(u)^2), so
        H(a) = -E[log p(a)] = H(u) + E[log(1 - tanh(u)^2)].
    H(u) is taken in closed form and only the Jacobian term is sampled: the same expectation as
    averaging -log p(a) over samples, without the sampling noise of the Gaussian part.
    Dimensions are independent and tanh acts on each alone, so `per_dim` is the entropy of each
    squashed marginal and `total` is exactly their sum. Samples are reparameterized, so gradients
    reach mean and log_std.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    shape = torch.broadcast_shapes(mean.shape, log_std.shape)
    noise = torch.randn((num_samples, *shape), generator=generator, dtype=mean.dtype, device=mean.device)
    u = mean + log_std.exp() * noise
    # log(1 - tanh(u)^2) = log(sech(u)^2), written so it neither overflows nor hits log(0) for large |u|.
    log_jacobian = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    per_dim = _HALF_LOG_2PI_E + log_std + log_jacobian.mean(0)
    return EntropyEstimate(per_dim.sum(-1), per_dim)


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy of a categorical distribution from unnormalized logits; -inf logits (masked actions) add 0."""
    log_p = torch.log_softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).min)
    return -(log_p.exp() * log_p).sum(-1)


def multi_categorical_entropy(logits: Tensor, sizes: Sequence[int]) -> EntropyEstimate:
    """Entropy of independent categorical sub-actions (a MultiDiscrete action; a Discrete one is one sub-action)
    from their logits concatenated on the last axis, as RLlib's (Multi)Categorical takes them: `per_dim` holds each
    sub-action's entropy (at most log K_i nats), `total` their sum (the joint entropy, as they are independent)."""
    if logits.shape[-1] != sum(sizes):
        raise ValueError(
            f"logits have {logits.shape[-1]} entries on the last axis; sub-action sizes {list(sizes)} need {sum(sizes)}"
        )
    per_dim = torch.stack([categorical_entropy(part) for part in logits.split(list(sizes), dim=-1)], dim=-1)
    return EntropyEstimate(per_dim.sum(-1), per_dim)


def max_categorical_entropy(sizes: Sequence[int]) -> float:
    """The largest entropy independent categorical sub-actions of these sizes can have: sum of log K_i nats
    (every sub-action uniform)."""
    return float(sum(math.log(k) for k in sizes))


def clipped_gaussian_entropy(
    mean: Tensor,
    log_std: Tensor,
    low: float | Tensor,
    high: float | Tensor,
    resolution: float = 1e-3,
) -> EntropyEstimate:
    """Entropy of the executed action y = clip(x, low, high), x ~ N(mean, exp(log_std)^2), per row.

    Why: the env clips, so a Gaussian whose mean sits past a bound acts deterministically however
    wide it is; the Gaussian entropy would report it as exploring.

    Per dimension, with alpha = (low - mean)/std, beta = (high - mean)/std, y is a mixture of
        an atom at low with mass p_low = Phi(alpha), an atom at high with p_high = 1 - Phi(beta),
        the Gaussian density f on (low, high) with mass p_in = Phi(beta) - Phi(alpha).
    Definition. Quantize y at the actuator resolution D (same units as the action) and add log D,
    which puts it on the scale of differential entropy; as D -> 0 with std >> D this is
        H = -p_low log(p_low / D) - p_high log(p_high / D) - integral_low^high f log f dy
          = H(below, inside, above) + p_in * h(truncated Gaussian) + (p_low + p_high) * log D,
    the entropy of y's density w.r.t. Lebesgue measure on (low, high) plus atoms of weight D at the
    bounds. Why D: with D = 1 an atom is worth 0 nats while a centered Gaussian is worth
    log std + 1.42, negative once std < 0.24, so a saturated policy would out-score a centered one.
    With D, an action pinned to a bound is worth log D, the same as a Gaussian of std ~ D/4:
    deterministic is deterministic.
    Closed form. -log f = log std + 1/2 log(2 pi) + z^2/2 and
    integral_alpha^beta z^2 phi(z) dz = p_in + alpha phi(alpha) - beta phi(beta), hence
        -integral f log f = p_in (log std + 1/2 log(2 pi e)) + 1/2 (alpha phi(alpha) - beta phi(beta)).
    Limits. Bounds -> +-inf: the Gaussian entropy. Mean far past a bound: log D. std -> 0 with the mean
    inside: the Gaussian entropy (-> -inf). Not monotone in std, rightly: a very wide Gaussian on a
    bounded box executes nearly bang-bang (two atoms), which is close to deterministic.
    Dimensions are independent, so `total` is the sum of `per_dim`.
    """
    if not resolution > 0:
        raise ValueError(f"resolution must be > 0; got {resolution}")
    low, high = (
        torch.as_tensor(bound, dtype=mean.dtype, device=mean.device).clamp(-_UNBOUNDED, _UNBOUNDED)
        for bound in (low, high)
    )
    inv_std = torch.exp(-log_std)
    alpha = ((low - mean) * inv_std).clamp(-_Z_MAX, _Z_MAX)
    beta = ((high - mean) * inv_std).clamp(-_Z_MAX, _Z_MAX)
    # A floor of `tiny` keeps log(p) finite (and its gradient defined) when a tail underflows to 0.
    tiny = torch.finfo(mean.dtype).tiny
    p_low = torch.special.ndtr(alpha).clamp_min(tiny)
    p_high = torch.special.ndtr(-beta).clamp_min(tiny)
    p_in = torch.special.ndtr(beta) - torch.special.ndtr(alpha)
    log_resolution = math.log(resolution)
    atoms = -p_low * (p_low.log() - log_resolution) - p_high * (p_high.log() - log_resolution)
    interior = p_in * (_HALF_LOG_2PI_E + log_std) + 0.5 * (
        alpha * _std_normal_pdf(alpha) - beta * _std_normal_pdf(beta)
    )
    per_dim = atoms + interior
    return EntropyEstimate(per_dim.sum(-1), per_dim)


def executed_entropy(
    mean: Tensor,
    log_std: Tensor,
    low: float | Tensor,
    high: float | Tensor,
    resolution: float = 1e-3,
) -> EntropyEstimate:
    """Batch mean of `clipped_gaussian_entropy`: `total` is a scalar, `per_dim` has shape [act_dim]."""
    per_dim = clipped_gaussian_entropy(mean, log_std, low, high, resolution).per_dim
    per_dim = per_dim.reshape(-1, per_dim.shape[-1]).mean(0)
    return EntropyEstimate(per_dim.sum(), per_dim)


def _std_normal_pdf(z: Tensor) -> Tensor:
    return _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
