"""Milliseconds per SAC training step on hover: entropilot's (flat transitions, `FaultTolerantSAC.training_step`, and
the lean gradient step of `ResumableSACLearner`) against RLlib's own (prioritized episode buffer, learner connector,
a backward pass per optimizer), in the same run.

Re-run (about two minutes):

    .venv/bin/python benchmarks/sac_step.py
    .venv/bin/python benchmarks/sac_step.py --steps 30 --repeats 7 --set model.hidden=[256,256]

What it measures: algorithms built from configs/hover_sac.yaml (Ray in-process, sampling in the driver), each
training step one sample round (one env step of each of the runner's envs) and one gradient update of
`train_batch_size` replayed transitions (`algorithm.updates_per_env_step` = 1 / envs), on three arms: entropilot's
step and gradients, entropilot's step with RLlib's gradients (`with_rllib_sac_gradients`: the share of the replay),
and RLlib's step with RLlib's gradients. The arms alternate in blocks of `--steps` (each warmed past
`learning_starts` first); the median over `--repeats` blocks is printed, of wall-clock and of this process's CPU
milliseconds (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import ray
from _machine import cpu_name
from ray.rllib.algorithms.sac import SAC

from entropilot.platform.algorithm import FaultTolerantSAC, algorithm_settings, build_algorithm
from entropilot.platform.config import load_config
from entropilot.policies.sac_learner import ResumableSACLearner, with_rllib_sac_gradients

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover_sac.yaml"
# arm -> (RLlib's gradients?, training step)
ARMS = {
    "entropilot": (False, FaultTolerantSAC.training_step),
    "flat transitions, RLlib's gradients": (True, FaultTolerantSAC.training_step),
    "RLlib": (True, SAC.training_step),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per arm (after one warm-up block)")
    parser.add_argument("--set", action="append", default=[], help="config override, as for `entropilot train`")
    args = parser.parse_args()
    overrides = ["resources.gpu=off", "resources.num_env_runners=0", *args.set]
    envs = load_config(CONFIG, overrides).resources.envs_per_runner
    cfg = load_config(CONFIG, [*overrides, f"algorithm.updates_per_env_step={1 / envs}"])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=10**9, log_to_driver=False)
    settings = algorithm_settings(cfg)
    algos = {
        arm: build_algorithm(
            **settings, learner_class=with_rllib_sac_gradients(ResumableSACLearner) if rllib_gradients else None
        )
        for arm, (rllib_gradients, _) in ARMS.items()
    }
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        for arm, (_, step) in ARMS.items():  # past learning_starts
            for _ in range(-(-cfg.algorithm.learning_starts // envs) + 1):
                step(algos[arm])
        for block in range(args.repeats + 1):  # block 0 warms up
            for arm, (_, step) in ARMS.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    step(algos[arm])
                if block:
                    wall[arm].append(1000 * (time.perf_counter() - started) / args.steps)
                    cpu[arm].append(1000 * (time.process_time() - cpu_started) / args.steps)
    finally:
        for algo in algos.values():
            algo.stop()
        ray.shutdown()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nSAC training step, hover ({envs} envs sampled in the driver, 1 update of {cfg.algorithm.train_batch_size} "
        f"transitions per step, net {cfg.model.hidden}; {cpu_name()}, {os.cpu_count()} cores, load {load:.1f}); "
        f"median of {args.repeats} blocks of {args.steps} steps\n"
    )
    print("| arm | ms / training step | × RLlib | CPU ms / training step | × RLlib (CPU) |")
    print("|---|---:|---:|---:|---:|")
    base, base_cpu = statistics.median(wall["RLlib"]), statistics.median(cpu["RLlib"])
    for arm in ARMS:
        ms, cpu_ms = statistics.median(wall[arm]), statistics.median(cpu[arm])
        print(f"| {arm} | {ms:.1f} | {ms / base:.2f}× | {cpu_ms:.1f} | {cpu_ms / base_cpu:.2f}× |")


if __name__ == "__main__":
    main()
