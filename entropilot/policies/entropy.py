"""Entropy of the policy's action distributions (diagonal Gaussian, tanh-squashed Gaussian, categorical)
and the effective entropy of the clipped action the environment executes. Plain torch: differentiable, no Ray."""

import math
from collections.abc import Sequence
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from entropilot.policies.entropy_range import CATEGORICAL, HALF_LOG_2PI_E, RESOLUTION, categorical_sizes

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
    per_dim = HALF_LOG_2PI_E + log_std
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
    per_dim = HALF_LOG_2PI_E + log_std + log_jacobian.mean(0)
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


def effective_entropy(
    mean: Tensor, log_std: Tensor, low: float | Tensor, high: float | Tensor, resolution: float = RESOLUTION
) -> EntropyEstimate:
    """Per row: the entropy of a Gaussian with the variance of the executed action y = clip(x, low, high),
    x ~ N(mean, exp(log_std)^2), in half-widths r = (high - low) / 2 of the box, per dimension

        h = 1/2 log(2 pi e) + 1/2 log(Var[y] / r^2 + resolution^2).

    Why this measure (the one the init threshold and the controller use by default):
    - it is the Gaussian entropy 1.42 + log std while the bounds do not bite (std up to ~0.3 with a
      centred mean), so a value reads as a per-dimension std: `entropy_range.std_per_dim`;
    - it rises with std for every mean (the executed action spreads more; checked on a grid of means
      -8..8 and stds 1e-5..1e4 by the tests) and falls as the mean moves past a bound, so more
      exploration always scores more;
    - mass beyond a bound counts as sitting on the bound, not as exploration: a mean pinned past a bound
      scores like a deterministic policy, however wide the Gaussian;
    - it is bounded: Var[y] <= r^2, so h <= 1.42 per dimension, approached by a policy that executes
      either bound with equal odds (`entropy_range.measure_range`). A target above that is unreachable.
    The true entropy of y is none of this: it peaks near std 0.45 and falls for wider Gaussians, which
    execute nearly bang-bang (two atoms), so it is not monotone in exploration. `resolution` floors the
    std (an actuator's resolution) so a deterministic policy scores 1.42 + log(resolution), not -inf.

    Closed form, with c = clip(mean, low, high), m = mean - c, alpha = (low - mean)/std,
    beta = (high - mean)/std and the moments of y - c (centred near where y concentrates, so a nearly
    deterministic action does not cancel digits away):
        E[(y-c)^k] = (low-c)^k Phi(alpha) + (high-c)^k (1 - Phi(beta)) + int_alpha^beta (m + std z)^k phi(z) dz,
        int (m + std z) phi = m p + std (phi(alpha) - phi(beta)),
        int (m + std z)^2 phi = m^2 p + 2 m std (phi(alpha) - phi(beta))
                                + std^2 (p + alpha phi(alpha) - beta phi(beta)),
    with p = Phi(beta) - Phi(alpha); computed in float64. An infinite bound clips nothing on its side and
    makes r = 1 (the action's own units). Dimensions add: `total` is the sum of `per_dim`.
    """
    if not resolution > 0:
        raise ValueError(f"resolution must be > 0; got {resolution}")
    dtype = mean.dtype
    mean, log_std = mean.double(), log_std.double()
    low, high = (
        torch.as_tensor(bound, dtype=torch.float64, device=mean.device).clamp(-_UNBOUNDED, _UNBOUNDED)
        for bound in (low, high)
    )
    bounded = (low > -_UNBOUNDED) & (high < _UNBOUNDED)
    half_width = torch.where(bounded, (high - low) / 2, torch.ones_like(low))
    std = log_std.exp()
    centre = torch.minimum(torch.maximum(mean, low), high)
    offset, below, above = mean - centre, low - centre, high - centre
    alpha = ((low - mean) / std).clamp(-_Z_MAX, _Z_MAX)
    beta = ((high - mean) / std).clamp(-_Z_MAX, _Z_MAX)
    p_low, p_high = torch.special.ndtr(alpha), torch.special.ndtr(-beta)
    p_in = torch.special.ndtr(beta) - p_low
    pdf_alpha, pdf_beta = _std_normal_pdf(alpha), _std_normal_pdf(beta)
    inner_1 = offset * p_in + std * (pdf_alpha - pdf_beta)
    inner_2 = (
        offset**2 * p_in
        + 2 * offset * std * (pdf_alpha - pdf_beta)
        + std**2 * (p_in + alpha * pdf_alpha - beta * pdf_beta)
    )
    # The atoms sit at infinity only for unbounded sides, where their mass is 0 (0 * 1e30 = 0).
    moment_1 = below * p_low + above * p_high + inner_1
    moment_2 = below**2 * p_low + above**2 * p_high + inner_2
    # Var of a value in [low, high] lies in [0, half_width^2] (Popoviciu); rounding can step just outside.
    variance = (moment_2 - moment_1**2).clamp_min(0.0)
    variance = torch.where(bounded, torch.minimum(variance, half_width**2), variance)
    per_dim = (HALF_LOG_2PI_E + 0.5 * torch.log(variance / half_width**2 + resolution**2)).to(dtype)
    return EntropyEstimate(per_dim.sum(-1), per_dim)


def policy_bounds(action_space: gym.spaces.Box, normalize_actions: bool) -> tuple[Tensor, Tensor]:
    """The bounds the env clips actions to, in the policy's own units: [-1, 1] with RLlib's default
    `normalize_actions=True` (its module-to-env connector maps [-1, 1] affinely onto the Box, then clips),
    else the Box's bounds (the env or RLlib's `clip_actions` clips)."""
    low, high = np.asarray(action_space.low, dtype=np.float64), np.asarray(action_space.high, dtype=np.float64)
    if normalize_actions and np.all(action_space.bounded_below) and np.all(action_space.bounded_above):
        low, high = -np.ones_like(low), np.ones_like(high)
    return torch.as_tensor(low.reshape(-1)), torch.as_tensor(high.reshape(-1))


def measured_entropies(
    action_dist_inputs: Tensor, action_space: gym.spaces.Space, normalize_actions: bool
) -> dict[str, Tensor]:
    """Per sample and action dimension or sub-action (rows x dims), each entropy of the policy that
    `action_dist_inputs` (RLlib's distribution parameters) describe on `action_space`, by name.

    Box (RLlib's diagonal Gaussian): `gaussian` (closed form, the one PPO's entropy term acts on) and
    `effective` (`effective_entropy`). Discrete/MultiDiscrete (RLlib's (multi-)categorical): `categorical`, one
    column per sub-action (`multi_categorical_entropy`); there is nothing to clip, so it is every measure's
    (`entropy_range.entropy_key`).
    """
    sizes = categorical_sizes(action_space)
    if sizes is not None:
        return {CATEGORICAL: multi_categorical_entropy(action_dist_inputs, sizes).per_dim}
    if isinstance(action_space, gym.spaces.Box):
        mean, log_std = split_diag_gaussian_inputs(action_dist_inputs)
        low, high = (bound.to(mean.device) for bound in policy_bounds(action_space, normalize_actions))
        return {
            "gaussian": diag_gaussian_entropy(log_std).per_dim,
            "effective": effective_entropy(mean, log_std, low, high).per_dim,
        }
    raise ValueError(f"no entropy measures for action space {action_space}; supported: Box, Discrete, MultiDiscrete")


def _std_normal_pdf(z: Tensor) -> Tensor:
    return _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
