"""Clip-Cov and KL-Cov (Cui et al. 2025, arXiv 2505.22617) as the authors' reference code computes them, and
their per-action-dimension analogue for Gaussian policies. Pure torch: each returns the policy-loss term
that replaces PPO's clipped surrogate.

Reference: github.com/PRIME-RL/Entropy-Mechanism-of-RL at 88505792, verl/trainer/ppo/core_algos.py,
`compute_policy_loss_kl_cov` (lines 426-467) and `compute_policy_loss_clip_cov` (lines 469-518).

Why: to first order a policy-gradient step lowers the entropy by the covariance between a sample's
log-probability and its advantage, so the few samples where (logp - mean logp)(A - mean A) is large drive
entropy collapse. Per sample, with means over the valid samples of the minibatch:
    cov = (A - mean A) * (logp - mean logp),  ratio = exp(logp - logp_old).
- Clip-Cov: among valid samples that PPO did not clip (-A*clip(ratio) > -A*ratio) and whose cov lies
  strictly inside (lower, upper), pick max(int(fraction * N), 1) at random (a seeded generator here, the
  global one there) and zero their loss; every other sample keeps PPO's clipped loss max(-A*ratio,
  -A*clip(ratio)); the mean runs over all N valid samples.
- KL-Cov: every valid sample takes the unclipped loss -A*ratio (no PPO clip at all); the top
  max(int(fraction * N), 1) samples by cov add kl_coef * |logp - logp_old|. The reference's `k_percent`
  is a percentage: its 0.2 is fraction 0.002 here.
Per dimension (`per_dimension`, Box actions): a diagonal Gaussian's log-density is a sum over dimensions,
logp = sum_i logp_i, so a (sample, dimension) pair plays the part of the reference's token. Its score is
-z_i^2 / 2 with z = (a - mean) / std: d logp_i / d log std_i = z_i^2 - 1, so a pair whose
(A - mean A)(-z_i^2/2 - mean) is large is one whose policy-gradient step shrinks std_i. (With a
state-independent std this score is logp_i up to a constant: the reference's covariance, per dimension.)
Clip-Cov stops the gradient of the selected pairs' logp_i (the sample's ratio and loss value are kept,
its other dimensions still learn); KL-Cov adds kl_coef * |logp_i - logp_old_i| for the selected pairs.
Counts are fractions of the N * d valid pairs.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

COVARIANCE_MODES = ("clip_cov", "kl_cov")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class CovarianceSettings:
    """Clip-Cov / KL-Cov settings. `fraction` of the valid samples (or sample-dimension pairs) is selected
    per minibatch, at least one: 0.02 selects 10 of hover's 512-sample minibatches (40 of their 2048 pairs).
    `lower`/`upper` bound Clip-Cov's covariance band (the reference's 1 and 5; our advantages are
    standardized per batch and a 4-dim Gaussian's logp has a spread of ~1.4 nats, so the products are of
    the order the reference saw). `seed` seeds Clip-Cov's random choice."""

    mode: str
    per_dimension: bool = False
    fraction: float = 0.02
    lower: float = 1.0
    upper: float = 5.0
    kl_coef: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.mode not in COVARIANCE_MODES:
            raise ValueError(f"covariance mode must be one of {COVARIANCE_MODES}; got {self.mode!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"covariance fraction must be in (0, 1]; got {self.fraction}")
        if not self.lower < self.upper:
            raise ValueError(f"covariance band needs lower < upper; got lower={self.lower}, upper={self.upper}")
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0; got {self.kl_coef}")


class CovarianceLoss(NamedTuple):
    """The policy-loss term, which samples (or sample-dimension pairs) it selected, and how many were eligible
    (Clip-Cov: inside the band and not clipped by PPO; KL-Cov: all valid)."""

    loss: Tensor
    selected: Tensor
    num_candidates: int


def centered_covariance(score: Tensor, advantages: Tensor, valid: Tensor) -> Tensor:
    """(A - mean A) * (score - mean score) per sample (per column of a [N, d] score), means over the valid
    samples; -inf on invalid ones, so neither a band nor a top-k can pick them."""
    score = score.detach()
    adv = advantages.detach()
    num_valid = valid.sum()
    adv_mean = adv[valid].sum() / num_valid
    score_mean = score[valid].sum(0) / num_valid
    centred_adv = adv - adv_mean
    if score.dim() == 2:
        centred_adv, valid = centred_adv.unsqueeze(-1), valid.unsqueeze(-1)
    covariance = centred_adv * (score - score_mean)
    return torch.where(valid, covariance, torch.full_like(covariance, -math.inf))


def _covariance_of(logp: Tensor, joint_logp: Tensor, score: Tensor | None) -> Tensor:
    """What is correlated with the advantage: the score [N, d] of a per-dimension `logp` [N, d], else the joint
    log-probability [N]."""
    if logp.dim() != 2:
        return joint_logp
    if score is None:
        raise ValueError(f"a per-dimension logp {list(logp.shape)} needs its score [N, d] (-z^2/2)")
    return score


def clip_cov_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    valid: Tensor,
    settings: CovarianceSettings,
    clip_param: float,
    generator: torch.Generator,
    score: Tensor | None = None,
) -> CovarianceLoss:
    """Clip-Cov. `logp` is [N] (per sample), or [N, d] per dimension with `score` [N, d] (-z^2/2)."""
    per_dimension = logp.dim() == 2
    joint_logp = logp.sum(-1) if per_dimension else logp
    ratio = torch.exp(joint_logp - logp_old)
    ppo_clipped = _ppo_clipped(ratio, advantages, clip_param) & valid
    covariance = centered_covariance(_covariance_of(logp, joint_logp, score), advantages, valid)
    eligible = valid & ~ppo_clipped
    if per_dimension:
        eligible = eligible.unsqueeze(-1)
    candidates = eligible & (covariance > settings.lower) & (covariance < settings.upper)
    selected = _random_subset(candidates, _num_selected(settings.fraction, covariance), generator)
    if per_dimension:
        kept = torch.where(selected, logp.detach(), logp).sum(-1)
        losses = _ppo_losses(torch.exp(kept - logp_old), advantages, clip_param)
    else:
        losses = _ppo_losses(ratio, advantages, clip_param) * (~selected)
    return CovarianceLoss(_valid_mean(losses, valid), selected, int(candidates.sum()))


def kl_cov_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    valid: Tensor,
    settings: CovarianceSettings,
    score: Tensor | None = None,
) -> CovarianceLoss:
    """KL-Cov. `logp` and `logp_old` are [N], or [N, d] per dimension with `score` [N, d] (-z^2/2)."""
    per_dimension = logp.dim() == 2
    joint = logp.sum(-1) if per_dimension else logp
    joint_old = logp_old.sum(-1) if per_dimension else logp_old
    losses = -advantages * torch.exp(joint - joint_old)
    covariance = centered_covariance(_covariance_of(logp, joint, score), advantages, valid)
    top = torch.topk(covariance.reshape(-1), _num_selected(settings.fraction, covariance)).indices
    selected = torch.zeros(covariance.numel(), dtype=torch.bool, device=covariance.device)
    selected[top] = True
    selected = selected.reshape(covariance.shape)
    penalty = settings.kl_coef * (logp - logp_old).abs() * selected
    losses = losses + (penalty.sum(-1) if per_dimension else penalty)
    candidates = valid.sum() * (covariance.shape[-1] if per_dimension else 1)
    return CovarianceLoss(_valid_mean(losses, valid), selected, int(candidates))


def gaussian_logp_per_dim(mean: Tensor, log_std: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension log-density of `actions` under N(mean, exp(log_std)^2) and the standardized action
    z = (a - mean) / std: logp_i = -z_i^2/2 - log std_i - 1/2 log(2 pi); their sum is the joint logp."""
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * z * z - log_std - _HALF_LOG_2PI, z


def _num_selected(fraction: float, covariance: Tensor) -> int:
    """max(int(fraction * number of valid entries), 1), as the reference counts."""
    return max(int(fraction * int(torch.isfinite(covariance).sum())), 1)


def _random_subset(candidates: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """A mask of `count` entries of `candidates` drawn uniformly without replacement (all, if fewer)."""
    indices = torch.nonzero(candidates.reshape(-1)).squeeze(-1)
    order = torch.randperm(len(indices), generator=generator).to(indices.device)
    chosen = indices[order[:count]]
    selected = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    selected[chosen] = True
    return selected.reshape(candidates.shape)


def _ppo_clipped(ratio: Tensor, advantages: Tensor, clip_param: float) -> Tensor:
    """Where PPO's clipped term is the larger loss, i.e. the clip is active (the reference's clip_by_origin)."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_param, 1 + clip_param)
    return clipped > unclipped


def _ppo_losses(ratio: Tensor, advantages: Tensor, clip_param: float) -> Tensor:
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_param, 1 + clip_param))


def _valid_mean(values: Tensor, valid: Tensor) -> Tensor:
    return values[valid].sum() / valid.sum()
