"""Seconds per PPO learner update of the hover recipe (`learner_update_timer`'s work: GAE, minibatches, epochs),
with torch's thread count and the minibatch/epoch recipe varied, against the recipe's own numbers in the same run,
and the lean gradient step (fused Adam, multi-tensor clipping: `policies/lean_gradients.py`) against RLlib's own.

Re-run (about a minute):

    .venv/bin/python benchmarks/learner_update.py
    .venv/bin/python benchmarks/learner_update.py --threads 1 2 --minibatch 512 1000 2000 --epochs 10 5

What it measures: the learner `entropilot train configs/hover.yaml` builds (our EntropyControlledPPOLearner, its
entropy control on), in this process without Ray, updating on the same train batch (sampled once by the bulk
sampler: one batch of `train_batch_size` env steps) for each variant; variants interleave over `--repeats` rounds
and the median is printed. `gradients`: `lean` is what training uses, `rllib` the same learner with RLlib's
optimizer, clipping and gradient step (the numbers are equal, `tests/test_lean_gradients.py`), built alike.
Threads: `torch.set_num_threads` (the driver's local learner gets `resources`' CPUs per
learner; a Ray env-runner or learner actor gets its CPUs as OMP_NUM_THREADS). Minibatch and epochs change the
learning recipe (item 5 of issue 10): seconds are only half the trade; whether it still learns is the training
benchmark's question (`benchmarks/train_hover.py --set algorithm.minibatch_size=...`).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time
from pathlib import Path

import torch
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from entropilot.platform.algorithm import algorithm_config, algorithm_settings
from entropilot.platform.bulk_runner import BulkEnvRunner
from entropilot.platform.config import load_config
from entropilot.policies.lean_gradients import with_rllib_gradients
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cfg = load_config(CONFIG, ["resources.gpu=off", "resources.num_env_runners=0"])
    a = cfg.algorithm
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--minibatch", type=int, nargs="+", default=[a.minibatch_size])
    parser.add_argument("--epochs", type=int, nargs="+", default=[a.num_epochs])
    parser.add_argument("--gradients", nargs="+", choices=["lean", "rllib"], default=["lean", "rllib"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    settings = algorithm_settings(cfg)
    config = algorithm_config(**settings)
    runner = BulkEnvRunner(config=config)
    configs = {
        "lean": config,
        "rllib": algorithm_config(**settings, learner_class=with_rllib_gradients(EntropyControlledPPOLearner)),
    }
    learners = {name: configs[name].build_learner(spaces=runner.get_spaces()) for name in args.gradients}
    runner.sample(num_timesteps=a.train_batch_size)  # past the first episodes' starts
    episodes = runner.sample(num_timesteps=a.train_batch_size)
    variants = list(itertools.product(args.gradients, args.threads, args.minibatch, args.epochs))
    seconds = {variant: [] for variant in variants}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for variant in variants:
            gradients, threads, minibatch, epochs = variant
            torch.set_num_threads(threads)
            batch = copy.deepcopy(episodes)  # the learner connector extends episodes in place
            started = time.perf_counter()
            learners[gradients].update(
                episodes=batch,
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: a.train_batch_size * (round_ + 1)},
                num_epochs=epochs,
                minibatch_size=minibatch,
                shuffle_batch_per_epoch=True,
            )
            if round_:
                seconds[variant].append(time.perf_counter() - started)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nPPO learner update, hover recipe ({a.train_batch_size} env steps per batch; {os.cpu_count()} cores, "
        f"load {load:.1f}); median of {args.repeats}\n"
    )
    print(
        "| gradients | torch threads | minibatch | epochs | minibatch steps | s / update | ms / minibatch step "
        "| × recipe |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    baseline = seconds.get((args.gradients[0], args.threads[0], a.minibatch_size, a.num_epochs))
    recipe = statistics.median(baseline) if baseline else None
    for (gradients, threads, minibatch, epochs), values in seconds.items():
        median = statistics.median(values)
        steps = epochs * max(1, a.train_batch_size // minibatch)
        ratio = f"{median / recipe:.2f}×" if recipe else "-"
        print(
            f"| {gradients} | {threads} | {minibatch} | {epochs} | {steps} | {median:.3f} | "
            f"{1000 * median / steps:.1f} | {ratio} |"
        )
    print(
        f"\n× recipe: over {args.gradients[0]} gradients on {args.threads[0]} thread(s) with hover.yaml's minibatch "
        "and epochs, in this run."
    )


if __name__ == "__main__":
    main()
