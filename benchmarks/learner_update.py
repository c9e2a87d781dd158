"""Seconds per PPO learner update of the hover recipe (`learner_update_timer`'s work: GAE, minibatches, epochs),
with torch's thread count and the minibatch/epoch recipe varied, against the recipe's own numbers in the same run,
the lean gradient step (fused Adam, multi-tensor clipping: `policies/lean_gradients.py`) against RLlib's own, and the
tensor minibatches (`rllib_internals.TensorMinibatchesMixin`) against RLlib's minibatch iterator, and the module's
forward written out (`rllib_internals.LeanForwardMixin`) against the module's own `forward_train`.

Re-run (a minute or two):

    .venv/bin/python benchmarks/learner_update.py
    .venv/bin/python benchmarks/learner_update.py --threads 1 2 --minibatch 512 1000 2000 --epochs 10 5
    .venv/bin/python benchmarks/learner_update.py --threads 1 --gradients lean --repeats 15  # minibatches only
    .venv/bin/python benchmarks/learner_update.py --threads 1 --gradients lean --minibatches tensor --loss lean

What it measures: the learner `entropilot train configs/hover.yaml` builds (our EntropyControlledPPOLearner, its
entropy control on), in this process without Ray, updating on the same train batch (sampled once by the bulk
sampler: one batch of `train_batch_size` env steps) for each variant; variants interleave over `--repeats` rounds
and the median is printed, of wall-clock seconds and of this process's CPU seconds (steadier on a shared machine).
`gradients`: `lean` is what training uses, `rllib` the same learner with RLlib's optimizer, clipping and gradient
step (the numbers are equal, `tests/test_lean_gradients.py`), built alike. `minibatches`: `tensor` is what training
uses, `rllib` RLlib's `MiniBatchCyclicIterator` (the same minibatches and weights:
`tests/test_lean_learner_iteration.py`). `forward`: `lean` is what training uses, `rllib` the module's own
`forward_train` (the same weights to the bit, the same test). `bare torch (floor)`: the same update's minibatch steps
without RLlib (`BareTorchPPO`), what torch itself costs for them on this machine.
Threads: `torch.set_num_threads` (the driver's local learner gets `resources`' CPUs per
learner; a Ray env-runner or learner actor gets its CPUs as OMP_NUM_THREADS). Minibatch and epochs change the
learning recipe (item 5 of issue 10): seconds are only half the trade; whether it still learns is the training
benchmark's question (`benchmarks/train_hover.py --set algorithm.minibatch_size=...`).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import statistics
import time
from pathlib import Path

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME, NUM_MODULE_STEPS_TRAINED

from entropilot.platform.algorithm import algorithm_config, algorithm_settings
from entropilot.platform.bulk_runner import BulkEnvRunner
from entropilot.platform.config import load_config
from entropilot.policies.lean_gradients import with_rllib_gradients
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner, with_rllib_loss
from entropilot.rllib_internals import (
    free_log_std_actor,
    learner_connector_batch,
    tensor_minibatches,
    with_rllib_forward,
    with_rllib_minibatches,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover.yaml"
MODULE = "default_policy"
FLOOR = "bare torch (floor)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cfg = load_config(CONFIG, ["resources.gpu=off", "resources.num_env_runners=0"])
    a = cfg.algorithm
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--minibatch", type=int, nargs="+", default=[a.minibatch_size])
    parser.add_argument("--epochs", type=int, nargs="+", default=[a.num_epochs])
    parser.add_argument("--gradients", nargs="+", choices=["lean", "rllib"], default=["lean", "rllib"])
    parser.add_argument("--minibatches", nargs="+", choices=["tensor", "rllib"], default=["tensor", "rllib"])
    parser.add_argument("--loss", nargs="+", choices=["lean", "rllib"], default=["lean", "rllib"])
    parser.add_argument("--forward", nargs="+", choices=["lean", "rllib"], default=["lean", "rllib"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-torch floor")
    args = parser.parse_args()

    settings = algorithm_settings(cfg)
    config = algorithm_config(**settings)
    runner = BulkEnvRunner(config=config)
    rllib_gradients = {"lean": EntropyControlledPPOLearner, "rllib": with_rllib_gradients(EntropyControlledPPOLearner)}
    rllib_minibatches = {"tensor": lambda learner_class: learner_class, "rllib": with_rllib_minibatches}
    rllib_loss = {"lean": lambda learner_class: learner_class, "rllib": with_rllib_loss}
    rllib_forward = {"lean": lambda learner_class: learner_class, "rllib": with_rllib_forward}
    learners = {
        (gradients, minibatches, loss, forward): algorithm_config(
            **settings,
            learner_class=rllib_forward[forward](
                rllib_loss[loss](rllib_minibatches[minibatches](rllib_gradients[gradients]))
            ),
        ).build_learner(spaces=runner.get_spaces())
        for gradients, minibatches, loss, forward in itertools.product(
            args.gradients, args.minibatches, args.loss, args.forward
        )
    }
    runner.sample(num_timesteps=a.train_batch_size)  # past the first episodes' starts
    episodes = runner.sample(num_timesteps=a.train_batch_size)
    variants = list(
        itertools.product(
            args.gradients, args.minibatches, args.loss, args.forward, args.threads, args.minibatch, args.epochs
        )
    )
    first = next(iter(learners.values()))
    floor = BareTorchPPO(first.module[MODULE], config) if args.floor else None
    # A floor row has the table's columns too: its gradients, minibatches, loss and forward are the floor's own.
    floor_variants = [
        (FLOOR, "-", "-", "-", *shape)
        for shape in itertools.product(args.threads, args.minibatch, args.epochs)
        if floor
    ]
    seconds: dict[tuple, list[float]] = {variant: [] for variant in [*variants, *floor_variants]}
    cpu_seconds: dict[tuple, list[float]] = {variant: [] for variant in seconds}
    steps = {}  # minibatch steps per update, as the learner counts them (the batch holds an extra row per episode)
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for variant in floor_variants:
            *_, threads, minibatch, epochs = variant
            torch.set_num_threads(threads)
            batch = learner_connector_batch(first, copy.deepcopy(episodes))[MODULE]
            started, cpu_started = time.perf_counter(), time.process_time()
            floor_steps = floor.update(batch, epochs, minibatch)
            if round_:
                seconds[variant].append(time.perf_counter() - started)
                cpu_seconds[variant].append(time.process_time() - cpu_started)
                steps[variant] = floor_steps
        for variant in variants:
            gradients, minibatches, loss, forward, threads, minibatch, epochs = variant
            torch.set_num_threads(threads)
            batch = copy.deepcopy(episodes)  # the learner connector extends episodes in place
            started, cpu_started = time.perf_counter(), time.process_time()
            result = learners[gradients, minibatches, loss, forward].update(
                episodes=batch,
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: a.train_batch_size * (round_ + 1)},
                num_epochs=epochs,
                minibatch_size=minibatch,
                shuffle_batch_per_epoch=True,
            )
            if round_:
                seconds[variant].append(time.perf_counter() - started)
                cpu_seconds[variant].append(time.process_time() - cpu_started)
                steps[variant] = round(result[MODULE][NUM_MODULE_STEPS_TRAINED].peek() / minibatch)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nPPO learner update, hover recipe ({a.train_batch_size} env steps per batch; {os.cpu_count()} cores, "
        f"load {load:.1f}); median of {args.repeats}\n"
    )
    print(
        "| gradients | minibatches | loss | forward | torch threads | minibatch | epochs | minibatch steps "
        "| s / update | ms / minibatch step | × recipe | CPU s / update | × recipe (CPU) |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    baseline = (
        args.gradients[0],
        args.minibatches[0],
        args.loss[0],
        args.forward[0],
        args.threads[0],
        a.minibatch_size,
        a.num_epochs,
    )
    recipe = statistics.median(seconds[baseline]) if baseline in seconds else None
    recipe_cpu = statistics.median(cpu_seconds[baseline]) if baseline in seconds else None
    for variant, values in seconds.items():
        gradients, minibatches, loss, forward, threads, minibatch, epochs = variant
        median, cpu = statistics.median(values), statistics.median(cpu_seconds[variant])
        ratio = f"{median / recipe:.2f}×" if recipe else "-"
        cpu_ratio = f"{cpu / recipe_cpu:.2f}×" if recipe_cpu else "-"
        print(
            f"| {gradients} | {minibatches} | {loss} | {forward} | {threads} | {minibatch} | {epochs} "
            f"| {steps[variant]} | {median:.3f} | {1000 * median / steps[variant]:.1f} | {ratio} "
            f"| {cpu:.3f} | {cpu_ratio} |"
        )
    print(
        f"\n× recipe: over {args.gradients[0]} gradients, {args.minibatches[0]} minibatches, the {args.loss[0]} loss "
        f"and the {args.forward[0]} forward on {args.threads[0]} thread(s) with hover.yaml's minibatch and epochs, in "
        "this run."
    )


class BareTorchPPO:
    """The floor: PPO's update written out as CleanRL writes it, no RLlib, on a copy of the learner's two nets and the
    learner connector's train batch (its advantages and value targets), cut into the same minibatches
    (`rllib_internals.tensor_minibatches`): per minibatch the actor and critic forward, the clipped surrogate and the
    value error (mask-weighted means; the recipe has no value clamp, no KL term, and its entropy coefficient starts
    at 0), one backward pass, global-norm clipping, fused Adam. What it leaves out of a learner update: the learner
    connector (GAE), the entropy measurement and the metrics."""

    def __init__(self, module, config):
        module = copy.deepcopy(module)
        actor = free_log_std_actor(module)
        if actor is None:
            raise ValueError("the floor runs RLlib's MLP actor with a free log std (configs/hover.yaml's)")
        self.actor = torch.nn.Sequential(*actor[0])
        self.critic = torch.nn.Sequential(*module.encoder.critic_encoder.net.mlp, *module.vf.net.mlp)
        self.log_std = module.pi.log_std
        self.params = [*self.actor.parameters(), *self.critic.parameters(), self.log_std]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=True)
        self.config = config

    def update(self, batch, epochs: int, minibatch_size: int) -> int:
        """One update; returns its minibatch steps."""
        c = self.config
        whole = MultiAgentBatch({MODULE: SampleBatch(dict(batch))}, len(batch[Columns.OBS]))
        steps = 0
        for minibatch in tensor_minibatches(whole, num_epochs=epochs, minibatch_size=minibatch_size, shuffle=True):
            b = minibatch.policy_batches[MODULE]
            mean, values = self.actor(b[Columns.OBS]), self.critic(b[Columns.OBS]).squeeze(-1)
            z = (b[Columns.ACTIONS] - mean) * torch.exp(-self.log_std)
            logp = (-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            ratio = torch.exp(logp - b[Columns.ACTION_LOGP])
            advantages = b[Postprocessing.ADVANTAGES]
            surrogate = torch.min(advantages * ratio, advantages * ratio.clamp(1 - c.clip_param, 1 + c.clip_param))
            weights = b[Columns.LOSS_MASK].float() / b[Columns.LOSS_MASK].sum()
            error = (values - b[Postprocessing.VALUE_TARGETS]) ** 2
            loss = -(surrogate * weights).sum() + c.vf_loss_coeff * (error * weights).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip, foreach=True)
            self.optimizer.step()
            steps += 1
        return steps


if __name__ == "__main__":
    main()
