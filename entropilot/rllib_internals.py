"""Every private Ray RLlib API entropilot touches, in one place (checked against Ray 2.60.0); shared by the platform
and policies rooms, so it sits beside them."""

# Read on a Ray upgrade, against this module: ray/rllib/env/single_agent_env_runner.py, env_runner.py,
# env_runner_group.py, connectors/env_to_module/mean_std_filter.py, env/single_agent_episode.py,
# core/learner/learner.py, core/rl_module/torch/torch_rl_module.py, utils/minibatch_utils.py,
# core/learner/torch/torch_learner.py. tests/test_bulk_sampling.py compares the bulk path with RLlib's own loop and
# tests/test_lean_learner_iteration.py the tensor minibatches with RLlib's iterator; each fails where they part.
# `BulkEnvRunner._sample` overrides the runner's private sampling loop (the one `sample()` calls) with its 2.60
# signature. `FaultTolerantSAC.training_step` samples through `sample_episodes` (below) and hands the learner SAC's loss
# columns itself (`platform/replay.py`); `ResumableSACLearner` backpropagates SAC's summed loss in one pass, clearing
# the component losses RLlib's SAC learner keeps (algorithms/sac/torch/sac_torch_learner.py).
# tests/test_sac_replay.py fails where RLlib's SAC reads other columns or its gradients differ.
# `ConnectorV2.__init__` is replaced on import (connectors/connector_v2.py; `_connector_init` below).
# `LeanForwardMixin` overrides core/learner/torch/torch_learner.py's `_uncompiled_update` and reads the modules' layers
# (core/models/torch/encoder.py, heads.py, algorithms/ppo/torch/default_ppo_torch_rl_module.py).

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator

import numpy as np
import ray
import ray.rllib.env.env_runner_group as env_runner_group_module
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.filter import MeanStdFilter as RunningMeanStd
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator


class _RayOrThisProcess:
    """`ray` as RLlib's EnvRunnerGroup sees it, but for `put`: while Ray is not running, the value stays in this
    process. The group puts its config (once) and the module's weights (every iteration) in Ray's object store for
    its remote runners even when it has none; nothing else on a run with no actor touches Ray."""

    def __getattr__(self, name: str):
        return getattr(ray, name)

    @staticmethod
    def put(value, **kwargs):
        return ray.put(value, **kwargs) if ray.is_initialized() else value


def _connector_init(self, input_observation_space=None, input_action_space=None, **kwargs) -> None:
    """`ConnectorV2.__init__` as RLlib 2.60 writes it, with its caller's frame taken by `sys._getframe(1)` instead of
    `inspect.stack()[1].frame`: the same frame, without `inspect.stack()` looking up the source file and module of
    every frame on the stack (`inspect.getmodule` scans `sys.modules` for each file it has not seen). Under pytest's
    deep stacks, with torch, RLlib and MLflow loaded, that took 80-330 ms per piece (~20 pieces per runner and
    learner): the unit tests ran in 74-86 s instead of 95-99 s. `entropilot train` paid ~25 ms in all."""
    self._observation_space = None
    self._action_space = None
    self._input_observation_space = None
    self._input_action_space = None
    self.input_action_space = input_action_space
    self.input_observation_space = input_observation_space
    # The subclass's constructor arguments, for `get_ctor_args_and_kwargs` (restoring from a checkpoint).
    if self.__class__.__dict__.get("__init__") is not None:
        arg_info = inspect.getargvalues(sys._getframe(1))
        self._ctor_kwargs = {arg: arg_info.locals[arg] for arg in arg_info.args if arg != "self"}
    else:
        self._ctor_kwargs = {
            "input_observation_space": self.input_observation_space,
            "input_action_space": self.input_action_space,
        }


# RLlib's own, for tests/test_rllib_internals.py to hold `_connector_init` to.
RLLIB_CONNECTOR_INIT = ConnectorV2.__init__
ConnectorV2.__init__ = _connector_init  # type: ignore[method-assign]


def allow_training_without_ray() -> None:
    """Let an Algorithm with no remote runner or learner build and train with Ray not running (`train.needs_ray`)."""
    env_runner_group_module.ray = _RayOrThisProcess()


def sample_episodes(env_runner_group: EnvRunnerGroup, timeout_s: float | None) -> tuple[list, list]:
    """(episode chunks, each runner's metrics) of one synchronous sample on every healthy runner (the driver's own
    without remote ones), as RLlib's DQN/SAC training step draws them: the new-stack runners' flags are private."""
    return synchronous_parallel_sample(
        worker_set=env_runner_group,
        concat=True,
        sample_timeout_s=timeout_s,
        _uses_new_env_runners=True,
        _return_metrics=True,
    )


def request_seeded_reset(runner: SingleAgentEnvRunner) -> None:
    """Make the runner's next `sample()` reset its envs seeded as on its first call (the config's seed + index)."""
    runner._needs_initial_reset = True


def reset_seed(runner: SingleAgentEnvRunner) -> int | None:
    """The seed the runner's next env reset uses: its seed on the first reset (or one requested), else None."""
    return runner._seed if runner._needs_initial_reset else None


def needs_reset(runner: SingleAgentEnvRunner) -> bool:
    return runner._needs_initial_reset


def after_reset(runner: SingleAgentEnvRunner) -> None:
    """What the stock runner's `_reset_envs_and_episodes` does besides stepping: forget the previous episodes'
    returned chunks (they never finish now) and clear the seeded-reset flag."""
    runner._ongoing_episodes_for_metrics.clear()
    runner._shared_data = {}
    runner._needs_initial_reset = False


def record_sampled(
    runner: SingleAgentEnvRunner, env_steps: int, done: list[SingleAgentEpisode], ongoing: list[SingleAgentEpisode]
) -> None:
    """Count a rollout's env steps and episodes, and keep its chunks for `get_metrics()`, as the stock loop does
    at the end of `_sample` (done episodes, returned chunks of still-running ones, counters, Ray metric)."""
    runner._done_episodes_for_metrics.extend(done)
    for chunk in ongoing:
        runner._ongoing_episodes_for_metrics[chunk.id_].append(chunk)
    runner._log_env_steps(metric=runner._metrics_num_env_steps_sampled, num_steps=env_steps)
    runner._increase_sampled_metrics(env_steps, len(done))


def drop_sac_component_losses(learner) -> None:
    """Forget the SAC learner's per-optimizer losses (actor, critics, temperature) that its `compute_gradients` pops
    one backward pass at a time: a learner that backpropagates their sum instead must not keep their graphs."""
    learner._temp_losses.clear()


def weights_seq_no(runner: SingleAgentEnvRunner) -> int:
    """The sequence number of the weights the runner holds (0: never synced since it was built)."""
    return runner._weights_seq_no


def take_out_of_service(env_runner_group, index: int) -> None:
    """Mark remote runner `index` unhealthy: RLlib's restore path then pings it and pushes the current state."""
    env_runner_group._worker_manager.set_actor_state(index, healthy=False)


def learner_connector_batch(learner, episodes: list) -> dict:
    """What the learner's connector pipeline makes of `episodes` for its loss (observations, actions, logp,
    advantages, value targets, ...): the first half of `Learner.update`, without the update."""
    return learner._learner_connector(
        rl_module=learner.module, batch={}, episodes=episodes, shared_data={}, metrics=learner.metrics
    )


def connector_pieces(runner: SingleAgentEnvRunner) -> tuple[list, list]:
    """(env-to-module pieces, module-to-env pieces) of the runner's two connector pipelines."""
    return list(runner._env_to_module.connectors), list(runner._module_to_env.connectors)


def module_observation_space(runner: SingleAgentEnvRunner):
    """The observation space after the env-to-module pipeline (MeanStdFilter's clipped Box), which the stock
    runner's episodes carry."""
    return runner._env_to_module.observation_space


def running_mean_std(connector: MeanStdFilter) -> tuple[RunningMeanStd, bool]:
    """The single-agent MeanStdFilter connector's filter object (holding the RunningStats that RLlib merges,
    broadcasts and checkpoints) and whether it updates them. Read anew for every rollout: `set_state` replaces
    the RunningStat objects."""
    if connector._filters is None:
        connector._init_new_filters()
    return connector._filters[None], connector._update_stats


def module_forward(module, explore: bool) -> Callable[..., dict]:
    """The module's forward for sampling without `forward_exploration`'s eval()/train() toggle around every call
    (the caller puts the module in eval mode once per rollout)."""
    return module._forward_exploration if explore else module._forward_inference


def _free_log_std_mlp(module):
    """(actor encoder, pi head) of RLlib's default PPO module with an MLP actor and a free-log-std head; else None."""
    from ray.rllib.core.models.torch.encoder import TorchMLPEncoder
    from ray.rllib.core.models.torch.heads import TorchFreeLogStdMLPHead

    head = getattr(module, "pi", None)
    encoder = getattr(getattr(module, "encoder", None), "actor_encoder", None)
    if type(head) is not TorchFreeLogStdMLPHead or type(encoder) is not TorchMLPEncoder:
        return None
    return encoder, head


def _clamped_log_std(head) -> torch.Tensor:
    if head.clip_log_std:
        return torch.clamp(head.log_std, -head.log_std_clip_param_const, head.log_std_clip_param_const)
    return head.log_std


def free_log_std_actor(module) -> tuple[list[torch.nn.Module], torch.Tensor] | None:
    """The layers that turn an observation into a PPO module's Gaussian mean, in order (its actor encoder's MLP,
    then its free-log-std head's), and the log std the head appends to every row (clamped as the head clamps it);
    None for any other module. Checked against Ray 2.60's DefaultPPOTorchRLModule: `encoder.actor_encoder` a
    TorchMLPEncoder, whose forward is `net.mlp(obs)`, and `pi` a TorchFreeLogStdMLPHead, whose forward is
    `cat([net.mlp(x), clamp(log_std) per row])`. Its readers are held to the module's own forward: the bulk
    sampler's policy step by tests/test_bulk_sampling.py, the exported graph by every export's parity check."""
    parts = _free_log_std_mlp(module)
    if parts is None:
        return None
    encoder, head = parts
    return [*encoder.net.mlp, *head.net.mlp], _clamped_log_std(head)


def ppo_mlp_train_forward(module) -> Callable[[dict], dict] | None:
    """`forward_train` of RLlib's default PPO module with MLP encoders for actor and critic (not shared, not
    stateful) and a free-log-std head, as its layers called one after another: the same ACTION_DIST_INPUTS and
    EMBEDDINGS (the critic encoder's output, which the loss's `compute_values` turns into values). RLlib's own walks
    `train()` over every submodule and builds the encoder's and heads' dicts on each call: ~0.3-0.7 ms of a 512-row
    minibatch step on 2 cores. None for any other module. Checked against Ray 2.60's TorchActorCriticEncoder (actor
    and critic encoders on the same observations) and the head above; held to the module's own forward by
    tests/test_lean_learner_iteration.py."""
    from ray.rllib.core.models.torch.encoder import TorchMLPEncoder

    parts = _free_log_std_mlp(module)
    if parts is None:
        return None
    critic_encoder = getattr(module.encoder, "critic_encoder", None)
    if type(critic_encoder) is not TorchMLPEncoder or module.is_stateful():
        return None
    encoder, head = parts
    actor, critic = [*encoder.net.mlp, *head.net.mlp], [*critic_encoder.net.mlp]

    def forward_train(batch: dict) -> dict:
        if not module.training:
            module.train()
        mean = embeddings = batch[Columns.OBS]
        for layer in actor:
            mean = layer(mean)
        for layer in critic:
            embeddings = layer(embeddings)
        log_std = _clamped_log_std(head)
        dist_inputs = torch.cat([mean, log_std.unsqueeze(0).repeat([len(mean), 1])], axis=1)
        return {Columns.EMBEDDINGS: embeddings, Columns.ACTION_DIST_INPUTS: dist_inputs}

    return forward_train


def set_chunk_times(episode: SingleAgentEpisode, start: float, last_step: float) -> None:
    """Timestamps behind `get_duration_s()` (RLlib's `episode_duration_sec_mean`): the stock runner sets them step by
    step, from the reset (a new episode) or the first step (a continued chunk) to the last step."""
    episode._start_time, episode._last_step_time = start, last_step


class TensorMinibatchesMixin(Learner):
    """Cut a learner update's minibatches from the train batch's tensors: RLlib's `MiniBatchCyclicIterator` builds
    each one as SampleBatch slices, concatenated: ~0.3 ms per minibatch step of the hover recipe, ~0.1 ms here
    (`benchmarks/learner_update.py`). Same rows in the same order (it draws the same `np.random` permutations). Put
    it before the learner class in the bases; `with_rllib_minibatches` is the reference it is tested and benchmarked
    against.

    Checked against Ray 2.60: overrides `Learner._create_iterator_if_necessary` and reads the stock iterator's
    settings. Batches with a time rank (a stateful module, `seq_lens`) or non-tensor columns keep RLlib's iterator."""

    def _create_iterator_if_necessary(self, **kwargs):
        iterator = super()._create_iterator_if_necessary(**kwargs)
        if type(iterator) is not MiniBatchCyclicIterator or not all(
            len(module_batch) > 0
            and not self.module[module_id].is_stateful()
            and SampleBatch.SEQ_LENS not in module_batch
            and all(isinstance(column, torch.Tensor) for column in module_batch.values())
            for module_id, module_batch in iterator._batch.policy_batches.items()
        ):
            return iterator
        return tensor_minibatches(
            iterator._batch,
            num_epochs=iterator._num_epochs,
            minibatch_size=iterator._minibatch_size,
            shuffle=iterator._shuffle_batch_per_epoch,
            num_total_minibatches=iterator._num_total_minibatches,
        )


class LeanForwardMixin(TorchLearner):
    """Run a learner's minibatch step with the module's `forward_train` written out (`ppo_mlp_train_forward`) where
    every module of the minibatch allows it; the same numbers (tests/test_lean_learner_iteration.py). Put it before
    the learner class in the bases; `with_rllib_forward` is the reference it is tested against.

    Checked against Ray 2.60: `TorchLearner._uncompiled_update` with `self.module.forward_train(batch)` replaced;
    several learners (their modules wrapped for DistributedDataParallel, gradients synced in `no_sync`) keep RLlib's."""

    def _uncompiled_update(self, batch: dict, **kwargs):
        forwards = {module_id: ppo_mlp_train_forward(self.module[module_id].unwrapped()) for module_id in batch}
        if kwargs or self.config.num_learners > 1 or None in forwards.values():
            return super()._uncompiled_update(batch, **kwargs)
        self._compute_off_policyness(batch)
        fwd_out = {module_id: forwards[module_id](module_batch) for module_id, module_batch in batch.items()}
        loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=batch)
        self.apply_gradients(self.postprocess_gradients(self.compute_gradients(loss_per_module)))
        return fwd_out, loss_per_module, {}


def with_rllib_forward(learner_class: type) -> type:
    """``learner_class`` with RLlib's own module forward in place of `LeanForwardMixin`'s."""
    return type(
        f"RLlibForward{learner_class.__name__}",
        (learner_class,),
        {"_uncompiled_update": TorchLearner._uncompiled_update},
    )


def tensor_minibatches(
    batch: MultiAgentBatch, *, num_epochs: int, minibatch_size: int, shuffle: bool, num_total_minibatches: int = 0
) -> Iterator[MultiAgentBatch]:
    """`MiniBatchCyclicIterator(batch, ...)`'s minibatches, from tensor columns: each module's rows are read in
    order, a minibatch that reaches the end goes on from the start after reshuffling them (`np.random.permutation`,
    as `SampleBatch.shuffle`), until every module's rows were read `num_epochs` times (or `num_total_minibatches`).

    Only the last minibatch keeps the `weights_seq_no` column: the learner logs the off-policyness it measures from
    that column with window 1, so the earlier minibatches' values are never read."""
    # Tensor columns only (`TensorMinibatchesMixin` checks).
    columns: dict[str, dict[str, torch.Tensor]] = {
        module_id: dict(module_batch) for module_id, module_batch in batch.policy_batches.items()
    }
    rows = {module_id: len(module_batch) for module_id, module_batch in batch.policy_batches.items()}
    start = dict.fromkeys(columns, 0)
    # An epoch counts as read when a minibatch reaches the last row: ceil(num_epochs * rows / minibatch_size).
    count = num_total_minibatches or max(-(-num_epochs * n // minibatch_size) for n in rows.values())
    for index in range(count):
        minibatch = {}
        for module_id, n in rows.items():
            begin, needed, pieces = start[module_id], minibatch_size, []
            while begin + needed >= n:
                pieces.append({key: column[begin:] for key, column in columns[module_id].items()})
                needed, begin = needed - (n - begin), 0
                if shuffle:
                    order = torch.from_numpy(np.random.permutation(n))
                    columns[module_id] = {
                        key: column.index_select(0, order.to(column.device))
                        for key, column in columns[module_id].items()
                    }
            if needed > 0:
                pieces.append({key: column[begin : begin + needed] for key, column in columns[module_id].items()})
            start[module_id] = begin + needed
            joined = pieces[0] if len(pieces) == 1 else {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}
            if index < count - 1:
                joined.pop(WEIGHTS_SEQ_NO, None)
            minibatch[module_id] = SampleBatch(joined)
        yield MultiAgentBatch(minibatch, batch.env_steps())


def with_rllib_minibatches(learner_class: type) -> type:
    """``learner_class`` with RLlib's own minibatch iterator in place of `TensorMinibatchesMixin`'s."""
    return type(
        f"RLlibMinibatches{learner_class.__name__}",
        (learner_class,),
        {"_create_iterator_if_necessary": Learner._create_iterator_if_necessary},
    )
