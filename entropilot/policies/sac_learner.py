"""RLlib SAC learner whose checkpoints keep the learned temperature (log alpha), so auto-tuned
entropy regularization resumes where it was instead of restarting at `initial_alpha`, and whose gradient step is
RLlib's with one backward pass and fused optimizers (the same update, in less time)."""

import torch
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override

from entropilot.policies.lean_gradients import LeanGradientsMixin, with_rllib_gradients
from entropilot.rllib_internals import drop_sac_component_losses

# Key of the per-module log alpha inside `Learner.get_state()`.
LOG_ALPHA_STATE = "curr_log_alpha"


# RLlib 2.60's SACTorchLearner inherits two remove_module signatures (SACLearner's, TorchLearner's) that mypy reads
# as incompatible; naming TorchLearner again through the mixin makes mypy check them here.
class ResumableSACLearner(LeanGradientsMixin, SACTorchLearner):  # type: ignore[misc]
    """Stock RLlib 2.60 keeps `curr_log_alpha` outside the RLModule and outside `get_state()`: the
    alpha optimizer's moments are checkpointed, the value they act on is not, and a restored run
    starts again from `initial_alpha`. We add it to the state and load it in place, because the
    registered alpha optimizer holds that very tensor.

    Gradients: RLlib runs one backward pass per optimizer (critic, twin critic, actor, temperature), each over its
    own loss with the graph retained. A module's SAC loss is the sum of those four, and each depends on its own
    optimizer's parameters only (the others enter it detached, or with `requires_grad` off), so one backward pass of
    the sum gives every parameter the gradient of its own loss: the same gradients (`tests/test_sac_replay.py`)."""

    @override(SACTorchLearner)
    def compute_gradients(self, loss_per_module, **kwargs):
        drop_sac_component_losses(self)
        return TorchLearner.compute_gradients(self, loss_per_module, **kwargs)

    @override(SACTorchLearner)
    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(LOG_ALPHA_STATE, components, not_components):
            state[LOG_ALPHA_STATE] = {
                module_id: log_alpha.detach().cpu().tolist() for module_id, log_alpha in self.curr_log_alpha.items()
            }
        return state

    @override(SACTorchLearner)
    def set_state(self, state) -> None:
        super().set_state(state)
        for module_id, value in state.get(LOG_ALPHA_STATE, {}).items():
            log_alpha = self.curr_log_alpha[module_id]
            assert isinstance(log_alpha, torch.Tensor)  # RLlib types it for any framework; the torch learner's
            with torch.no_grad():
                log_alpha.copy_(torch.as_tensor(value, dtype=log_alpha.dtype))


def with_rllib_sac_gradients(learner_class: type) -> type:
    """``learner_class`` with RLlib's own SAC gradient step (a backward pass per optimizer, per-tensor Adam and
    checks): the reference the lean step is tested and benchmarked against."""
    reference = with_rllib_gradients(learner_class)
    return type(reference.__name__, (reference,), {"compute_gradients": SACTorchLearner.compute_gradients})
