"""PPO's loss on one minibatch: RLlib 2.60's `PPOTorchLearner.compute_loss_for_module` arithmetic, as one function of
tensors that a person can read top to bottom (as CleanRL writes it).

Why not RLlib's own: a hover update is ~80 minibatch steps on a 64x64 net, where what surrounds the forward and
backward passes costs as much as they do. RLlib's loss indexes every term by the loss mask (a copy per term),
builds the old policy's distribution whether or not the KL term is on, and logs six statistics into the metrics
logger on every minibatch, although they are logged with window 1, so only the last minibatch's are ever read.
Here the mask weighs the rows instead of selecting them, the statistics are returned (detached) for the learner to
log once per update, and the value is the same: tests/test_ppo_loss.py holds it to RLlib's on the same minibatch.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor


class PPOLoss(NamedTuple):
    """The minibatch's loss and its parts (means over the valid rows; the parts are detached)."""

    total: Tensor
    policy: Tensor  # -E[min(A r, A clip(r))]: PPO's clipped surrogate, whatever `policy_term` replaced it with
    vf: Tensor  # E[min((V - V_target)^2, vf_clip_param)]
    vf_unclipped: Tensor
    entropy: Tensor
    kl: Tensor  # E[KL(old || new)], 0 without the KL term


def ppo_loss(
    *,
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    entropy: Tensor,
    values: Tensor | None,
    value_targets: Tensor,
    mask: Tensor | None,
    clip_param: float,
    vf_clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    kl: Tensor | None = None,
    kl_coeff: float = 0.0,
    policy_term: Tensor | None = None,
) -> PPOLoss:
    """Per row: ratio r = exp(logp - logp_old), surrogate min(A r, A clip(r, 1 +- clip_param)), value error
    (V - V_target)^2 clipped at `vf_clip_param`, entropy, KL; averaged over the rows `mask` marks valid (all rows
    without one). `values` None: no critic (its terms are 0). `policy_term` (a scalar, e.g. Clip-Cov's) stands in
    for the surrogate's mean in the total; the surrogate is still reported as `policy`.

        total = policy_term or -E[surrogate] + vf_loss_coeff E[clipped value error] - entropy_coeff E[entropy]
                + kl_coeff E[KL]
    """
    if mask is None:

        def mean(x: Tensor) -> Tensor:
            return x.mean()

    else:
        weights = mask.to(logp.dtype) / mask.sum()

        def mean(x: Tensor) -> Tensor:
            return (x * weights).sum()

    ratio = torch.exp(logp - logp_old)
    surrogate = torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_param, 1 + clip_param))
    policy = -mean(surrogate)
    if values is None:
        vf = vf_unclipped = torch.zeros((), dtype=logp.dtype, device=logp.device)
    else:
        error = (values - value_targets) ** 2
        vf_unclipped = mean(error)
        # No clamp (vf_clip_param inf: the recipe's) is the unclamped mean itself, one term less to backpropagate.
        vf = mean(torch.clamp(error, 0, vf_clip_param)) if math.isfinite(vf_clip_param) else vf_unclipped
    # A zero coefficient adds nothing to the gradient: its term is left out of the graph, the entropy still reported.
    mean_entropy = mean(entropy if entropy_coeff else entropy.detach())
    mean_kl = mean(kl) if kl is not None else torch.zeros((), dtype=logp.dtype, device=logp.device)
    total = policy if policy_term is None else policy_term
    total = total + vf_loss_coeff * vf
    if entropy_coeff:
        total = total - entropy_coeff * mean_entropy
    if kl is not None:
        total = total + kl_coeff * mean_kl
    return PPOLoss(total, policy.detach(), vf.detach(), vf_unclipped.detach(), mean_entropy.detach(), mean_kl.detach())
