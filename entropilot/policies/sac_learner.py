"""RLlib SAC learner whose checkpoints keep the learned temperature (log alpha), so auto-tuned
entropy regularization resumes where it was instead of restarting at `initial_alpha`."""

import torch
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.utils.annotations import override

# Key of the per-module log alpha inside `Learner.get_state()`.
LOG_ALPHA_STATE = "curr_log_alpha"


class ResumableSACLearner(SACTorchLearner):
    """Stock RLlib 2.60 keeps `curr_log_alpha` outside the RLModule and outside `get_state()`: the
    alpha optimizer's moments are checkpointed, the value they act on is not, and a restored run
    starts again from `initial_alpha`. We add it to the state and load it in place, because the
    registered alpha optimizer holds that very tensor."""

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
