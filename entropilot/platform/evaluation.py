"""Held-out evaluation during training: ``GreedyPolicy`` (the trained policy as a plain function, what export puts in
its graph) flown from the evaluation seeds, summarized as its success rate with a Wilson lower bound, its crashes and
its final distance; and the order that picks the best evaluation (what ``checkpoint.keep_best`` keeps and
``stop.success_lower_bound`` / ``stop.max_crashes`` judge). Single-drone episodes fly in lockstep, one batched forward
pass per step, on the drones of one vector env built once per training run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entropilot.platform.config import ExperimentConfig
from entropilot.platform.stats import wilson_interval

CONFIDENCE = 0.95  # of the success rate's lower bound
BATCH_SIZE = 100  # the most drones flown in lockstep (one PyBullet world)


class GreedyPolicy:
    """The trained policy as a plain obs -> action function: normalize, forward, Gaussian mean, clip.

    For SAC's tanh-squashed Gaussian the deterministic action is tanh(mean) (RLlib's own
    ``to_deterministic`` returns the pre-tanh mean, ray-project/ray#51544), which for our [-1, 1]
    action boxes is already the env action.

    The same computation the ONNX export puts in its graph; used here for evaluation and videos. In a
    swarm run it is the shared policy, normalizing with the filter statistics pooled over all drones
    (see `algorithm.observation_filter_stats`), and flies every drone.
    """

    def __init__(self, module, filter_stats):
        import torch
        from ray.rllib.models.torch.torch_distributions import TorchSquashedGaussian

        self._torch = torch
        self.module = module
        self.filter = filter_stats
        self.squashed = issubclass(module.get_inference_action_dist_cls(), TorchSquashedGaussian)

    @classmethod
    def from_algo(cls, algo) -> GreedyPolicy:
        from entropilot.platform.algorithm import observation_filter_stats
        from entropilot.platform.train import module_id

        return cls(algo.get_module(module_id(algo)), observation_filter_stats(algo))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """One observation -> one action; a batch (N, n) -> (N, 4), one forward pass for all of them."""
        torch = self._torch
        x = np.asarray(self.filter.normalize(obs) if self.filter is not None else obs, dtype=np.float32)
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.as_tensor(x.reshape(-1, x.shape[-1]))})
        inputs = out["action_dist_inputs"].numpy()
        mean = inputs[:, : inputs.shape[1] // 2]
        action = np.clip(np.tanh(mean) if self.squashed else mean, -1.0, 1.0)
        return action.reshape(x.shape[:-1] + (action.shape[-1],))


def evaluate(algo, cfg: ExperimentConfig, record_frames: bool = False):
    """Greedy episodes on held-out seeds (``evaluation.seed`` onward) in a fresh local env, one at a time (the
    training loop's evaluations fly single-drone episodes in lockstep instead: ``evaluation.Evaluator``).

    One `EpisodeResult` per episode; in a swarm one per drone and episode (all drones flown by the shared
    policy), so the mean of ``success`` is the fraction of drones that succeeded.
    """
    from entropilot.envs import make_env
    from entropilot.envs.evaluate import run_episodes, run_swarm_episodes
    from entropilot.platform.train import is_multi_agent

    run = run_swarm_episodes if is_multi_agent(cfg) else run_episodes
    env = make_env(cfg.env.id, render_mode="rgb_array" if record_frames else None, **cfg.env.kwargs)
    try:
        return run(env, GreedyPolicy.from_algo(algo), cfg.evaluation.episodes, cfg.evaluation.seed, record_frames)
    finally:
        env.close()


@dataclass(frozen=True)
class Evaluation:
    episodes: int
    successes: int
    crashes: int
    mean_final_distance: float  # m

    @classmethod
    def of(cls, results: list) -> Evaluation:
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
            "success_rate": self.success_rate,
            "eval_success_lower_bound": self.lower_bound,
            "eval_crashes": float(self.crashes),
            "eval_final_distance": self.mean_final_distance,
        }


class Evaluator:
    """Flies ``evaluation.episodes`` greedy episodes from ``evaluation.seed`` on: single-drone tasks in lockstep on a
    vector env it keeps for the whole run (``close`` it), the swarm one episode at a time."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._env = None

    def run(self, algo) -> tuple[Evaluation, list]:
        """(the summary, the ``EpisodeResult``s) of the current policy of ``algo``."""
        from entropilot.envs.evaluate import run_episodes_batched
        from entropilot.platform.train import is_multi_agent

        cfg = self.cfg
        if is_multi_agent(cfg):
            results = evaluate(algo, cfg)
        else:
            if self._env is None:
                from entropilot.envs import make_vector_env
                from entropilot.envs.evaluate import lockstep_drones

                drones = lockstep_drones(cfg.evaluation.episodes, BATCH_SIZE)
                self._env = make_vector_env(cfg.env.id, drones, **cfg.env.kwargs)
            seeds = list(range(cfg.evaluation.seed, cfg.evaluation.seed + cfg.evaluation.episodes))
            results = run_episodes_batched(self._env, GreedyPolicy.from_algo(algo), seeds)
        return Evaluation.of(results), results

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
