"""RLlib PPO learner that measures policy entropy every update and steers PPO's entropy coefficient
toward a target entropy; optionally applies Clip-Cov / KL-Cov to the policy-gradient term."""

import gymnasium as gym
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.lambda_defaultdict import LambdaDefaultDict
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from entropilot.policies.entropy import (
    clipped_gaussian_entropy,
    diag_gaussian_entropy,
    multi_categorical_entropy,
    split_diag_gaussian_inputs,
)
from entropilot.policies.entropy_control import EntropyCoefficientController
from entropilot.policies.entropy_init import categorical_sizes, gaussian_in_env_units

# Keys of `config.learners(learner_config_dict=...)` this learner reads.
ENTROPY_CONTROL = "entropy_control"
COVARIANCE_CONTROL = "covariance_control"
# Keys of the controllers' state and of their live-tuned settings inside `Learner.get_state()`.
CONTROLLER_STATE = "entropy_controllers"
LIVE_SETTINGS_STATE = "entropy_control_live_settings"
MEASURES = ("gaussian", "executed")


class ControlledEntropyCoefficient:
    """Stands in for RLlib's entropy `Scheduler`: PPO's loss reads `get_current_value()` and
    `PPOLearner.after_gradient_based_update` calls `update()` once per `Learner.update()` and logs
    the result as `curr_entropy_coeff`. The value always comes from the controller."""

    def __init__(self, controller: EntropyCoefficientController):
        self.controller = controller

    def get_current_value(self) -> float:
        return self.controller.coefficient

    def update(self, timestep: int) -> float:
        return self.controller.coefficient


class EntropyControlledPPOLearner(PPOTorchLearner):
    """PPO learner with entropy measurement, entropy-coefficient control and optional Clip-Cov/KL-Cov.

    Configure through `config.learners(learner_config_dict={...})`:

    - `"entropy_control"`: keyword arguments of `EntropyCoefficientController` (`target`,
      `initial_coef`, `coef_min`, ...) plus `"measure"`: `"gaussian"` (default; closed-form entropy
      of the diagonal Gaussian, what PPO's own loss uses) or `"executed"` (entropy of the action
      after the env clips it to its Box, see `entropy.clipped_gaussian_entropy`). When present,
      PPO's `entropy_coeff` is ignored: one controller per module sets the coefficient instead.
      Absent: PPO's stock entropy scheduler runs unchanged; entropy is still measured and logged.
    - `"covariance_control"`: `{"mode": "clip_cov" | "kl_cov", "fraction": 0.002, "kl_coef": 1.0}`
      (Cui et al. 2025, arXiv 2505.22617). Entropy collapses through samples whose log-probability
      and advantage covary strongly: the policy-gradient step on them sharpens the policy most.
      Per minibatch we take the centered product (logp - mean logp)(A - mean A) per sample and
      select the top `fraction` (at least one sample; the paper's Clip-Cov draws them at random
      from a covariance band, here both modes take the top, as KL-Cov does). `clip_cov` removes
      their policy-gradient term (the loss value is unchanged, their gradient is zero); `kl_cov` adds
      `kl_coef * 0.5 * (logp - logp_old)^2` (the k2 KL estimate) on them, averaged like PPO's loss.
      For continuous actions logp is the diagonal Gaussian log-density summed over action dims.

    Measurement: in every minibatch of an `update()` the loss already holds the current policy's
    `action_dist_inputs`; we accumulate their per-dimension entropy over the valid (unmasked)
    samples, so the measured value is the mean entropy of the policy on this iteration's batch
    while it is being optimized. `after_gradient_based_update` (once per `update()`, i.e. once per
    training iteration) feeds it to the controller before PPO's own hook reads the coefficient,
    so the coefficient logged as `curr_entropy_coeff` is the one the next update's loss uses.

    Several learners (`num_learners > 1`): each learner only sees its shard of the batch. RLlib
    starts remote learners as a torch.distributed process group (Ray Train's TorchConfig: gloo on
    CPU, NCCL on GPU) and wraps modules in DDP, and PPO's `update()` runs in lockstep on all of
    them. So we all-reduce the entropy sums and sample counts inside `after_gradient_based_update`:
    every learner feeds its controller the same sample-weighted global mean and the controllers stay
    identical, which is also what makes the state saved from learner 0 correct for all of them.
    Driver-side averaging (read the reduced entropy in `on_train_result`, push one coefficient with
    `learner_group.foreach_learner`) would also work, but costs a round trip per iteration and
    moves the controller out of the learner state that checkpoints already carry.

    Live tuning: `retune_entropy_control(settings)` changes every controller's target and
    bounds/gains in place (see `EntropyCoefficientController.retune`), also for modules whose
    controller is created later; the settings are part of `get_state`, so a checkpoint keeps them.

    Categorical policies (Discrete, MultiDiscrete actions): the measured entropy is the categorical one,
    `entropy_categorical` with one `_dim{i}` part per sub-action (each at most log K_i nats), and the
    controller follows it whatever `measure` says (there is nothing to clip).

    Metrics, per module and iteration: `entropy_gaussian`, `entropy_executed` and their
    `_dim{i}` parts (Box actions) or `entropy_categorical` and its parts, and with control on
    `entropy_target` and `curr_entropy_coeff`; with covariance control `cov_num_selected` and
    `cov_threshold`.
    """

    def build(self) -> None:
        super().build()
        control = dict(self.config.learner_config_dict.get(ENTROPY_CONTROL) or {})
        self._measure = control.pop("measure", "gaussian")
        if self._measure not in MEASURES:
            raise ValueError(f"entropy_control.measure must be one of {MEASURES}; got {self._measure!r}")
        self._controlled = bool(control)
        self._live_settings = {}
        if self._controlled:
            # Replaces PPOLearner's per-module Scheduler dict; the loss and the PPO hook use it as-is.
            self.entropy_coeff_schedulers_per_module = LambdaDefaultDict(
                lambda module_id: ControlledEntropyCoefficient(self._new_controller(control))
            )
        self._cov = _covariance_settings(self.config.learner_config_dict.get(COVARIANCE_CONTROL))
        self._entropy_sums = {}

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if module_id not in self._measured_module_ids():
            return loss
        module = self.module[module_id].unwrapped()
        mask = batch.get(Columns.LOSS_MASK)
        dist_inputs = fwd_out[Columns.ACTION_DIST_INPUTS]
        with torch.no_grad():
            self._accumulate_entropy(module_id, module.action_space, dist_inputs, mask)
        if self._cov is not None:
            loss = loss + self._covariance_term(module_id, module, config, batch, dist_inputs, mask)
        return loss

    def after_gradient_based_update(self, *, timesteps) -> None:
        env_steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        for module_id, measures in self._global_entropy_means().items():
            for name, per_dim in measures.items():
                self.metrics.log_value((module_id, f"entropy_{name}"), per_dim.sum().item(), window=1)
                for i, value in enumerate(per_dim.tolist()):
                    self.metrics.log_value((module_id, f"entropy_{name}_dim{i}"), value, window=1)
            if self._controlled:
                controller = self.entropy_coeff_schedulers_per_module[module_id].controller
                measured = measures.get("categorical", measures.get(self._measure)).sum().item()
                controller.update(measured, env_steps)
                self.metrics.log_value((module_id, "entropy_target"), controller.target(env_steps), window=1)
        # PPO's hook now reads the new coefficient via `ControlledEntropyCoefficient.update()`.
        super().after_gradient_based_update(timesteps=timesteps)

    def retune_entropy_control(self, settings: dict) -> None:
        """Give every module's controller new settings (`EntropyCoefficientController.retune` keywords),
        keeping its integrator state. Settings given earlier and not named again stay."""
        if not self._controlled:
            raise ValueError("entropy control is off on this learner: there is no controller to retune")
        # Touching each module creates its controller, so none misses the change; the first retune
        # checks the settings before any controller changes (they all get the same ones).
        for module_id in sorted(self.module.keys()):
            self.entropy_coeff_schedulers_per_module[module_id].controller.retune(**settings)
        self._live_settings = {**self._live_settings, **settings}

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._controlled and self._check_component(CONTROLLER_STATE, components, not_components):
            state[CONTROLLER_STATE] = {
                module_id: scheduler.controller.state_dict()
                for module_id, scheduler in self.entropy_coeff_schedulers_per_module.items()
            }
            state[LIVE_SETTINGS_STATE] = dict(self._live_settings)
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if self._controlled and CONTROLLER_STATE in state:
            # Fresh controllers with the saved live settings (none in older checkpoints) replace the ones
            # running now, so nothing retuned since the checkpoint survives; then the integrator states.
            self.entropy_coeff_schedulers_per_module.clear()
            self._live_settings = dict(state.get(LIVE_SETTINGS_STATE, {}))
            for module_id, controller_state in state[CONTROLLER_STATE].items():
                self.entropy_coeff_schedulers_per_module[module_id].controller.load_state_dict(controller_state)

    def _new_controller(self, control: dict) -> EntropyCoefficientController:
        controller = EntropyCoefficientController(**control)
        controller.retune(**self._live_settings)
        return controller

    def _measured_module_ids(self) -> list:
        """Modules whose entropy we measure, sorted: a diagonal Gaussian (Box actions) or categorical
        (Discrete, MultiDiscrete) policy."""
        return sorted(module_id for module_id in self.module.keys() if self._measures(module_id))

    def _measures(self, module_id) -> dict[str, int]:
        """The entropy measures of a module's policy and the per-dimension size of each (empty: none)."""
        action_space = self.module[module_id].unwrapped().action_space
        sizes = categorical_sizes(action_space)
        if sizes is not None:
            return {"categorical": len(sizes)}
        if isinstance(action_space, gym.spaces.Box):
            return {"gaussian": action_space.shape[0], "executed": action_space.shape[0]}
        return {}

    def _entropy_per_dim(self, action_space, dist_inputs) -> list:
        """Per sample, each measure's per-dimension entropy, in `_measures` order."""
        sizes = categorical_sizes(action_space)
        if sizes is not None:
            return [multi_categorical_entropy(dist_inputs, sizes).per_dim]
        mean, log_std = split_diag_gaussian_inputs(dist_inputs)
        gaussian = diag_gaussian_entropy(log_std).per_dim
        executed = clipped_gaussian_entropy(
            *gaussian_in_env_units(mean, log_std, action_space, self.config.normalize_actions)
        ).per_dim
        return [gaussian, executed]

    def _accumulate_entropy(self, module_id, action_space, dist_inputs, mask) -> None:
        parts = self._entropy_per_dim(action_space, dist_inputs)
        if mask is not None:
            parts = [part[mask] for part in parts]
        sums = torch.cat([part.sum(0) for part in parts] + [parts[0].new_tensor([parts[0].shape[0]])])
        self._entropy_sums[module_id] = self._entropy_sums.get(module_id, 0) + sums

    def _global_entropy_means(self) -> dict:
        """Per module {measure: per-dim entropy mean} over all learners' samples."""
        sums, self._entropy_sums = self._entropy_sums, {}
        if _num_learner_processes() > 1:
            # Every learner must call all_reduce the same number of times, in the same order.
            for module_id in self._measured_module_ids():
                size = sum(self._measures(module_id).values()) + 1
                local = sums.get(module_id, torch.zeros(size, device=self._device))
                torch.distributed.all_reduce(local)
                sums[module_id] = local
        means = {}
        for module_id, total in sums.items():
            count = total[-1].item()
            if count > 0:
                measures = self._measures(module_id)
                parts = (total[:-1] / count).cpu().split(list(measures.values()))
                means[module_id] = dict(zip(measures, parts))
        return means

    def _covariance_term(self, module_id, module, config, batch, dist_inputs, mask):
        """Zero-valued (clip_cov) or penalty (kl_cov) term for the top-covariance samples."""
        dist = module.get_train_action_dist_cls().from_logits(dist_inputs)
        logp = dist.logp(batch[Columns.ACTIONS])
        logp_old = batch[Columns.ACTION_LOGP]
        advantages = batch[Postprocessing.ADVANTAGES]
        valid = mask if mask is not None else torch.ones_like(logp, dtype=torch.bool)
        num_valid = valid.sum()
        with torch.no_grad():
            centered_logp = logp - logp[valid].mean()
            centered_adv = advantages - advantages[valid].mean()
            covariance = torch.where(valid, centered_logp * centered_adv, torch.full_like(logp, -torch.inf))
            k = max(1, int(round(self._cov["fraction"] * num_valid.item())))
            top = torch.topk(covariance, k).indices
            selected = torch.zeros_like(valid)
            selected[top] = True
        self.metrics.log_value((module_id, "cov_num_selected"), k, window=1)
        self.metrics.log_value((module_id, "cov_threshold"), covariance[top].min().item(), window=1)
        if self._cov["mode"] == "clip_cov":
            ratio = torch.exp(logp - logp_old)
            surrogate = torch.min(
                advantages * ratio,
                advantages * torch.clamp(ratio, 1 - config.clip_param, 1 + config.clip_param),
            )
            # PPO's loss holds -surrogate / num_valid per sample; adding it back cancels the gradient.
            return (surrogate - surrogate.detach())[selected].sum() / num_valid
        return self._cov["kl_coef"] * (0.5 * (logp - logp_old) ** 2)[selected].sum() / num_valid


def _covariance_settings(settings: dict | None) -> dict | None:
    if not settings:
        return None
    settings = {"fraction": 0.002, "kl_coef": 1.0, **settings}
    if settings.get("mode") not in ("clip_cov", "kl_cov"):
        raise ValueError(f"covariance_control.mode must be 'clip_cov' or 'kl_cov'; got {settings.get('mode')!r}")
    if not 0 < settings["fraction"] <= 1:
        raise ValueError(f"covariance_control.fraction must be in (0, 1]; got {settings['fraction']}")
    unknown = set(settings) - {"mode", "fraction", "kl_coef"}
    if unknown:
        raise ValueError(f"covariance_control has unknown keys {sorted(unknown)}")
    return settings


def _num_learner_processes() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1
