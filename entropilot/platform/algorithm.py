"""Assemble an RLlib algorithm (PPO or SAC, new API stack; single-agent, or multi-agent with one policy
shared by all agents) from explicit settings, and read the observation-normalization statistics back
out of a running algorithm or a checkpoint."""

import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.algorithms.sac import SAC, SACConfig
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.annotations import override
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_SAMPLE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)
from ray.rllib.utils.numpy import SMALL_NUMBER
from ray.tune.registry import register_env

from entropilot.platform.bulk_runner import BulkEnvRunner
from entropilot.platform.config import ExperimentConfig
from entropilot.platform.replay import TransitionBuffer
from entropilot.platform.resources import local_gpu_learner_or_cpu, resolve_learner_resources
from entropilot.policies.ppo_learner import COVARIANCE_CONTROL, ENTROPY_CONTROL, EntropyControlledPPOLearner
from entropilot.policies.sac_learner import ResumableSACLearner
from entropilot.rllib_internals import (
    allow_training_without_ray,
    sample_episodes,
    take_out_of_service,
    weights_seq_no,
)

ALGORITHMS = ("PPO", "SAC")
# How env runners sample: RLlib's own per-item loop, or `bulk_runner.BulkEnvRunner` (single-agent envs).
SAMPLERS = ("stock", "bulk")
# How a runner's envs are vectorized: Gymnasium's SyncVectorEnv, or the env's own vector entry point (entropilot's
# single-drone ids: all drones in one PyBullet world, `envs.vector.DroneVectorEnv`).
VECTOR_ENVS = ("sync", "batched")
# The one RLModule that flies every agent of a multi-agent env (single-agent algorithms use DEFAULT_MODULE_ID).
SHARED_POLICY_ID = "shared_policy"


def _map_to_shared_policy(agent_id, episode, **kwargs) -> str:
    return SHARED_POLICY_ID


# Env-runner fault tolerance. A runner actor that dies (SIGKILL, OOM, lost node, an exception in sample())
# is restarted by Ray Core (`max_restarts` = RLlib's max_num_env_runner_restarts, 1000); meanwhile RLlib
# samples from the healthy runners and, once the restarted one answers its health ping, syncs it the current
# weights and filter state before it samples again.
FAULT_TOLERANCE = {
    "restart_failed_env_runners": True,
    # A runner whose sample() raised sleeps this long before exiting (for its traceback to reach the log) and
    # the driver's synchronous sampling waits on it: RLlib's 60 s default stalls every such iteration a minute.
    "delay_between_env_runner_restarts_s": 2.0,
    # Off: our envs are deterministic code, so an exception in step() is a bug; recreating the env in place
    # would repeat it silently, while a runner crash shows in the driver's log and in `env_runner_restarts`.
    "restart_failed_sub_environments": False,
}


def _restarted_before_sync(runner) -> tuple[int, bool]:
    """(runner index, whether Ray Core restarted this actor and it still holds its freshly built weights)."""
    unsynced = weights_seq_no(runner) == 0
    return runner.worker_index, unsynced and bool(ray.get_runtime_context().was_current_actor_reconstructed)


class _RestoresSilentlyRestartedEnvRunners:
    """RLlib restores a runner's state only if a call to it failed. Ray Core restarts a killed runner by itself,
    though, and when the restart completes between two calls (e.g. while the driver evaluates or checkpoints),
    no call fails: the runner would sample a batch with its freshly built policy and an empty observation
    filter. Before each training step, such runners are taken out of service, which makes RLlib's own
    restore path sync them (it pings them and pushes the current state)."""

    @override(Algorithm)
    def restore_env_runners(self, env_runner_group):
        if env_runner_group.num_healthy_remote_env_runners():
            # Bounded like RLlib's health probe: a hung runner must not hang training (it answers nothing here).
            answers = env_runner_group.foreach_env_runner(
                _restarted_before_sync,
                local_env_runner=False,
                timeout_seconds=self.config.env_runner_health_probe_timeout_s,
            )
            for index, restarted in answers:
                if restarted:
                    take_out_of_service(env_runner_group, index)
        return super().restore_env_runners(env_runner_group)


class _TimesEachIteration:
    """RLlib 2.60 reports its sampling and learner-update timers as an exponential average over iterations
    (coefficient 0.01: after the first iteration the number barely moves). Registered as sums before RLlib first
    logs them, `timers/env_runner_sampling_timer` and `timers/learner_update_timer` in each result are that
    iteration's own seconds."""

    @override(Algorithm)
    def setup(self, config):
        super().setup(config)
        for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER):
            self.metrics.log_value((TIMERS, timer), 0.0, reduce="sum")


class FaultTolerantPPO(_TimesEachIteration, _RestoresSilentlyRestartedEnvRunners, PPO):
    """RLlib's PPO whose restarted env runners always sample with the current policy."""


class FaultTolerantSAC(_TimesEachIteration, _RestoresSilentlyRestartedEnvRunners, SAC):
    """RLlib's SAC whose restarted env runners always sample with the current policy, and whose training step replays
    flat transitions (single-agent; a multi-agent env keeps RLlib's step).

    RLlib's step spent ~45 ms of a 140 ms hover step drawing episodes from its prioritized buffer and ~20 ms turning
    them into a batch (its learner connector): here each sample round's chunks go into a `replay.TransitionBuffer`,
    and each gradient update draws `train_batch_size` transitions uniformly from it as the columns SAC's loss reads
    (`benchmarks/sac_step.py`). Updates per env step: `training_intensity` / `train_batch_size` (RLlib's own
    setting, so both steps learn alike), the fractions carried over rounds. Like RLlib's buffer (the new stack's
    checkpoints hold none), the transitions are not checkpointed: a resumed run learns again once it has sampled
    `num_steps_sampled_before_learning_starts` new env steps (RLlib's step went on at once, replaying the few it
    had)."""

    @override(SAC)
    def setup(self, config):
        super().setup(config)
        self.transitions = TransitionBuffer(self.config.replay_buffer_config["capacity"], seed=self.config.seed)
        self._updates_due = 0.0

    @override(SAC)
    def training_step(self) -> None:
        if self.config.is_multi_agent:
            return super().training_step()
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = sample_episodes(self.env_runner_group, self.config.sample_timeout_s)
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        with self.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            env_steps = self.transitions.add_episodes(episodes)
        # Counted in the buffer, not over the run: a resumed run (whose buffer starts empty) refills it first too.
        if self.transitions.size < min(self.config.num_steps_sampled_before_learning_starts, self.transitions.capacity):
            return None
        sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
        self._updates_due += env_steps * self.config.training_intensity / self.config.total_train_batch_size
        updates, self._updates_due = divmod(self._updates_due, 1.0)
        for _ in range(int(updates)):
            with self.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
                batch = self.transitions.train_batch(self.config.total_train_batch_size, DEFAULT_MODULE_ID)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                results = self.learner_group.update(batch=batch, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: sampled})
            for result in results:  # per-sample TD errors: RLlib's step keeps them for priorities, never logs them
                result[DEFAULT_MODULE_ID].pop(TD_ERROR_KEY, None)
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
        if updates:
            with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group,
                    policies={DEFAULT_MODULE_ID},
                    inference_only=True,
                )
        return None


def make_env_creator(env_id: str) -> Callable[[dict], Any]:
    """An RLlib env creator for an entropilot id (imported inside the EnvRunner actor). RLlib's vector entry point
    (`vector_env="batched"`) calls it with ``num_envs`` in the config: then it builds that many drones in one world."""

    def create(env_config: dict):
        from entropilot.envs import make_env, make_vector_env

        kwargs = dict(env_config)
        num_envs = kwargs.pop("num_envs", None)
        return make_env(env_id, **kwargs) if num_envs is None else make_vector_env(env_id, num_envs, **kwargs)

    create.__name__ = env_id.split("/")[-1]
    return create


def is_multi_agent(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` trains a multi-agent env (the swarm): one policy shared by all its agents."""
    from entropilot.envs import SINGLE_AGENT_IDS

    return cfg.env.id not in SINGLE_AGENT_IDS


def algorithm_settings(cfg: ExperimentConfig) -> dict:
    """``cfg`` as the keyword arguments of `build_algorithm` / `algorithm_config`: every one they require (the schema
    is the only place their defaults live). A multi-agent env (the swarm) gets one policy shared by all agents."""
    a, e, r = cfg.algorithm, cfg.entropy, cfg.resources
    return dict(
        algorithm=a.name,
        env=make_env_creator(cfg.env.id),
        env_config=dict(cfg.env.kwargs),
        hidden_sizes=cfg.model.hidden,
        activation=cfg.model.activation,
        free_log_std=cfg.free_log_std,
        lr=a.lr,
        gamma=a.gamma,
        train_batch_size=a.train_batch_size,
        minibatch_size=a.minibatch_size,
        num_epochs=a.num_epochs,
        clip_param=a.clip_param,
        lambda_=a.lambda_,
        grad_clip=a.grad_clip,
        vf_loss_coeff=a.vf_loss_coeff,
        kl_coeff=a.kl_coeff,
        vf_clip=a.vf_clip,
        tau=a.tau,
        initial_alpha=a.initial_alpha,
        target_entropy=a.target_entropy,
        replay_capacity=a.replay_capacity,
        learning_starts=a.learning_starts,
        updates_per_env_step=a.updates_per_env_step,
        entropy_control=e.control.controller_settings(e.measure) if e.control.enabled else None,
        covariance_control=e.covariance.settings(seed=cfg.seed),
        num_env_runners=r.num_env_runners,
        envs_per_runner=r.envs_per_runner,
        num_cpus_per_env_runner=r.num_cpus_per_env_runner,
        num_learners=r.num_learners,
        gpu=r.gpu,
        sampler=r.sampler,
        vector_env=r.vector_env,
        seed=cfg.seed,
        multi_agent=is_multi_agent(cfg),
    )


def build_algorithm(**settings) -> Algorithm:
    """Build and return the RLlib `Algorithm` of `algorithm_config(**settings)`. If Ray isn't running, one with remote
    env runners or learners starts it (honouring RAY_ADDRESS); one without trains in this process with no Ray.

    A CPU learner that trains in this process (`num_learners=0`) gets as many torch threads as CPUs per learner
    (1 for "auto"), as Ray gives a learner or env-runner actor (OMP_NUM_THREADS): torch's default, a thread per
    core, made each update 5-20x slower on a busy 2-core machine (`benchmarks/learner_update.py`). This sets
    torch's thread count for the whole calling process."""
    config = algorithm_config(**settings)
    if not ray.is_initialized():
        if config.num_env_runners or config.num_learners:
            ray.init()
        else:
            allow_training_without_ray()
    if config.num_learners == 0 and not config.num_gpus_per_learner:
        import torch

        cpus = config.num_cpus_per_learner
        torch.set_num_threads(1 if cpus == "auto" else max(1, int(cpus)))
    return config.build_algo()


def algorithm_config(
    *,
    algorithm: str,
    env: str | type | Callable,
    env_config: dict,
    hidden_sizes: Sequence[int],
    activation: str,
    free_log_std: bool,
    lr: float | Sequence[tuple[int, float]],
    gamma: float,
    train_batch_size: int,
    minibatch_size: int,
    num_epochs: int,
    clip_param: float,
    lambda_: float,
    grad_clip: float | None,
    vf_loss_coeff: float,
    kl_coeff: float,
    vf_clip: float | None,
    tau: float,
    initial_alpha: float,
    target_entropy: float | str,
    replay_capacity: int,
    learning_starts: int,
    updates_per_env_step: float,
    entropy_control: dict | None,
    covariance_control: dict | None,
    num_env_runners: int,
    envs_per_runner: int,
    num_cpus_per_env_runner: float,
    num_learners: int,
    gpu: str,
    sampler: str,
    vector_env: str,
    seed: int | None,
    multi_agent: bool,
    # Not in the schema, so with a default here:
    num_cpus_per_learner: float | str = "auto",  # "auto": 1 per remote learner without GPU, 0 with (RLlib's)
    normalize_observations: bool = True,  # RLlib's MeanStdFilter; every run has it (False: for a test without it)
    learner_class: type | None = None,  # None: ours; another replaces it (RLlib's stock one, to compare against)
) -> AlgorithmConfig:
    """The RLlib `AlgorithmConfig` of an algorithm (build it with `build_algorithm`, or build its parts, an
    EnvRunner or a Learner, without Ray). `algorithm_settings(cfg)` gives every required keyword from an
    `ExperimentConfig`, whose schema says what each means; a caller changes single ones from there.

    `env` is an env id (Tune-registered or gymnasium), a gym.Env class, or a creator
    `env_config -> gym.Env` (registered under its `__name__`: give different creators different names).
    PPO uses `EntropyControlledPPOLearner` (`entropy_control` / `covariance_control` go to it, see there; without a
    controller PPO's entropy coefficient is 0, and a fixed one is the controller's `fixed` mode); `train_batch_size`,
    `minibatch_size`, `num_epochs` are per learner. SAC uses `ResumableSACLearner`; `lr` sets the
    actor, critic and temperature rates, `train_batch_size` the replay batch per learner, `replay_capacity` the
    transitions kept (`FaultTolerantSAC.transitions`, and RLlib's prioritized episode buffer, whose own default is
    1e6, for a multi-agent env), `updates_per_env_step` RLlib's `training_intensity`; PPO's own settings do not reach
    SAC, nor SAC's PPO.
    `gpu` and `num_learners` are resolved by `resolve_learner_resources`; remote learners take
    `num_cpus_per_learner` CPUs each. `sampler="bulk"` samples with `BulkEnvRunner` (one batched forward per vector
    step; single-agent only). `vector_env="batched"` builds each runner's envs through the env's vector entry point
    (for a creator from `make_env_creator`: `DroneVectorEnv`, all of a runner's drones in one PyBullet world).
    A crashed env runner is restarted and gets the current policy before it samples again (`FAULT_TOLERANCE`).

    `multi_agent=True` is for an RLlib `MultiAgentEnv` whose agents all have the same observation and
    action spaces: every agent maps to one RLModule, `SHARED_POLICY_ID`, trained on all agents' steps
    (`policy_module_id(algo)` tells which id an algorithm uses). The MeanStdFilter then runs in RLlib's
    multi-agent mode, which keeps one running mean/std per agent id (see `observation_filter_stats`).
    In RLlib's new stack a multi-agent `train_batch_size` still counts env steps (each holding one
    step of every live agent), so a batch of N env steps trains on up to N x agents samples.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}; got {algorithm!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if sampler == "bulk" and multi_agent:
        raise ValueError("sampler='bulk' samples single-agent envs; a multi-agent env needs sampler='stock'")
    if vector_env not in VECTOR_ENVS:
        raise ValueError(f"vector_env must be one of {VECTOR_ENVS}; got {vector_env!r}")
    if vector_env == "batched" and multi_agent:
        raise ValueError("vector_env='batched' batches single-agent envs; a multi-agent env needs vector_env='sync'")
    if algorithm == "SAC" and (entropy_control or covariance_control):
        raise ValueError("entropy_control and covariance_control are PPO settings; SAC tunes its temperature itself")
    if callable(env) and not isinstance(env, type):
        # RLlib takes only ids and classes; a creator must be registered (again in every new driver).
        env_id = f"entropilot-{getattr(env, '__name__', type(env).__name__)}"
        register_env(env_id, env)
        env = env_id
    learners = local_gpu_learner_or_cpu(resolve_learner_resources(gpu, num_learners), gpu)
    model_config = {"fcnet_hiddens": list(hidden_sizes), "fcnet_activation": activation, "free_log_std": free_log_std}

    lr = lr if isinstance(lr, float) else [list(point) for point in lr]  # RLlib's piecewise schedule
    if algorithm == "PPO":
        config = PPOConfig(algo_class=FaultTolerantPPO).training(
            lr=lr,
            gamma=gamma,
            train_batch_size_per_learner=train_batch_size,
            minibatch_size=minibatch_size,
            num_epochs=num_epochs,
            clip_param=clip_param,
            lambda_=lambda_,
            grad_clip=grad_clip,
            vf_loss_coeff=vf_loss_coeff,
            use_kl_loss=kl_coeff > 0,
            kl_coeff=kl_coeff,
            vf_clip_param=math.inf if vf_clip is None else vf_clip,
            entropy_coeff=0.0,  # a coefficient is the controller's (mode fixed: a constant one)
        )
        default_learner = EntropyControlledPPOLearner
        learner_config = {ENTROPY_CONTROL: entropy_control, COVARIANCE_CONTROL: covariance_control}
    else:
        config = SACConfig(algo_class=FaultTolerantSAC).training(
            actor_lr=lr,
            critic_lr=lr,
            alpha_lr=lr,
            gamma=gamma,
            train_batch_size_per_learner=train_batch_size,
            num_steps_sampled_before_learning_starts=learning_starts,
            tau=tau,
            initial_alpha=initial_alpha,
            target_entropy=target_entropy,
            replay_buffer_config={"capacity": replay_capacity},
        )
        default_learner = ResumableSACLearner
        learner_config = {}

    config = (
        config.environment(env, env_config=env_config)
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=envs_per_runner,
            num_cpus_per_env_runner=num_cpus_per_env_runner,
            **({"env_runner_cls": BulkEnvRunner} if sampler == "bulk" else {}),
            gym_env_vectorize_mode="vector_entry_point" if vector_env == "batched" else "sync",
            # Built without spaces: MeanStdFilter(input_observation_space=...) raises in Ray 2.60.
            env_to_module_connector=(
                (lambda env, spaces, device: MeanStdFilter(multi_agent=multi_agent)) if normalize_observations else None
            ),
        )
        .learners(
            **learners,
            num_cpus_per_learner=num_cpus_per_learner,
            learner_class=learner_class or default_learner,
            learner_config_dict=learner_config,
        )
        .rl_module(model_config=model_config)
        .fault_tolerance(**FAULT_TOLERANCE)
        # MLflow's system metrics record the machine; RLlib's own monitor thread (on by default) sampled it every 0.7 s
        # and `algo.stop()` waited on it (~0.5 s a run).
        .debugging(seed=seed, log_sys_usage=False)
    )
    if multi_agent:
        config = config.multi_agent(policies={SHARED_POLICY_ID}, policy_mapping_fn=_map_to_shared_policy)
    if algorithm == "SAC":
        # RLlib's "training intensity" counts replayed transitions per sampled env step (set here, where the learner
        # count behind the total batch is known).
        config = config.training(training_intensity=updates_per_env_step * config.total_train_batch_size)
    return config


def policy_module_id(source: Algorithm | AlgorithmConfig) -> str:
    """The id of the one RLModule an algorithm (or its config) trains: DEFAULT_MODULE_ID single-agent,
    SHARED_POLICY_ID for a multi-agent env with a shared policy."""
    config = source.config if isinstance(source, Algorithm) else source
    if not config.is_multi_agent:
        return DEFAULT_MODULE_ID
    policies = list(config.policies)
    if len(policies) != 1:
        raise ValueError(f"expected one policy shared by all agents; the config has {policies}")
    return policies[0]


@dataclass(frozen=True)
class ObservationFilterStats:
    """RLlib's MeanStdFilter as numbers: obs -> clip((obs - mean) / (std + epsilon), -clip, clip)."""

    mean: np.ndarray
    std: np.ndarray
    clip: float | None
    count: int
    epsilon: float = SMALL_NUMBER

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        normalized = (np.asarray(observation) - self.mean) / (self.std + self.epsilon)
        return normalized if self.clip is None else np.clip(normalized, -self.clip, self.clip)


def observation_filter_stats(source: Algorithm | str | Path) -> ObservationFilterStats | None:
    """MeanStdFilter statistics of a running `Algorithm` or of a checkpoint directory; None without a filter.

    Running algorithm: the driver's local EnvRunner (or, if the algorithm has none, the driver's
    own env-to-module connector) holds the filter that RLlib merges from all runners each iteration.
    Checkpoint: that filter's state is `env_runner/env_to_module_connector/MeanStdFilter/state.pkl`
    (`env_to_module_connector/MeanStdFilter/...` when there is no local EnvRunner).

    Multi-agent (shared policy): RLlib's MeanStdFilter(multi_agent=True) keeps one running mean/std
    per agent id and normalizes each agent with its own, while all agents feed one shared module.
    We return the pooled statistics of all agents (count-weighted mean, pooled sum of squared
    deviations, see `pool_running_stats`): the mean/std of every observation the shared policy has
    seen, which is agent-agnostic and so holds for any agent and any number of agents (the one
    normalization an exported shared policy can carry). Our swarm's agents are exchangeable
    (observations relative to each drone's own target, same dynamics), so the per-agent stats estimate
    the same distribution and differ from the pooled ones only by sampling noise, shrinking as 1/sqrt(n).
    """
    if isinstance(source, (str, Path)):
        state = _filter_state_from_checkpoint(Path(source))
    elif source.env_runner is not None:
        state = source.env_runner.get_state(components="env_to_module_connector")["env_to_module_connector"]
        state = state.get(MeanStdFilter.__name__)
    else:
        state = source.env_to_module_connector.get_state().get(MeanStdFilter.__name__)
    if not state:
        return None
    per_agent = []
    for agent_id, agent in state.items():
        stats = [RunningStat.from_state(s) for s in agent["running_stats"]]
        if len(stats) != 1:
            raise ValueError(f"expected one Box observation per agent; agent {agent_id!r} has {len(stats)} components")
        per_agent.append(stats[0])
    clips = {agent["clip_by_value"] for agent in state.values()}
    if len(clips) != 1 or len({s.shape for s in per_agent}) != 1:
        raise ValueError(f"MeanStdFilter agents {list(state)} differ in shape or clipping: no shared statistics")
    count, mean, std = pool_running_stats(per_agent)
    return ObservationFilterStats(mean=mean, std=std, clip=clips.pop(), count=count)


def pool_running_stats(stats: Sequence[RunningStat]) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, std) of the union of the samples behind several RLlib `RunningStat`s.

    Chan et al.'s parallel combination: n = sum n_i, mean = sum n_i m_i / n,
    S = sum S_i + sum n_i (m_i - mean)^2, std = sqrt(S / (n - 1)) (RunningStat's unbiased std;
    0 for n <= 1). One stat is returned as is.
    """
    if len(stats) == 1:
        (s,) = stats
        return int(s.n), np.asarray(s.mean, dtype=np.float64), np.asarray(s.std, dtype=np.float64)
    counts = np.array([float(s.n) for s in stats])
    n = counts.sum()
    if n == 0:
        return 0, np.zeros(stats[0].shape), np.zeros(stats[0].shape)
    means = np.stack([np.asarray(s.mean, dtype=np.float64) for s in stats])
    mean = (counts[:, None] * means).sum(0) / n
    sum_sq = sum(np.asarray(s.sum_sq_diff_array, dtype=np.float64) for s in stats)
    sum_sq = sum_sq + (counts[:, None] * (means - mean) ** 2).sum(0)
    std = np.sqrt(np.maximum(sum_sq / (n - 1), 0.0)) if n > 1 else np.zeros_like(mean)
    return int(n), mean, std


def _filter_state_from_checkpoint(path: Path) -> dict | None:
    for folder in (path / "env_runner" / "env_to_module_connector", path / "env_to_module_connector"):
        state_file = folder / MeanStdFilter.__name__ / "state.pkl"
        if state_file.is_file():
            with state_file.open("rb") as f:
                return pickle.load(f)
        if (folder / MeanStdFilter.__name__ / "state.msgpack").is_file():
            raise ValueError(f"{folder}: msgpack checkpoints are not supported; save with use_msgpack=False")
    return None
