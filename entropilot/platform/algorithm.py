"""Assemble an RLlib algorithm (PPO or SAC, new API stack; single-agent, or multi-agent with one policy
shared by all agents) from explicit settings, and read the observation-normalization statistics back
out of a running algorithm or a checkpoint."""

import logging
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.algorithms.sac import SAC, SACConfig
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.metrics import ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, TIMERS
from ray.rllib.utils.numpy import SMALL_NUMBER
from ray.tune.registry import register_env

from entropilot.errors import EntropilotError
from entropilot.platform.bulk_runner import BulkEnvRunner
from entropilot.policies.ppo_learner import COVARIANCE_CONTROL, ENTROPY_CONTROL, EntropyControlledPPOLearner
from entropilot.policies.sac_learner import ResumableSACLearner
from entropilot.rllib_internals import take_out_of_service, weights_seq_no

logger = logging.getLogger(__name__)

ALGORITHMS = ("PPO", "SAC")
GPU_MODES = ("auto", "on", "off")
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

    def setup(self, config):
        super().setup(config)
        for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER):
            self.metrics.log_value((TIMERS, timer), 0.0, reduce="sum")


class FaultTolerantPPO(_TimesEachIteration, _RestoresSilentlyRestartedEnvRunners, PPO):
    """RLlib's PPO whose restarted env runners always sample with the current policy."""


class FaultTolerantSAC(_TimesEachIteration, _RestoresSilentlyRestartedEnvRunners, SAC):
    """RLlib's SAC whose restarted env runners always sample with the current policy."""


def build_algorithm(**settings) -> Algorithm:
    """Build and return the RLlib `Algorithm` of `algorithm_config(**settings)`; starts Ray (honouring
    RAY_ADDRESS) if it isn't running.

    A CPU learner that trains in this process (`num_learners=0`) gets as many torch threads as CPUs per learner
    (1 for "auto"), as Ray gives a learner or env-runner actor (OMP_NUM_THREADS): torch's default, a thread per
    core, made each update 5-20x slower on a busy 2-core machine (`benchmarks/learner_update.py`). This sets
    torch's thread count for the whole calling process."""
    if not ray.is_initialized():
        ray.init()
    config = algorithm_config(**settings)
    if config.num_learners == 0 and not config.num_gpus_per_learner:
        import torch

        cpus = config.num_cpus_per_learner
        torch.set_num_threads(1 if cpus == "auto" else max(1, int(cpus)))
    return config.build_algo()


def algorithm_config(
    *,
    algorithm: str = "PPO",
    env: str | type | Callable,
    env_config: dict | None = None,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "tanh",
    lr: float = 3e-4,
    gamma: float = 0.99,
    train_batch_size: int = 4000,
    minibatch_size: int = 256,
    num_epochs: int = 10,
    clip_param: float = 0.2,
    lambda_: float = 0.95,
    grad_clip: float | None = 0.5,
    vf_loss_coeff: float = 0.5,
    kl_coeff: float = 0.2,
    vf_clip: float | None = 10.0,
    free_log_std: bool = False,
    entropy_coeff: float = 0.0,
    entropy_control: dict | None = None,
    covariance_control: dict | None = None,
    learning_starts: int = 1000,
    tau: float = 0.005,
    initial_alpha: float = 1.0,
    target_entropy: float | str = "auto",
    replay_capacity: int = 100_000,
    num_env_runners: int = 1,
    envs_per_runner: int = 1,
    num_cpus_per_env_runner: float = 1,
    num_learners: int = 0,
    num_cpus_per_learner: float | str = "auto",
    gpu: str = "auto",
    normalize_observations: bool = True,
    seed: int | None = None,
    learner_class: type | None = None,
    multi_agent: bool = False,
    sampler: str = "stock",
    vector_env: str = "sync",
) -> AlgorithmConfig:
    """The RLlib `AlgorithmConfig` of an algorithm (build it with `build_algorithm`, or build its parts, an
    EnvRunner or a Learner, without Ray).

    `env` is an env id (Tune-registered or gymnasium), a gym.Env class, or a creator
    `env_config -> gym.Env` (registered under its `__name__`: give different creators different names).
    PPO uses `EntropyControlledPPOLearner` (`entropy_control` / `covariance_control` go to it, see
    there; `entropy_coeff` is PPO's fixed coefficient when no controller is set); `train_batch_size`,
    `minibatch_size`, `num_epochs` are per learner. SAC uses `ResumableSACLearner`; `lr` sets the
    actor, critic and temperature rates, `train_batch_size` the replay batch per learner,
    `learning_starts` the env steps sampled before the first update, `tau` the target networks' Polyak rate,
    `initial_alpha` the starting temperature, `target_entropy` the entropy its temperature steers toward (nats;
    "auto" = -(action dims), RLlib's default) and `replay_capacity` the replay buffer's size in env steps (RLlib's
    prioritized episode buffer, whose own default is 1e6); PPO's own settings do not reach SAC, nor these PPO.
    `gpu` and `num_learners` are
    resolved by `resolve_learner_resources`; remote learners take `num_cpus_per_learner` CPUs each
    ("auto": 1 without GPU, 0 with). Observations are normalized with RLlib's MeanStdFilter
    unless `normalize_observations=False`. `learner_class` replaces our learner (e.g. RLlib's stock one).
    `sampler="bulk"` samples with `BulkEnvRunner` (one batched forward per vector step; single-agent only).
    `vector_env="batched"` builds each runner's envs through the env's vector entry point (for a creator from
    `train.make_env_creator`: `DroneVectorEnv`, all of a runner's drones in one PyBullet world).
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
            entropy_coeff=entropy_coeff,
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
        config.environment(env, env_config=env_config or {})
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
        .debugging(seed=seed)
    )
    if multi_agent:
        config = config.multi_agent(policies={SHARED_POLICY_ID}, policy_mapping_fn=_map_to_shared_policy)
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


class GpuUnavailable(EntropilotError, RuntimeError):
    """resources.gpu is "on" but there is no GPU for the learner."""


def resolve_learner_resources(gpu: str, num_learners: int, available_gpus: int | None = None) -> dict:
    """`num_learners` and `num_gpus_per_learner` for `config.learners(...)`.

    GPUs are counted in `ray.cluster_resources()` (or given as `available_gpus`); none is ever
    requested where there is none ("auto" falls back to CPU, "on" raises). With k GPUs: k learners
    (or `num_learners`, if positive and smaller) with one GPU each; a single GPU learner is the local
    one (`num_learners=0, num_gpus_per_learner=1`), because one remote GPU learner hangs in Ray 2.60.
    """
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu must be one of {GPU_MODES}; got {gpu!r}")
    if num_learners < 0:
        raise ValueError(f"num_learners must be >= 0; got {num_learners}")
    if gpu == "off":
        return {"num_learners": num_learners, "num_gpus_per_learner": 0}
    if available_gpus is None:
        available_gpus = int(ray.cluster_resources().get("GPU", 0))
    if available_gpus == 0:
        if gpu == "on":
            raise GpuUnavailable("resources.gpu 'on': the Ray cluster has no GPU; use gpu='auto' or 'off'")
        return {"num_learners": num_learners, "num_gpus_per_learner": 0}
    gpu_learners = min(num_learners, available_gpus) if num_learners > 0 else available_gpus
    return {"num_learners": 0 if gpu_learners == 1 else gpu_learners, "num_gpus_per_learner": 1}


def local_gpu_learner_or_cpu(learners: dict, gpu: str, visible_gpus: int | None = None) -> dict:
    """`learners` (from `resolve_learner_resources`), unless they put one GPU learner in this process and this
    process sees no GPU: the cluster's GPU is on another node (a job's driver on a CPU head). Then "auto" trains on
    the CPU, with a warning, and "on" raises, saying how to run the driver on the GPU node.

    ``visible_gpus``: the CUDA devices this process can use (default: torch's count; Ray sets CUDA_VISIBLE_DEVICES
    for a job whose entrypoint asked for a GPU, and for a Tune trial's GPU bundle)."""
    if learners["num_learners"] != 0 or not learners["num_gpus_per_learner"]:
        return learners
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count()
    if visible_gpus:
        return learners
    where = (
        "the Ray cluster has a GPU, but not on this node; one GPU learner runs in this process (one remote GPU "
        "learner hangs in Ray 2.60)"
    )
    if gpu == "on":
        raise GpuUnavailable(
            f"gpu='on': {where}. Run the driver on the GPU node (`entropilot submit` does so for "
            "gpu: on; a RayJob sets entrypointNumGpus: 1), or use gpu='auto' or 'off'"
        )
    logger.warning("gpu='auto': %s: training on the CPU. Submit with resources.gpu=on to train on the GPU", where)
    return {**learners, "num_gpus_per_learner": 0}


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
