"""Greedy evaluation of a training run's policy on held-out seeds: `GreedyPolicy` (the policy as a plain
obs -> action function, what export puts in its graph), `Evaluation` (the episodes in lockstep in a vector env) and
`EvaluationSummary` (success rate with its Wilson lower bound, crashes, final distance: what `stop.*` judges and
`checkpoint.keep_best` ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entropilot.platform.config import ExperimentConfig
from entropilot.platform.names import Metric
from entropilot.platform.stats import wilson_interval
from entropilot.platform.train import module_id

CONFIDENCE = 0.95  # of the success rate's lower bound
BATCH_SIZE = 100  # the most episodes flown in lockstep (one vector env)


class GreedyPolicy:
    """The trained policy as a plain obs -> action function: normalize, forward, Gaussian mean, clip.

    For SAC's tanh-squashed Gaussian the deterministic action is tanh(mean) (RLlib's own
    ``to_deterministic`` returns the pre-tanh mean, ray-project/ray#51544), which for our [-1, 1]
    action boxes is already the env action. For a categorical policy (Discrete, MultiDiscrete actions) it is
    the most likely index of each sub-action (argmax of its logits; the first on a tie, as torch's argmax),
    int64 (a scalar per observation for Discrete).

    The same computation the ONNX export puts in its graph; used here for evaluation and videos. In a
    swarm run it is the shared policy, normalizing with the filter statistics pooled over all drones
    (see `algorithm.observation_filter_stats`), and flies every drone.
    """

    def __init__(self, module, filter_stats):
        import torch
        from ray.rllib.models.torch.torch_distributions import TorchSquashedGaussian

        from entropilot.policies.entropy_range import categorical_sizes

        self._torch = torch
        self.module = module
        self.filter = filter_stats
        self.categorical_sizes = categorical_sizes(module.action_space)
        self.squashed = issubclass(module.get_inference_action_dist_cls(), TorchSquashedGaussian)

    @classmethod
    def from_algo(cls, algo) -> GreedyPolicy:
        from entropilot.platform.algorithm import observation_filter_stats

        return cls(algo.get_module(module_id(algo)), observation_filter_stats(algo))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The action for one observation (obs,), or the actions for a batch of them (N, obs), in one forward."""
        torch = self._torch
        obs = np.asarray(obs)
        x = self.filter.normalize(obs) if self.filter is not None else obs
        batch = np.asarray(x, dtype=np.float32).reshape(-1, obs.shape[-1])
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.as_tensor(batch)})
        inputs = out["action_dist_inputs"]
        if self.categorical_sizes is not None:
            parts = inputs.split(list(self.categorical_sizes), dim=-1)
            actions = torch.stack([part.argmax(-1) for part in parts], dim=-1).numpy().astype(np.int64)
            if not self.module.action_space.shape:  # Discrete: one index per observation
                actions = actions[:, 0]
        else:
            inputs = inputs.numpy()
            mean = inputs[:, : inputs.shape[1] // 2]
            actions = np.clip(np.tanh(mean) if self.squashed else mean, -1.0, 1.0)
        return actions if obs.ndim == 2 else actions[0]


class Evaluation:
    """Greedy episodes on held-out seeds (``evaluation.seed`` onward, episode k on seed + k) in local envs.

    A single-drone env flies the episodes in lockstep in a vector env (`resources.vector_env`'s kind; at most
    `BATCH_SIZE` at a time), the policy acting on all drones in one forward (`run_vector_episodes`); the vector env is
    built on first use and kept for later evaluations (each resets it with the same seeds). With ``record_frames``
    (the video) and in a swarm, episode after episode in a fresh env.
    One `EpisodeResult` per episode; in a swarm one per drone and episode (all drones flown by the shared policy),
    so the mean of ``success`` is the fraction of drones that succeeded.
    """

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._vector_env = None

    def run(self, algo, record_frames: bool = False):
        from entropilot.envs import flight_kwargs, make_env
        from entropilot.envs.evaluate import lockstep_drones, run_episodes, run_swarm_episodes, run_vector_episodes
        from entropilot.platform.algorithm import is_multi_agent

        cfg, e = self.cfg, self.cfg.evaluation
        policy = GreedyPolicy.from_algo(algo)
        kwargs = flight_kwargs(cfg.env.kwargs)  # held-out starts as they come, none replayed
        if is_multi_agent(cfg) or record_frames:
            run = run_swarm_episodes if is_multi_agent(cfg) else run_episodes
            env = make_env(cfg.env.id, render_mode="rgb_array" if record_frames else None, **kwargs)
            try:
                return run(env, policy, e.episodes, e.seed, record_frames)
            finally:
                env.close()
        if self._vector_env is None:
            import gymnasium as gym

            # The kind of vector env the runners sample with: batched (one world) or sync (single envs).
            mode = "vector_entry_point" if cfg.resources.vector_env == "batched" else "sync"
            drones = lockstep_drones(e.episodes, BATCH_SIZE)
            self._vector_env = gym.make_vec(cfg.env.id, num_envs=drones, vectorization_mode=mode, **kwargs)
        return run_vector_episodes(self._vector_env, policy, e.seed, e.episodes, record_paths=False)

    def close(self) -> None:
        if self._vector_env is not None:
            self._vector_env.close()
            self._vector_env = None


def evaluate(algo, cfg: ExperimentConfig, record_frames: bool = False):
    """One `Evaluation` of ``algo``'s greedy policy (see there)."""
    evaluation = Evaluation(cfg)
    try:
        return evaluation.run(algo, record_frames)
    finally:
        evaluation.close()


@dataclass(frozen=True)
class EvaluationSummary:
    """What an evaluation's episodes say: successes, crashes, mean final distance; the success rate's Wilson lower bound
    and the order that picks the best evaluation."""

    episodes: int
    successes: int
    crashes: int
    mean_final_distance: float  # m

    @classmethod
    def of(cls, results: list) -> EvaluationSummary:
        """From ``EpisodeResult``s (a swarm's: one per drone and episode)."""
        return cls(
            len(results),
            sum(r.success for r in results),
            sum(r.crash is not None for r in results),
            float(np.mean([r.final_distance for r in results])),
        )

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    @property
    def lower_bound(self) -> float:
        """The 95 % Wilson lower bound of the success rate: 20/20 says >= 0.84, 100/100 >= 0.96."""
        return wilson_interval(self.successes, self.episodes, CONFIDENCE)[0]

    def score(self) -> tuple[float, int, float]:
        """Larger is better: the success lower bound, then fewer crashes, then a smaller final distance."""
        return (self.lower_bound, -self.crashes, -self.mean_final_distance)

    def metrics(self) -> dict[str, float]:
        return {
            Metric.SUCCESS_RATE: self.success_rate,
            Metric.EVAL_SUCCESS_LOWER_BOUND: self.lower_bound,
            Metric.EVAL_CRASHES: float(self.crashes),
            Metric.EVAL_FINAL_DISTANCE: self.mean_final_distance,
        }
