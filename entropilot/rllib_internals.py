"""Every private Ray RLlib API entropilot touches, in one place (checked against Ray 2.60.0); shared by the platform
and policies rooms, so it sits beside them."""

# Read on a Ray upgrade, against this module: ray/rllib/env/single_agent_env_runner.py, env_runner.py,
# env_runner_group.py, connectors/env_to_module/mean_std_filter.py, env/single_agent_episode.py,
# core/learner/learner.py, core/rl_module/torch/torch_rl_module.py. tests/test_bulk_sampling.py compares the bulk
# path with RLlib's own loop and fails where they part. `BulkEnvRunner._sample` overrides the runner's private
# sampling loop (the one `sample()` calls) with its 2.60 signature.

from __future__ import annotations

from collections.abc import Callable

from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.filter import MeanStdFilter as RunningMeanStd


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


def set_chunk_times(episode: SingleAgentEpisode, start: float, last_step: float) -> None:
    """Timestamps behind `get_duration_s()` (RLlib's `episode_duration_sec_mean`): the stock runner sets them step by
    step, from the reset (a new episode) or the first step (a continued chunk) to the last step."""
    episode._start_time, episode._last_step_time = start, last_step
