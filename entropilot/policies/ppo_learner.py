"""RLlib PPO learner that measures policy entropy every update and sets PPO's entropy coefficient (lower
bound, signed tracker, fixed) or the policy's std (a schedule); optionally Clip-Cov / KL-Cov."""

import math
from typing import Any

import gymnasium as gym
import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.lambda_defaultdict import LambdaDefaultDict
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.torch_utils import explained_variance

from entropilot.policies.covariance import (
    CovarianceSettings,
    clip_cov_loss,
    gaussian_logp_per_dim,
    kl_cov_loss,
)
from entropilot.policies.entropy import (
    diag_gaussian_entropy,
    measured_entropies,
    policy_bounds,
    split_diag_gaussian_inputs,
)
from entropilot.policies.entropy_control import CONTROL_MODES, EntropyCoefficientController, Schedule
from entropilot.policies.entropy_range import CATEGORICAL, MEASURES, categorical_sizes, entropy_key
from entropilot.policies.lean_gradients import LeanGradientsMixin
from entropilot.policies.learner_metrics import (
    CLIPPED_FRACTION,
    COV_NUM_CANDIDATES,
    COV_NUM_SELECTED,
    COV_POLICY_LOSS,
    ENTROPY_TARGET,
    SIGMA_TARGET,
    dim_metric,
    entropy_metric,
)
from entropilot.policies.ppo_loss import PPOLoss, ppo_loss
from entropilot.rllib_internals import LeanForwardMixin, TensorMinibatchesMixin

# Keys of `config.learners(learner_config_dict=...)` this learner reads.
ENTROPY_CONTROL = "entropy_control"
COVARIANCE_CONTROL = "covariance_control"
# Keys of the controllers' state and of their live-tuned settings inside `Learner.get_state()`.
CONTROLLER_STATE = "entropy_controllers"
LIVE_SETTINGS_STATE = "entropy_control_live_settings"
COVARIANCE_RNG_STATE = "covariance_rng"
# What is averaged over every update's samples, per action dimension: a Gaussian policy's measures and the clipped
# share, a categorical policy's entropy (per sub-action).
_GAUSSIAN_STATS = (*MEASURES, "clipped")
_CATEGORICAL_STATS = (CATEGORICAL,)


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


class EntropyControlledPPOLearner(TensorMinibatchesMixin, LeanForwardMixin, LeanGradientsMixin, PPOTorchLearner):
    """PPO learner with entropy measurement, entropy control and optional Clip-Cov/KL-Cov.

    Configure through `config.learners(learner_config_dict={...})`:

    - `"entropy_control"`: `"mode"` (`entropy_control.CONTROL_MODES`, default `lower_bound`),
      `"measure"` (`entropy_range.MEASURES`, default `effective`: what the controller reads), and
      for `lower_bound`/`track`/`fixed` the keyword arguments of `EntropyCoefficientController`
      (`target`, `initial_coef`, `coef_min`, ...); for `sigma_schedule`, `"sigma"`: the Gaussian's std
      over env steps (a number or [[env_steps, std], ...], in the policy's action units). That mode
      holds the coefficient at 0 and sets the free log-std parameter to log sigma(env steps) after every
      update (it takes no gradient), so the next batch is sampled, and the next update starts, with it.
      When present, PPO's `entropy_coeff` is ignored: one controller per module sets the coefficient.
      Absent: PPO's stock entropy scheduler runs unchanged; entropy is still measured and logged.
    - `"covariance_control"`: `CovarianceSettings` keywords (Clip-Cov / KL-Cov, see
      `policies/covariance.py`). Its policy term replaces PPO's clipped surrogate in the loss (the value,
      entropy and KL terms stay); `policy_loss` still reports the surrogate.

    The loss is `ppo_loss.ppo_loss`: RLlib's PPO loss, with the mask weighing rows instead of selecting them, and
    its statistics (`policy_loss`, `vf_loss`, `vf_explained_var`, ...) logged once per update from the last
    minibatch, which is all RLlib reports of them (window 1).

    Measurement: in every minibatch of an `update()` the loss already holds the current policy's
    `action_dist_inputs`; we keep them for the valid (unmasked) samples and, once the update is done, measure
    every measure's per-dimension entropy over all of them, and the share of the batch's sampled actions that
    lay outside the bounds (the env clipped them). So the measured value is the mean over this iteration's
    batch while it is being optimized. `after_gradient_based_update` (once per `update()`, i.e. once per
    training iteration) feeds it to the controller before PPO's own hook reads the coefficient, so the
    coefficient logged as `curr_entropy_coeff` is the one the next update's loss uses.

    Several learners (`num_learners > 1`): each learner only sees its shard of the batch. RLlib
    starts remote learners as a torch.distributed process group (gloo on CPU, NCCL on GPU) and
    PPO's `update()` runs in lockstep on all of them. So we all-reduce the sums and sample counts
    inside `after_gradient_based_update`: every learner feeds its controller the same global mean and
    the controllers stay identical, which is also what makes the state saved from learner 0 correct
    for all of them.

    Live tuning: `retune_entropy_control(settings)` changes every controller's target and
    bounds/gains (or the fixed coefficient, or the sigma schedule) in place, also for modules whose
    controller is created later; the settings are part of `get_state`, so a checkpoint keeps them.

    Categorical policies (Discrete, MultiDiscrete actions) go through the same code: their one measure is
    `entropy_categorical` (a `_dim{i}` part per sub-action, each at most log K_i nats), which the controller
    follows whatever `measure` says (`entropy_range.entropy_key`: there is nothing to clip).

    Metrics, per module and iteration (named in `learner_metrics`): `entropy_effective`, `entropy_gaussian` and
    `clipped_fraction` with their `_dim{i}` parts (Box actions) or `entropy_categorical` and its parts; with control on
    `entropy_target` (lower_bound, track), `sigma_target` (sigma_schedule) and `curr_entropy_coeff`; with
    covariance control `cov_num_selected`, `cov_num_candidates` and `cov_policy_loss` (last minibatch).
    """

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        control = dict(self.config.learner_config_dict.get(ENTROPY_CONTROL) or {})
        self._measure = control.pop("measure", "effective")
        if self._measure not in MEASURES:
            raise ValueError(f"entropy_control.measure must be one of {MEASURES}; got {self._measure!r}")
        self._mode = control.pop("mode", "lower_bound") if control else None
        if self._mode is not None and self._mode not in CONTROL_MODES:
            raise ValueError(f"entropy_control.mode must be one of {CONTROL_MODES}; got {self._mode!r}")
        self._sigma: Schedule | None = None
        if self._mode == "sigma_schedule":
            self._sigma = Schedule(control.pop("sigma"), "sigma")
            control = {"target": None, "mode": "fixed", "initial_coef": 0.0}
            self._set_log_std(self._sigma(0))
        elif self._mode is not None:
            control["mode"] = self._mode
        self._live_settings: dict[str, Any] = {}
        if self._mode is not None:
            # Replaces PPOLearner's per-module Scheduler dict; the loss and the PPO hook use it as-is.
            self.entropy_coeff_schedulers_per_module = LambdaDefaultDict(
                lambda module_id: ControlledEntropyCoefficient(self._new_controller(control))
            )
        covariance = self.config.learner_config_dict.get(COVARIANCE_CONTROL)
        self._cov = CovarianceSettings(**covariance) if covariance else None
        self._cov_rng = torch.Generator().manual_seed(self._cov.seed) if self._cov else None
        others = sorted(set(self.module.keys()) - set(self._gaussian_module_ids()))
        if self._cov is not None and self._cov.per_dimension and others:
            raise ValueError(
                f"covariance_control per_dimension scores a Gaussian's action dims; module {others[0]!r} acts on "
                f"{self._action_space(others[0])} (use per_dimension=False)"
            )
        self._rows: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._last_loss: dict[str, tuple[PPOLoss, torch.Tensor, torch.Tensor]] = {}

    @override(PPOTorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        mask = batch.get(Columns.LOSS_MASK)
        dist_inputs = fwd_out[Columns.ACTION_DIST_INPUTS]
        dist_class = module.get_train_action_dist_cls()
        actions = batch[Columns.ACTIONS]
        dist, per_dim = None, None
        if dist_class is TorchDiagGaussian:
            # TorchDiagGaussian's log-density and entropy from their formulas: the same numbers up to rounding,
            # without a torch Normal built and its arguments checked on every minibatch.
            mean, log_std = split_diag_gaussian_inputs(dist_inputs)
            per_dim = gaussian_logp_per_dim(mean, log_std, actions)
            logp = per_dim[0].sum(-1)
            entropy = diag_gaussian_entropy(log_std).total
        else:
            dist = dist_class.from_logits(dist_inputs)
            logp, entropy = dist.logp(actions), dist.entropy()
        kl = None
        if config.use_kl_loss:
            old = module.get_exploration_action_dist_cls().from_logits(batch[Columns.ACTION_DIST_INPUTS])
            kl = old.kl(dist if dist is not None else dist_class.from_logits(dist_inputs))
        values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS)) if config.use_critic else None
        measured = module_id in self._measured_module_ids()
        policy_term = None
        if measured and self._cov is not None and self._cov_rng is not None:
            policy_term = self._covariance_term(module_id, self._cov, self._cov_rng, config, batch, logp, per_dim, mask)
        loss = ppo_loss(
            logp=logp,
            logp_old=batch[Columns.ACTION_LOGP],
            advantages=batch[Postprocessing.ADVANTAGES],
            entropy=entropy,
            values=values,
            value_targets=batch[Postprocessing.VALUE_TARGETS],
            mask=mask,
            clip_param=config.clip_param,
            vf_clip_param=config.vf_clip_param,
            vf_loss_coeff=config.vf_loss_coeff,
            entropy_coeff=self.entropy_coeff_schedulers_per_module[module_id].get_current_value(),
            kl=kl,
            kl_coeff=self.curr_kl_coeffs_per_module[module_id] if kl is not None else 0.0,
            policy_term=policy_term,
        )
        # RLlib logs these with window 1 (only the last minibatch's are reported): keep the last, log them once.
        prediction = values.detach() if values is not None else torch.zeros_like(logp.detach())
        self._last_loss[module_id] = (
            loss._replace(total=loss.total.detach()),
            batch[Postprocessing.VALUE_TARGETS],
            prediction,
        )
        if measured:
            with torch.no_grad():
                self._accumulate(module_id, dist_inputs, actions, mask)
        return loss.total

    @override(PPOTorchLearner)
    def after_gradient_based_update(self, *, timesteps) -> None:
        env_steps = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        self._log_last_loss()
        for module_id, means in self._global_means().items():
            for name, per_dim in means.items():
                key = CLIPPED_FRACTION if name == "clipped" else entropy_metric(name)
                value = per_dim.mean() if name == "clipped" else per_dim.sum()
                self.metrics.log_value((module_id, key), value.item(), window=1)
                for i, part in enumerate(per_dim.tolist()):
                    self.metrics.log_value((module_id, dim_metric(key, i)), part, window=1)
            if self._mode is None:
                continue
            controller = self._controller(module_id)
            measured = means[entropy_key(self._measure, self._action_space(module_id))]
            controller.update(measured.sum().item(), env_steps)
            if controller.target(env_steps) is not None:
                self.metrics.log_value((module_id, ENTROPY_TARGET), controller.target(env_steps), window=1)
        if self._sigma is not None:
            self._set_log_std(self._sigma(env_steps))
            for module_id in self._gaussian_module_ids():
                self.metrics.log_value((module_id, SIGMA_TARGET), self._sigma(env_steps), window=1)
        # PPO's hook now reads the new coefficient via `ControlledEntropyCoefficient.update()`.
        super().after_gradient_based_update(timesteps=timesteps)

    def retune_entropy_control(self, settings: dict) -> None:
        """Give every module's controller new settings (`EntropyCoefficientController.retune` keywords, or
        `sigma` in sigma_schedule mode), keeping its integrator state. Settings given earlier and not named
        again stay."""
        if self._mode is None:
            raise ValueError("entropy control is off on this learner: there is no controller to retune")
        settings = dict(settings)
        if self._mode == "sigma_schedule":
            unknown = set(settings) - {"sigma"}
            if unknown:
                raise ValueError(f"a sigma_schedule takes only sigma live; got {sorted(unknown)}")
            if "sigma" in settings:
                self._sigma = Schedule(settings["sigma"], "sigma")
        else:
            # Touching each module creates its controller, so none misses the change; the first retune
            # checks the settings before any controller changes (they all get the same ones).
            for module_id in sorted(self.module.keys()):
                self._controller(module_id).retune(**settings)
        self._live_settings = {**self._live_settings, **settings}

    @override(PPOTorchLearner)
    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._mode is not None and self._check_component(CONTROLLER_STATE, components, not_components):
            state[CONTROLLER_STATE] = {
                module_id: scheduler.controller.state_dict()
                for module_id, scheduler in self.entropy_coeff_schedulers_per_module.items()
            }
            state[LIVE_SETTINGS_STATE] = dict(self._live_settings)
        if self._cov_rng is not None and self._check_component(COVARIANCE_RNG_STATE, components, not_components):
            state[COVARIANCE_RNG_STATE] = self._cov_rng.get_state()
        return state

    @override(PPOTorchLearner)
    def set_state(self, state) -> None:
        super().set_state(state)
        if self._mode is not None and CONTROLLER_STATE in state:
            # Fresh controllers with the saved live settings (none in older checkpoints) replace the ones
            # running now, so nothing retuned since the checkpoint survives; then the integrator states.
            self.entropy_coeff_schedulers_per_module.clear()
            live, self._live_settings = dict(state.get(LIVE_SETTINGS_STATE, {})), {}
            if self._mode == "sigma_schedule":
                self.retune_entropy_control(live)
            else:
                self._live_settings = live
            for module_id, controller_state in state[CONTROLLER_STATE].items():
                self._controller(module_id).load_state_dict(controller_state)
        if self._cov_rng is not None and COVARIANCE_RNG_STATE in state:
            self._cov_rng.set_state(state[COVARIANCE_RNG_STATE])

    def _new_controller(self, control: dict) -> EntropyCoefficientController:
        controller = EntropyCoefficientController(**control)
        if self._mode != "sigma_schedule":
            controller.retune(**self._live_settings)
        return controller

    def _controller(self, module_id) -> EntropyCoefficientController:
        scheduler = self.entropy_coeff_schedulers_per_module[module_id]
        # RLlib types the dict as its Scheduler's; build() filled it with ours.
        assert isinstance(scheduler, ControlledEntropyCoefficient)
        return scheduler.controller

    def _action_space(self, module_id) -> gym.spaces.Space:
        action_space = self.module[module_id].unwrapped().action_space
        assert action_space is not None  # RLModule types it Optional; a learner's modules are built with their spaces
        return action_space

    def _gaussian_module_ids(self) -> list:
        """Modules with Box actions, i.e. a diagonal-Gaussian policy, sorted."""
        return sorted(
            module_id for module_id in self.module.keys() if isinstance(self._action_space(module_id), gym.spaces.Box)
        )

    def _measured_module_ids(self) -> list:
        """Modules whose entropy we measure, sorted: a diagonal-Gaussian (Box) or categorical (Discrete,
        MultiDiscrete) policy."""
        return sorted(module_id for module_id in self.module.keys() if self._stats(module_id) is not None)

    def _stats(self, module_id) -> tuple[tuple[str, ...], int] | None:
        """The names averaged per update for a module's policy and how many columns each has (action dims or
        sub-actions); None for a policy we do not measure."""
        action_space = self._action_space(module_id)
        sizes = categorical_sizes(action_space)
        if sizes is not None:
            return _CATEGORICAL_STATS, len(sizes)
        if isinstance(action_space, gym.spaces.Box):
            return _GAUSSIAN_STATS, math.prod(action_space.shape)
        return None

    def _measured_stats(self, module_id) -> tuple[tuple[str, ...], int]:
        stats = self._stats(module_id)
        assert stats is not None, f"module {module_id!r} is not one whose entropy is measured"
        return stats

    def _set_log_std(self, sigma: float) -> None:
        """sigma_schedule: put log sigma into every Gaussian module's free log-std parameter."""
        others = sorted(set(self.module.keys()) - set(self._gaussian_module_ids()))
        if others:
            raise ValueError(
                f"entropy_control mode sigma_schedule sets a Gaussian's std; module {others[0]!r} acts on "
                f"{self._action_space(others[0])} (no Gaussian)"
            )
        for module_id in self._gaussian_module_ids():
            pi = self.module[module_id].unwrapped().pi  # type: ignore[attr-defined]  # PPO's, undeclared by RLModule
            log_std = getattr(pi, "log_std", None)
            if not isinstance(log_std, torch.nn.Parameter):
                raise ValueError(
                    f"entropy_control mode sigma_schedule sets a free log std; module {module_id!r} has a "
                    "state-dependent one (model_config free_log_std=False)"
                )
            log_std.requires_grad_(False)
            with torch.no_grad():
                log_std.fill_(math.log(sigma))

    def _accumulate(self, module_id, dist_inputs, actions, mask) -> None:
        """Keep this minibatch's rows and which are valid; `_global_means` measures the valid ones all at once after
        the update (one vectorized pass and one selection instead of one per minibatch: the same numbers, without the
        per-minibatch op overhead)."""
        valid = mask if mask is not None else torch.ones(len(actions), dtype=torch.bool, device=actions.device)
        self._rows.setdefault(module_id, []).append((dist_inputs.detach(), actions.detach(), valid))

    def _sums(self) -> dict:
        """Per module, each stat's per-dim sum over this update's rows, and the row count last."""
        rows, self._rows = self._rows, {}
        sums = {}
        for module_id, parts in rows.items():
            dist_inputs, actions, valid = (torch.cat(column) for column in zip(*parts))
            dist_inputs, actions = dist_inputs[valid], actions[valid]
            action_space = self._action_space(module_id)
            stats = measured_entropies(dist_inputs, action_space, self.config.normalize_actions)
            if isinstance(action_space, gym.spaces.Box):
                low, high = (
                    bound.to(actions.device) for bound in policy_bounds(action_space, self.config.normalize_actions)
                )
                stats["clipped"] = ((actions < low) | (actions > high)).to(dist_inputs.dtype)
            table = torch.cat([stats[name] for name in self._measured_stats(module_id)[0]], dim=-1)
            sums[module_id] = torch.cat([table.sum(0), table.new_tensor([table.shape[0]])])
        return sums

    def _global_means(self) -> dict:
        """Per module, {measure or "clipped": per-dim mean} over all learners' samples of this update."""
        sums = self._sums()
        if _num_learner_processes() > 1:
            # Every learner must call all_reduce the same number of times, in the same order.
            for module_id in self._measured_module_ids():
                names, dims = self._measured_stats(module_id)
                local = sums.get(module_id, torch.zeros(len(names) * dims + 1, device=self._device))
                torch.distributed.all_reduce(local)
                sums[module_id] = local
        means = {}
        for module_id, total in sums.items():
            count = total[-1].item()
            if count > 0:
                names = self._measured_stats(module_id)[0]
                means[module_id] = dict(zip(names, (total[:-1] / count).cpu().chunk(len(names))))
        return means

    def _log_last_loss(self) -> None:
        """The last minibatch's loss statistics under RLlib's names (PPO's KL-coefficient update reads its KL)."""
        last, self._last_loss = self._last_loss, {}
        for module_id, (loss, targets, prediction) in last.items():
            numbers = torch.stack(
                [
                    loss.policy,
                    loss.vf,
                    loss.vf_unclipped,
                    torch.as_tensor(explained_variance(targets, prediction)),
                    loss.entropy,
                    loss.kl,
                ]
            ).tolist()
            names = (
                POLICY_LOSS_KEY,
                VF_LOSS_KEY,
                LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
                LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
                ENTROPY_KEY,
                LEARNER_RESULTS_KL_KEY,
            )
            self.metrics.log_dict(dict(zip(names, numbers)), key=module_id, window=1)

    def _covariance_term(
        self, module_id, cov: CovarianceSettings, rng: torch.Generator, config, batch, logp, per_dim, mask
    ) -> torch.Tensor:
        """The covariance method's policy term, which stands in for PPO's clipped surrogate in the loss. ``per_dim``:
        the Gaussian's per-dimension log-density and standardized action (`gaussian_logp_per_dim`) the loss computed,
        None for a categorical policy (`build` refuses per-dimension scoring for one)."""
        actions, logp_old = batch[Columns.ACTIONS], batch[Columns.ACTION_LOGP]
        advantages = batch[Postprocessing.ADVANTAGES]
        valid = mask if mask is not None else torch.ones_like(logp_old, dtype=torch.bool)
        if cov.per_dimension:
            logp_dims, z = per_dim
            score = -0.5 * z.detach() ** 2
            if cov.mode == "clip_cov":
                result = clip_cov_loss(logp_dims, logp_old, advantages, valid, cov, config.clip_param, rng, score)
            else:
                old_dims, _ = gaussian_logp_per_dim(
                    *split_diag_gaussian_inputs(batch[Columns.ACTION_DIST_INPUTS]), actions
                )
                result = kl_cov_loss(logp_dims, old_dims, advantages, valid, cov, score)
        elif cov.mode == "clip_cov":
            result = clip_cov_loss(logp, logp_old, advantages, valid, cov, config.clip_param, rng)
        else:
            result = kl_cov_loss(logp, logp_old, advantages, valid, cov)
        self.metrics.log_value((module_id, COV_NUM_SELECTED), int(result.selected.sum()), window=1)
        self.metrics.log_value((module_id, COV_NUM_CANDIDATES), result.num_candidates, window=1)
        self.metrics.log_value((module_id, COV_POLICY_LOSS), result.loss.item(), window=1)
        return result.loss


def _num_learner_processes() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def with_rllib_loss(learner_class: type) -> type:
    """``learner_class`` with RLlib's own PPO loss (its masked means and per-minibatch logging) in place of
    `ppo_loss`, entropy measured alike: the reference the lean loss is tested and benchmarked against. Without
    covariance control (RLlib has none)."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        if self._cov is not None:
            raise ValueError("with_rllib_loss is PPO's loss alone: covariance control is off there")
        loss = PPOTorchLearner.compute_loss_for_module(
            self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
        )
        if module_id in self._measured_module_ids():
            with torch.no_grad():
                self._accumulate(
                    module_id, fwd_out[Columns.ACTION_DIST_INPUTS], batch[Columns.ACTIONS], batch.get(Columns.LOSS_MASK)
                )
        return loss

    return type(
        f"RLlibLoss{learner_class.__name__}", (learner_class,), {"compute_loss_for_module": compute_loss_for_module}
    )
