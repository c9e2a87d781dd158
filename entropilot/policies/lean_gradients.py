"""RLlib's torch learner's gradient step with the same numbers and fewer kernel launches.

A hover policy's learner update is ~80 minibatch steps on a 64x64 net, where RLlib's per-tensor loops (two
finiteness checks per parameter, a norm per parameter for clipping, torch's per-tensor Adam on a CPU) cost as
much as the forward and backward passes; SAC's four optimizers (actor, twin critics, temperature) pay them on every
update too. `LeanGradientsMixin` keeps RLlib's semantics and batches the work:
fused Adam, one multi-tensor norm for global-norm clipping, one finiteness check per step. Measured by
`benchmarks/learner_update.py`.
"""

from collections.abc import Callable

import torch
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.torch_utils import clip_gradients

# RLlib's `compute_global_norm` bounds each norm so one overflowing tensor cannot make the total inf.
_NORM_BOUND = 10e8


def clip_gradients_foreach(gradients_dict: dict, *, grad_clip: float | None = None, grad_clip_by: str = "value"):
    """`ray.rllib.utils.torch_utils.clip_gradients`, with its global-norm mode computed by multi-tensor ops
    (the same numbers: per-tensor L2 norms bounded as RLlib bounds them, their L2 norm, one scale for all)."""
    if grad_clip is None or grad_clip_by != "global_norm":
        return clip_gradients(gradients_dict, grad_clip=grad_clip, grad_clip_by=grad_clip_by)
    grads = [g.detach() for g in gradients_dict.values() if g is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack(torch._foreach_norm(grads, 2.0)).nan_to_num(neginf=-_NORM_BOUND, posinf=_NORM_BOUND)
    total_norm = torch.linalg.vector_norm(norms, 2.0).nan_to_num(neginf=-_NORM_BOUND, posinf=_NORM_BOUND)
    coefficient = torch.clamp(grad_clip / torch.clamp(total_norm + 1e-6, min=grad_clip), max=1.0)
    torch._foreach_mul_(grads, coefficient)
    return total_norm


class LeanGradientsMixin(TorchLearner):
    """Put before the RLlib torch learner in the bases: `class L(LeanGradientsMixin, PPOTorchLearner)`."""

    def register_optimizer(self, *, optimizer, params, **kwargs) -> None:
        # Each Adam the learner builds (PPO: one per module; SAC: actor, critics, temperature), with the same
        # settings on torch's fused kernel: ~4x faster on a CPU than the per-tensor loop torch picks there by default.
        if type(optimizer) is torch.optim.Adam and not optimizer.defaults["fused"]:
            optimizer = torch.optim.Adam(params, **{**optimizer.defaults, "foreach": None, "fused": True})
        super().register_optimizer(optimizer=optimizer, params=params, **kwargs)

    @staticmethod
    def _get_clip_function() -> Callable:
        return clip_gradients_foreach

    def apply_gradients(self, gradients_dict) -> None:
        # RLlib checks every tensor twice for nan/inf before stepping. A tensor's norm is finite only if all its
        # entries are, so one multi-tensor norm tells the usual case apart; anything else (a nan, an inf, a norm
        # that overflows, RLlib's grad scalers or torch lr schedulers) takes RLlib's own path unchanged.
        grads = [g for g in gradients_dict.values() if g is not None]
        if (
            not grads
            or self._grad_scalers is not None
            or self._lr_scheduler_classes is not None
            or not bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
        ):
            super().apply_gradients(gradients_dict)
            return
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = grad
        for module_id, optimizer_names in self._module_optimizers.items():
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()


def with_rllib_gradients(learner_class: type) -> type:
    """``learner_class`` with RLlib's own optimizer, clipping and gradient step in place of the lean ones: the
    reference the lean path is tested against (same numbers) and benchmarked against (its time)."""
    return type(
        f"RLlibGradients{learner_class.__name__}",
        (learner_class,),
        {
            "register_optimizer": Learner.register_optimizer,
            "_get_clip_function": staticmethod(TorchLearner._get_clip_function),
            "apply_gradients": TorchLearner.apply_gradients,
        },
    )
