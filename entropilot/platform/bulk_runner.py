"""The bulk sampling path: an RLlib EnvRunner that steps its vector env with one batched policy forward per step
and builds the episodes once per rollout fragment, handing the learner what RLlib's stock runner hands it."""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.common import (
    AddObservationsFromEpisodesToBatch,
    AddStatesFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    BatchIndividualItems,
    NumpyToTensor,
    TensorToNumpy,
)
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.connectors.module_to_env import (
    GetActions,
    ListifyDataForVectorEnv,
    NormalizeAndClipActions,
    RemoveSingleTsTimeRankFromBatch,
    UnBatchToIndividualItems,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import NUM_ENV_STEP_FAILURES_LIFETIME
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import ENV_RESET_TIMER, ENV_STEP_TIMER, RLMODULE_INFERENCE_TIMER, WEIGHTS_SEQ_NO
from ray.rllib.utils.spaces.space_utils import clip_action, get_base_struct_from_space, unsquash_action

from entropilot import rllib_internals as internals
from entropilot.envs.evaluate import vector_info
from entropilot.platform.bulk_episodes import Fragment, OpenEpisode, build_chunks
from entropilot.platform.bulk_filter import filter_rows
from entropilot.platform.bulk_policy import gaussian_mlp_step

_DEFAULT_ENV_TO_MODULE = (
    AddObservationsFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    AddStatesFromEpisodesToBatch,
    BatchIndividualItems,
    NumpyToTensor,
)
_DEFAULT_MODULE_TO_ENV = (
    GetActions,
    TensorToNumpy,
    UnBatchToIndividualItems,
    RemoveSingleTsTimeRankFromBatch,
    NormalizeAndClipActions,
    ListifyDataForVectorEnv,
)
_EPISODE_CALLBACKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")


class BulkEnvRunner(SingleAgentEnvRunner):
    """RLlib's `SingleAgentEnvRunner` (new API stack) with a bulk sampling loop, in place of its per-item connectors.

    Selected by `resources.sampler: bulk` (`algorithm_config(sampler="bulk")`). Per vector step: the observation
    filter on the (N, obs) array (`bulk_filter`: MeanStdFilter's arithmetic on the connector's own statistics), one
    `torch.inference_mode` forward of the module, actions drawn from the module's own action-distribution class
    (Gaussian, categorical, ...; for RLlib's MLP actor with a free log std, exploring, the same arithmetic written
    out: `bulk_policy`) and mapped for the env as RLlib's `NormalizeAndClipActions` maps them (the episodes
    keep the module's actions), `action_logp` and the module's outputs (`action_dist_inputs`) kept as arrays. The
    episodes (`bulk_episodes`) keep RLlib's chunking, lookback and episode ids across `sample()` calls; steps,
    episodes and returns are counted by the stock runner's own metrics code.

    Refused at construction when configured: per-step episode callbacks, connector pieces other than RLlib's
    defaults and MeanStdFilter, stateful (recurrent) modules, non-Box observations, recreating failed
    sub-environments. Infos: an episode keeps its final step's info dict (`is_success`, ...); the other steps carry
    empty dicts (the stock runner keeps every step's). `sample(num_episodes=...)` runs RLlib's own loop.
    """

    def __init__(self, *, config, **kwargs):
        _check_config(config)
        self._open_episodes: list[OpenEpisode | None] | None = None  # None: the envs need a reset
        self._observations: np.ndarray | None = None  # (N, ...) filtered: what the module sees next
        super().__init__(config=config, **kwargs)
        _check_pipelines(self)
        filters = [c for c in internals.connector_pieces(self)[0] if isinstance(c, MeanStdFilter)]
        self._filter_connector = filters[0] if filters else None

    @override(SingleAgentEnvRunner)
    def make_env(self) -> None:
        super().make_env()
        mode = self.env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"the bulk sampler needs a vector env with next-step autoreset (RLlib's); got {mode}")
        if not isinstance(self.env.single_observation_space, gym.spaces.Box):
            raise ValueError(
                f"the bulk sampler needs Box observations; got {self.env.single_observation_space} "
                "(use resources.sampler=stock)"
            )
        self._actions_for_env = _action_mapping(self.env.single_action_space, self.config)
        self._open_episodes = None

    @override(SingleAgentEnvRunner)
    def _sample(self, *, num_timesteps=None, num_episodes=None, explore, random_actions=False, force_reset=False):
        if num_episodes is not None:
            # Whole episodes from freshly reset envs: RLlib's own loop (it resets first and after, as ours would).
            self._open_episodes = None
            return super()._sample(num_episodes=num_episodes, explore=explore, random_actions=random_actions)
        if force_reset or internals.needs_reset(self) or self._open_episodes is None:
            self._reset()
        was_training = self.module.training if self.module is not None else False
        if self.module is not None:
            self.module.eval()
        try:
            fragment, env_steps, timings = self._roll(num_timesteps, explore, random_actions)
        finally:
            if was_training:
                self.module.train()
        finished, running, self._open_episodes = build_chunks(
            fragment,
            self._open_episodes,
            self.config.episode_lookback_horizon,
            internals.module_observation_space(self),
            self.env.single_action_space,
            {WEIGHTS_SEQ_NO: internals.weights_seq_no(self)},
        )
        for name, seconds in timings.items():
            if len(fragment.actions):
                self.metrics.log_value(name, seconds / len(fragment.actions))
        internals.record_sampled(self, env_steps, finished, running)
        return finished + running

    def _reset(self) -> None:
        env = self._vector_env()
        started = time.perf_counter()
        observations, _ = env.reset(seed=internals.reset_seed(self))
        now = time.perf_counter()
        self.metrics.log_value(ENV_RESET_TIMER, now - started)
        self._observations = self._filter(observations)
        self._open_episodes = [OpenEpisode.reset(obs, now) for obs in self._observations]
        internals.after_reset(self)

    def _roll(self, num_timesteps: int, explore: bool, random_actions: bool) -> tuple[Fragment, int, dict]:
        """Step the vector env until `num_timesteps` env steps (autoreset steps do not count, as in RLlib)."""
        env = self._vector_env()
        fragment = Fragment(observations=[self._observations])
        resetting = np.array([episode is None for episode in self._open_episodes])
        forward = internals.module_forward(self.module, explore) if not random_actions else None
        dist_class, written_out = None, None
        if forward is not None:
            get_dist = (
                self.module.get_exploration_action_dist_cls if explore else self.module.get_inference_action_dist_cls
            )
            dist_class = get_dist()
            written_out = gaussian_mlp_step(self.module, dist_class) if explore else None
        runners = self.config.num_env_runners or 1
        steps_before = self.num_env_steps_sampled_lifetime // runners
        env_steps, inference_s, step_s = 0, 0.0, 0.0
        observations = self._observations
        while env_steps < num_timesteps:
            started = time.perf_counter()
            if forward is None:
                actions, outputs = env.action_space.sample(), {}
            elif written_out is not None:
                actions, outputs = written_out(observations)
            else:
                # `t`: global env steps, as the stock loop passes it (exploration schedules read it).
                actions, outputs = self._act(
                    forward, dist_class, explore, observations, (steps_before + env_steps) * runners
                )
            env_actions = self._actions_for_env(actions)
            stepped = time.perf_counter()
            observations, rewards, terminated, truncated, infos = self._step(env, env_actions)
            now = time.perf_counter()
            inference_s += stepped - started
            step_s += now - stepped
            observations = self._filter(observations)
            fragment.add_step(actions, outputs, observations, rewards, terminated, truncated, resetting, now)
            env_steps += int(len(resetting) - resetting.sum())
            resetting = terminated | truncated
            for env_index in np.flatnonzero(resetting):
                fragment.final_infos[len(fragment.actions) - 1, env_index] = vector_info(infos, env_index)
        self._observations = observations
        return fragment, env_steps, {RLMODULE_INFERENCE_TIMER: inference_s, ENV_STEP_TIMER: step_s}

    def _act(self, forward, dist_class, explore: bool, observations: np.ndarray, t: int) -> tuple[np.ndarray, dict]:
        """One batched forward and action draw, as RLlib's `GetActions` connector makes them from the module's
        output: the module's own actions if it returns some, else a sample of its action distribution (its mode
        when not exploring) and that sample's log-probability."""
        with torch.inference_mode():
            out = forward({Columns.OBS: torch.as_tensor(observations, device=self._device)}, t=t)
            if Columns.ACTIONS not in out:
                dist = dist_class.from_logits(out[Columns.ACTION_DIST_INPUTS])
                if not explore:
                    dist = dist.to_deterministic()
                out[Columns.ACTIONS] = dist.sample()
                if Columns.ACTION_LOGP not in out:
                    out[Columns.ACTION_LOGP] = dist.logp(out[Columns.ACTIONS])
            out = {key: _numpy(value) for key, value in out.items()}
        return out.pop(Columns.ACTIONS), out

    def _step(self, env, actions):
        try:
            return env.step(actions)
        except Exception as error:
            # As the stock runner with restart_failed_sub_environments=False (the only setting we accept).
            self.metrics.log_value(NUM_ENV_STEP_FAILURES_LIFETIME, 1, reduce="lifetime_sum")
            raise RuntimeError(f"{type(self).__name__}: environment step failed: {error}") from error

    def _filter(self, observations: np.ndarray) -> np.ndarray:
        if self._filter_connector is None:
            return observations
        mean_std, update = internals.running_mean_std(self._filter_connector)
        return filter_rows(mean_std, observations, update)

    def _vector_env(self) -> gym.vector.VectorEnv:
        # The stock loop (num_episodes) needs RLlib's DictInfoToList wrapper; ours reads the vector info dict.
        return self.env.env if isinstance(self.env, DictInfoToList) else self.env


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """RLlib's `convert_to_numpy` (what its TensorToNumpy connector applies) for one batched tensor: floats become
    float32 and int64 int32; without its tree walk over the whole output dict."""
    array = tensor.cpu().numpy()
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, int):
        return array.astype(np.int32)
    return array


def _action_mapping(space: gym.Space, config) -> Callable[[np.ndarray], np.ndarray]:
    """RLlib's `NormalizeAndClipActions` for a whole batch of actions: unsquash to the env's bounds
    (`normalize_actions`), else clip to them (`clip_actions`), else as they are. For a bounded float Box the
    arithmetic of RLlib's `unsquash_action` / `clip_action`, written out once (their generic walk over the space,
    per call, cost ~10 % of a vector step); any other space goes through RLlib's functions, which broadcast."""
    struct = get_base_struct_from_space(space)
    box = isinstance(space, gym.spaces.Box)
    if config.normalize_actions:
        if (
            box
            and np.all(space.bounded_below)
            and np.all(space.bounded_above)
            and space.dtype in (np.float32, np.float64)
        ):
            low, high, span = space.low, space.high, space.high - space.low
            return lambda actions: np.clip(low + (actions + 1.0) * span / 2.0, low, high)
        return lambda actions: unsquash_action(actions, struct)
    if config.clip_actions:
        if box:
            return lambda actions: np.clip(actions, space.low, space.high)
        return lambda actions: clip_action(actions, struct)
    return lambda actions: actions


def _check_config(config) -> None:
    """Refuse, before any env is built, the settings the bulk loop does not reproduce."""
    if config.restart_failed_sub_environments:
        raise ValueError(
            "the bulk sampler does not recreate failed sub-environments: set "
            "fault_tolerance(restart_failed_sub_environments=False) or use the stock sampler"
        )
    overridden = [
        f"{cls.__name__}.{name}"
        for cls in force_list(config.callbacks_class)
        for name in _EPISODE_CALLBACKS
        if getattr(cls, name) is not getattr(RLlibCallback, name)
    ]
    overridden += [f"callbacks_{name}" for name in _EPISODE_CALLBACKS if getattr(config, f"callbacks_{name}", None)]
    if overridden:
        raise ValueError(f"the bulk sampler makes no per-step episode callbacks; configured: {overridden}")


def _check_pipelines(runner: BulkEnvRunner) -> None:
    env_to_module, module_to_env = internals.connector_pieces(runner)
    custom = [type(c).__name__ for c in env_to_module if not isinstance(c, _DEFAULT_ENV_TO_MODULE)]
    if custom not in ([], [MeanStdFilter.__name__]) or (custom and not isinstance(env_to_module[0], MeanStdFilter)):
        raise ValueError(
            f"the bulk sampler runs RLlib's default env-to-module pieces after one MeanStdFilter; got {custom}"
        )
    custom = [type(c).__name__ for c in module_to_env if not isinstance(c, _DEFAULT_MODULE_TO_ENV)]
    if custom:
        raise ValueError(f"the bulk sampler runs RLlib's default module-to-env pieces only; got {custom}")
    if runner.module is not None and runner.module.is_stateful():
        raise ValueError("the bulk sampler does not run stateful (recurrent) modules; use the stock sampler")
