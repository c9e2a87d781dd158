"""Entropy-aware initialization (Jang & Kim 2021, arXiv 2108.10533): before training, redraw the
policy's initial weights until the policy explores enough on the states it visits in the real env (for a
categorical policy, as in the paper: the mean entropy of its action distribution over real rollouts)."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns

from entropilot.policies.entropy import EntropyEstimate, measured_entropies
from entropilot.policies.entropy_range import entropy_key
from entropilot.policies.initial_weights import DEFAULT_FAMILY, InitFamily, draw_seed, reinitialize_policy
from entropilot.rllib_internals import request_seeded_reset

_RUNNER_CONNECTORS = ["env_to_module_connector", "module_to_env_connector"]
# Which draw the init keeps: the first clearing the threshold (else the best), or the lowest of all (a study arm).
KEEP = ("first_clearing", "lowest")


@dataclass(frozen=True)
class InitDraw:
    """One initialization: its torch seed and its entropy (nats, mean over the rollout's states) in total
    and per action dimension."""

    seed: int
    entropy: float
    per_dim: tuple[float, ...]


@dataclass(frozen=True)
class EntropyInitResult:
    """Every draw made in order, the one left in the policy, and whether it cleared the threshold."""

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
    weight_seed: int = 0,
    max_draws: int = 10,
    family: InitFamily = DEFAULT_FAMILY,
    measure: str = "effective",
    rollout_steps: int = 1000,
    noise_seed: int = 0,
    keep: str = "first_clearing",
) -> EntropyInitResult:
    """Draw k = 0..max_draws-1 reinitializes the policy with `draw_seed(weight_seed, k)` in `family`,
    samples about `rollout_steps` env steps on the algorithm's env runners and measures the policy's
    mean entropy (`measure`, see `entropy.measured_entropies`; a categorical policy's entropy whatever
    `measure` says, `entropy_range.entropy_key`) over the visited states. Stops at the
    first draw whose entropy is >= `threshold`; otherwise the best draw is re-applied (`search_outcome`).
    `keep="lowest"` is the init turned upside down, for dose-response studies: all `max_draws` draws are made
    and the least exploring one is kept (the threshold then decides nothing).
    Call before the first `algo.train()` (the optimizer state is not reset).

    Common random numbers: every draw meets the same env resets and, with `noise_seed`, the same action
    noise, so draws differ by their weights only and the search is reproducible. The sampling leaves no
    trace in training: see `sample_action_dist_inputs`.
    """
    if max_draws < 1:
        raise ValueError(f"max_draws must be >= 1; got {max_draws}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}; got {keep!r}")
    draws = []
    for k in range(max_draws):
        draws.append(measure_draw(algo, draw_seed(weight_seed, k), family, measure, rollout_steps, noise_seed))
        if keep == "first_clearing" and draws[-1].entropy >= threshold:
            break
    result = search_outcome(draws, threshold, keep)
    if result.chosen is not draws[-1]:
        reinitialize_policy(algo, result.chosen.seed, family)
    return result


def search_outcome(draws: Sequence[InitDraw], threshold: float, keep: str = "first_clearing") -> EntropyInitResult:
    """What the search keeps of `draws` (in drawing order): the first that clears `threshold` (the search
    makes no later draw), else the one with the highest entropy; with `keep="lowest"`, the lowest."""
    if not draws:
        raise ValueError("search_outcome needs at least one draw")
    if keep == "lowest":
        return EntropyInitResult(tuple(draws), min(draws, key=lambda draw: draw.entropy), threshold)
    for i, draw in enumerate(draws):
        if draw.entropy >= threshold:
            return EntropyInitResult(tuple(draws[: i + 1]), draw, threshold)
    return EntropyInitResult(tuple(draws), max(draws, key=lambda draw: draw.entropy), threshold)


def measure_draw(
    algo, seed: int, family: InitFamily, measure: str, rollout_steps: int, noise_seed: int | None
) -> InitDraw:
    """Reinitialize the policy with torch seed `seed` in `family`, roll it out and measure its entropy."""
    reinitialize_policy(algo, seed, family)
    sample = sample_action_dist_inputs(algo, rollout_steps, noise_seed=noise_seed)
    entropy = entropy_of_rollouts(sample, measure, algo.config.normalize_actions)
    return InitDraw(seed, entropy.total.item(), tuple(entropy.per_dim.tolist()))


def sample_action_dist_inputs(algo, num_steps: int, noise_seed: int | None = None) -> RolloutSample:
    """Sample about `num_steps` env steps (explore=True) on the algorithm's env runners, from freshly
    reset envs (seeded as on a runner's first `sample()` if the config has a seed), and return
    observations and `action_dist_inputs`. With `noise_seed`, each runner draws its action noise from
    torch seed noise_seed + its index, making it repeatable.

    Leaves no trace in training: each runner's connector states (the MeanStdFilter statistics) are
    restored, its metrics are drained and discarded (so no episodes or env steps are counted), its torch
    random state is restored, and its envs are reset again on the next `sample()`, seeded as a fresh
    runner's would be.
    """
    group = algo.env_runner_group
    num_remote = group.num_remote_env_runners()
    steps_per_runner = math.ceil(num_steps / max(num_remote, 1))

    def _sample(runner):
        connector_states = runner.get_state(components=_RUNNER_CONNECTORS)
        request_seeded_reset(runner)  # `sample()` resets the envs with the runner's seed, as on its first call
        with torch.random.fork_rng(devices=[]):
            if noise_seed is not None:
                torch.manual_seed(noise_seed + runner.worker_index)
            episodes = runner.sample(num_timesteps=steps_per_runner, explore=True, force_reset=True)
        runner.set_state(connector_states)
        runner.get_metrics()
        request_seeded_reset(runner)
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
    if not samples:
        raise RuntimeError(
            "no env runner answered (all out of service, e.g. restarting after a crash): nothing sampled"
        )
    return RolloutSample(
        np.concatenate([s.observations for s in samples]),
        np.concatenate([s.action_dist_inputs for s in samples]),
        samples[0].action_space,
    )


def entropy_of_rollouts(sample: RolloutSample, measure: str, normalize_actions: bool) -> EntropyEstimate:
    """Mean entropy (`measure`) of the policy over the sampled steps: `total` a scalar, `per_dim` [dims or
    sub-actions]."""
    inputs = torch.as_tensor(sample.action_dist_inputs, dtype=torch.float64)
    entropies = measured_entropies(inputs, sample.action_space, normalize_actions)
    per_dim = entropies[entropy_key(measure, sample.action_space)].mean(0)
    return EntropyEstimate(per_dim.sum(), per_dim)
