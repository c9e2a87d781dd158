"""Entropy-aware initialization (Jang & Kim 2021, arXiv 2108.10533): before training, redraw the
policy's initial weights until the actions it executes in the real env are entropic enough (for a categorical
policy, as in the paper: the mean entropy of its action distribution over real rollouts)."""

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from entropilot.policies.entropy import (
    EntropyEstimate,
    executed_entropy,
    max_categorical_entropy,
    multi_categorical_entropy,
    split_diag_gaussian_inputs,
)

_RUNNER_CONNECTORS = ["env_to_module_connector", "module_to_env_connector"]


@dataclass(frozen=True)
class InitDraw:
    """One initialization: its seed and the mean executed-action entropy (nats) of its rollouts."""

    seed: int
    entropy: float
    per_dim: tuple[float, ...]


@dataclass(frozen=True)
class EntropyInitResult:
    """Every draw in order, the one left in the policy, and whether it cleared the threshold."""

    draws: tuple[InitDraw, ...]
    chosen: InitDraw
    threshold: float

    @property
    def cleared(self) -> bool:
        return self.chosen.entropy >= self.threshold


@dataclass(frozen=True)
class RolloutSample:
    """What the env runners fed their module and what it returned, step by step."""

    observations: np.ndarray
    action_dist_inputs: np.ndarray
    action_space: gym.spaces.Space


def entropy_aware_init(
    algo,
    *,
    threshold: float,
    max_draws: int = 10,
    base_seed: int = 0,
    rollout_steps: int = 1000,
    resolution: float = 1e-3,
) -> EntropyInitResult:
    """Draw k = 0..max_draws-1 reinitializes the policy with seed base_seed + k, samples about
    `rollout_steps` env steps on the algorithm's env runners and measures the mean entropy of the
    policy's actions there (`entropy_of_rollouts`). Stops at the first draw with entropy >= `threshold`;
    otherwise the best draw is re-applied. Call before the first `algo.train()` (the optimizer state is
    not reset).

    Supports diagonal-Gaussian policies (PPO's default for Box actions: the executed, clipped action) and
    categorical ones (Discrete, MultiDiscrete: the distribution's entropy, summed over sub-actions). For a
    categorical policy a threshold above the largest entropy it can have (sum of log K) is refused before
    any draw. The sampling leaves no trace in training: see `sample_action_dist_inputs`.
    """
    if max_draws < 1:
        raise ValueError(f"max_draws must be >= 1; got {max_draws}")
    check_reachable_threshold(threshold, algo.get_module().action_space)
    draws = []
    for k in range(max_draws):
        seed = base_seed + k
        reinitialize_policy(algo, seed)
        # Common random numbers: every draw meets the same env resets and the same action noise, so
        # draws differ by their weights only (and the whole search is reproducible).
        sample = sample_action_dist_inputs(algo, rollout_steps, noise_seed=base_seed)
        entropy = entropy_of_rollouts(sample, algo.config.normalize_actions, resolution)
        draws.append(InitDraw(seed, entropy.total.item(), tuple(entropy.per_dim.tolist())))
        if draws[-1].entropy >= threshold:
            return EntropyInitResult(tuple(draws), draws[-1], threshold)
    best = max(draws, key=lambda draw: draw.entropy)
    if best is not draws[-1]:
        reinitialize_policy(algo, best.seed)
    return EntropyInitResult(tuple(draws), best, threshold)


def reinitialize_policy(algo, seed: int) -> None:
    """Rebuild every RLModule on every learner from its own spec under `torch.manual_seed(seed)`
    (so configured initializers apply and all learners agree), then push the weights to all env runners."""

    def _reinit(learner):
        torch.manual_seed(seed)
        for module_id in sorted(learner.module.keys()):
            module = learner.module[module_id].unwrapped()
            module.set_state(RLModuleSpec.from_module(module).build().get_state())

    algo.learner_group.foreach_learner(_reinit)
    push_weights_to_env_runners(algo)


def push_weights_to_env_runners(algo) -> None:
    """Copy the learners' weights to every env runner (and the local one), whatever seq numbers they hold.

    RLlib's own sync sends the learner's `weights_seq_no`, and a runner ignores weights whose seq
    number is not above its own. That drops weights changed outside `train()`, e.g. after
    `restore_from_path` of an older checkpoint into a running algorithm. Sent without a seq number,
    the state is always taken and the runner keeps its own seq number, so later syncs work as usual.
    """
    weights = algo.learner_group.get_state(components="learner/rl_module", inference_only=True)
    module_state = {"rl_module": weights["learner"]["rl_module"]}
    algo.env_runner_group.foreach_env_runner(lambda runner: runner.set_state(module_state))


def sample_action_dist_inputs(algo, num_steps: int, noise_seed: int | None = None) -> RolloutSample:
    """Sample about `num_steps` env steps (explore=True) on the algorithm's env runners, from freshly
    reset envs (seeded as on a runner's first `sample()` if the config has a seed), and return
    observations and `action_dist_inputs`. With `noise_seed`, each runner reseeds torch with
    noise_seed + its index first, making the action noise repeatable.

    Leaves no trace in training: each runner's connector states (the MeanStdFilter statistics)
    are restored, its metrics are drained and discarded (so no episodes or env steps are counted),
    and its envs are reset again on the next `sample()`, seeded as a fresh runner would be.
    """
    group = algo.env_runner_group
    num_remote = group.num_remote_env_runners()
    steps_per_runner = math.ceil(num_steps / max(num_remote, 1))

    def _sample(runner):
        connector_states = runner.get_state(components=_RUNNER_CONNECTORS)
        # Private flag: makes `sample()` reset the envs with the runner's seed, as on its first call.
        runner._needs_initial_reset = True
        if noise_seed is not None:
            torch.manual_seed(noise_seed + runner.worker_index)
        episodes = runner.sample(num_timesteps=steps_per_runner, explore=True, force_reset=True)
        runner.set_state(connector_states)
        runner.get_metrics()
        runner._needs_initial_reset = True
        steps = [slice(0, len(episode)) for episode in episodes]
        return RolloutSample(
            np.concatenate([ep.get_observations(s) for ep, s in zip(episodes, steps)]),
            np.concatenate(
                [ep.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS, s) for ep, s in zip(episodes, steps)]
            ),
            runner.env.single_action_space,
        )

    # With remote runners the driver's local runner has no env; without, it is the one that samples.
    samples = group.foreach_env_runner(_sample, local_env_runner=num_remote == 0)
    return RolloutSample(
        np.concatenate([s.observations for s in samples]),
        np.concatenate([s.action_dist_inputs for s in samples]),
        samples[0].action_space,
    )


def categorical_sizes(action_space: gym.spaces.Space) -> tuple[int, ...] | None:
    """The sub-action sizes K_i of a categorical action space (Discrete: one; MultiDiscrete: one per entry, in
    RLlib's flattened order), or None for any other space."""
    if isinstance(action_space, gym.spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return tuple(int(k) for k in np.asarray(action_space.nvec).reshape(-1))
    return None


def check_reachable_threshold(threshold: float, action_space: gym.spaces.Space, name: str = "threshold") -> None:
    """ValueError if a categorical policy on `action_space` cannot reach `threshold` nats (above sum of log K)."""
    sizes = categorical_sizes(action_space)
    if sizes is not None and threshold > max_categorical_entropy(sizes):
        raise ValueError(
            f"{name}={threshold} nats is unreachable for the action space {action_space}: a categorical policy "
            f"has at most {max_categorical_entropy(sizes):.4f} nats (sum of log K over sub-actions {list(sizes)})"
        )


def entropy_of_rollouts(sample: RolloutSample, normalize_actions: bool, resolution: float = 1e-3) -> EntropyEstimate:
    """Mean entropy (`EntropyEstimate`: total and per action dimension or sub-action) of the policy over the
    sampled steps: the categorical distribution's for Discrete/MultiDiscrete actions, the executed (clipped)
    action's for a diagonal Gaussian on a Box."""
    sizes = categorical_sizes(sample.action_space)
    if sizes is None:
        return executed_entropy_of_rollouts(sample, normalize_actions, resolution)
    logits = torch.as_tensor(sample.action_dist_inputs, dtype=torch.float64)
    per_dim = multi_categorical_entropy(logits, sizes).per_dim.mean(0)
    return EntropyEstimate(per_dim.sum(), per_dim)


def executed_entropy_of_rollouts(sample: RolloutSample, normalize_actions: bool, resolution: float = 1e-3):
    """Mean entropy (`EntropyEstimate`) of the executed action over the sampled steps."""
    mean, log_std = split_diag_gaussian_inputs(torch.as_tensor(sample.action_dist_inputs, dtype=torch.float64))
    return executed_entropy(*gaussian_in_env_units(mean, log_std, sample.action_space, normalize_actions), resolution)


def gaussian_in_env_units(mean, log_std, action_space: gym.spaces.Box, normalize_actions: bool):
    """Map the policy's Gaussian to the env's action units; return (mean, log_std, low, high).

    With RLlib's default `normalize_actions=True` the policy acts in [-1, 1] and the module-to-env
    connector maps a -> low + (a + 1)(high - low)/2, then clips to [low, high]: an affine map
    (mean shifts and scales, log_std gains log((high - low)/2)) followed by the clip. Otherwise the
    action goes out as is and the env (or `clip_actions`) clips it to the Box.
    """
    low = torch.as_tensor(np.array(action_space.low), dtype=mean.dtype, device=mean.device)
    high = torch.as_tensor(np.array(action_space.high), dtype=mean.dtype, device=mean.device)
    if normalize_actions and np.all(action_space.bounded_below) and np.all(action_space.bounded_above):
        half_range = (high - low) / 2
        return low + (mean + 1) * half_range, log_std + half_range.log(), low, high
    return mean, log_std, low, high
