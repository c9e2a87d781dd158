"""Training speed on hover: wall time until the evaluation success rate first reaches 0.95, and where it went
(start-up, init, sampling, learning, evaluation, logging, other), for `configs/hover.yaml` with RLlib's stock
sampler and with entropilot's bulk sampler, beside Stable-Baselines3 PPO on the same env and recipe, in one run;
`--config` takes any hover-style experiment through the same arms (the discrete-command task, SAC).

Re-run (each run stops at 0.95 success or the budget; on a 2-core laptop about 15-25 minutes for the default):

    .venv/bin/python benchmarks/train_hover.py                       # stock, bulk and sb3 on seeds 0-4
    .venv/bin/python benchmarks/train_hover.py --arms bulk sb3 --seeds 0 1 --budget 300
    .venv/bin/python benchmarks/train_hover.py --set resources.envs_per_runner=32 --set algorithm.num_epochs=5
    .venv/bin/python benchmarks/train_hover.py --config configs/hover_discrete.yaml --arms stock plain --budget 3600
    .venv/bin/python benchmarks/train_hover.py --config configs/hover_sac.yaml --arms stock --budget 3600

The arms run seed by seed, interleaved, so load from elsewhere that comes and goes hits every arm alike.

- stock / bulk: `entropilot train configs/hover.yaml` (the function the command calls, in this process, a fresh Ray
  each run) on RLlib's own path (`resources.sampler=stock`, `vector_env=sync`: SyncVectorEnv of single envs) or on
  entropilot's (`sampler=bulk`, `vector_env=batched`: one batched forward per step over all drones in one PyBullet
  world; an env without a batched world, the discrete-command task, keeps `vector_env=sync`); `plain`
  (optional) is stock without entropy-aware init, entropy control or the init family (RLlib's own init), plain
  RLlib PPO. Time to 0.95 is wall time from the command's start (below): imports, the algorithm's build,
  entropy-aware init and the periodic evaluations all count; the phases are the run's own `time_<phase>_s` metrics
  at that iteration (they add up to it), start-up with the imports before `train()`.
- sb3: Stable-Baselines3 PPO (`pip install '.[bench]'`) with the config's recipe: the same env and options, as
  many envs (DummyVecEnv) and steps per iteration, epochs, minibatch, lr, gamma, GAE lambda, clip, grad clip,
  value coefficient, network (tanh MLP, state-independent log std starting at the recipe's `model.initial_std`,
  SB3's small policy head), observation
  normalization (VecNormalize, clip 10), no entropy bonus; evaluated as entropilot evaluates (greedy, the same
  held-out seeds, every `evaluation.interval` iterations, all episodes at once in a vector env). Its phases:
  start-up (imports, model and envs), sampling (`collect_rollouts`), learning (`train`), evaluation, other. Torch
  runs with its default threads, as for a user who writes those lines.
  PPO configs only.
--set overrides apply to every arm (sb3 reads the same recipe fields).

`--start command` (the default): every run is a fresh Python process and its time counts from that process's
start, as a person's `entropilot train` (or SB3 script) counts it: cold imports included. `--start train`: all runs
in this process, from `train()` (the RLlib arms) or the script's first recipe line (sb3): warm imports, as earlier
rounds measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from entropilot.envs import VECTOR_ENTRY_POINTS
from entropilot.platform.config import load_config
from entropilot.platform.phases import PHASES
from entropilot.platform.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover.yaml"
TARGET = 0.95
# The measure, the same for every arm: greedy evaluation on 20 held-out episodes every 5 iterations, stopping at the
# first at TARGET. configs/hover.yaml itself evaluates 200 every 10 and trains on to a flight-ready stop criterion.
SPEED_MEASURE = [
    "evaluation.episodes=20",
    "evaluation.interval=5",
    f"stop.success_rate={TARGET}",
    "stop.success_lower_bound=null",
    "stop.max_crashes=null",
]
RLLIB_ARMS = {
    "stock": ["resources.sampler=stock", "resources.vector_env=sync"],
    "bulk": ["resources.sampler=bulk", "resources.vector_env=batched"],
    "plain": [
        "resources.sampler=stock",
        "resources.vector_env=sync",
        "entropy.init.enabled=false",
        "entropy.control.enabled=false",
        # RLlib's own init (no gain, std 1) from draw 0 of the same weight seed.
        "model.output_gain=1",
        "model.initial_std=null",
    ],
}
ARMS = (*RLLIB_ARMS, "sb3")


def rllib_run(
    config: Path, arm: str, seed: int, budget: float, overrides: list[str], workdir: Path, started_at: float | None
) -> dict:
    """One run of an RLlib arm; ``started_at`` (a `time.time()`): the command's start, whose time to `train()` counts
    as start-up."""
    arm_overrides = RLLIB_ARMS[arm]
    if arm == "bulk" and load_config(config, overrides).env.id not in VECTOR_ENTRY_POINTS:
        arm_overrides = ["resources.sampler=bulk", "resources.vector_env=sync"]  # no batched world for this env
    cfg = load_config(
        config,
        [
            f"seed={seed}",
            f"stop.time_s={budget}",
            *SPEED_MEASURE,
            "mlflow.video=false",
            "mlflow.system_metrics=false",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"checkpoint.dir={workdir}/{arm}-{seed}",
            *overrides,
            *arm_overrides,
        ],
    )
    before_train = 0.0 if started_at is None else time.time() - started_at
    result = train(cfg, echo=lambda line: None)
    reached = next((h for h in result.history if h.get("success_rate", 0.0) >= TARGET), None)
    last = reached or result.history[-1]
    phases = {phase: last.get(f"time_{phase}_s", 0.0) for phase in PHASES}
    phases["startup"] += before_train
    return {
        "arm": arm,
        "seed": seed,
        "time_s": before_train + reached["time_s"] if reached else None,
        "env_steps": int(last.get("env_steps", 0)),
        "iterations": result.history.index(last) + 1,
        "phases": phases,
        "success": result.success_rate,
    }


def sb3_run(config: Path, seed: int, budget: float, overrides: list[str], started_at: float | None) -> dict:
    """One SB3 run; ``started_at`` (a `time.time()`): the command's start, from which its time counts."""
    start = time.perf_counter() - (0.0 if started_at is None else time.time() - started_at)
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from entropilot.envs import make_env
    from entropilot.envs.evaluate import run_vector_episodes

    cfg = load_config(config, [f"seed={seed}", *SPEED_MEASURE, *overrides])
    a, e, n_envs = cfg.algorithm, cfg.evaluation, cfg.resources.envs_per_runner
    if a.name != "PPO":
        raise ValueError(f"sb3: the arm is Stable-Baselines3 PPO on the config's PPO recipe; {config} trains {a.name}")
    if a.train_batch_size % n_envs:
        raise ValueError(f"sb3: train_batch_size {a.train_batch_size} must be a multiple of {n_envs} envs")
    envs = VecNormalize(
        DummyVecEnv([lambda: make_env(cfg.env.id, **cfg.env.kwargs)] * n_envs),
        norm_obs=True,
        norm_reward=False,
        clip_obs=10.0,
        gamma=a.gamma,
    )
    model = PPO(
        "MlpPolicy",
        envs,
        learning_rate=a.lr,
        n_steps=a.train_batch_size // n_envs,
        batch_size=a.minibatch_size,
        n_epochs=a.num_epochs,
        gamma=a.gamma,
        gae_lambda=a.lambda_,
        clip_range=a.clip_param,
        ent_coef=0.0,
        vf_coef=a.vf_loss_coeff,
        max_grad_norm=a.grad_clip,
        policy_kwargs={
            "net_arch": list(cfg.model.hidden),
            "activation_fn": torch.nn.Tanh,
            # The recipe's initial std (SB3's own: 1); its policy head already starts small (gain 0.01), as ours.
            **({"log_std_init": math.log(cfg.model.initial_std)} if cfg.model.initial_std is not None else {}),
        },
        seed=seed,
        device="cpu",
    )
    evaluation_env = gym.make_vec(cfg.env.id, num_envs=e.episodes, vectorization_mode="sync", **cfg.env.kwargs)
    phases = dict.fromkeys(PHASES, 0.0)
    phases["startup"] = time.perf_counter() - start

    class Timer(BaseCallback):
        """Seconds in collect_rollouts (sampling) and in train (learning: from a rollout's end to the next)."""

        def _on_rollout_start(self) -> None:
            self._started = time.perf_counter()
            if getattr(self, "_ended", None) is not None:
                phases["learning"] += self._started - self._ended

        def _on_rollout_end(self) -> None:
            self._ended = time.perf_counter()
            phases["sampling"] += self._ended - self._started

        def _on_training_end(self) -> None:
            phases["learning"] += time.perf_counter() - self._ended
            self._ended = None

        def _on_step(self) -> bool:
            return True

    def greedy(obs):
        return model.predict(envs.normalize_obs(obs), deterministic=True)[0]

    timer, iterations, success, elapsed = Timer(), 0, 0.0, 0.0
    try:
        while success < TARGET and elapsed < budget:
            model.learn(e.interval * a.train_batch_size, callback=timer, reset_num_timesteps=False)
            iterations += e.interval
            started = time.perf_counter()
            episodes = run_vector_episodes(evaluation_env, greedy, e.seed)
            phases["evaluation"] += time.perf_counter() - started
            success = sum(r.success for r in episodes) / len(episodes)
            elapsed = time.perf_counter() - start
    finally:
        evaluation_env.close()
        envs.close()
    phases["other"] = max(0.0, elapsed - sum(phases.values()))
    return {
        "arm": "sb3",
        "seed": seed,
        "time_s": elapsed if success >= TARGET else None,
        "env_steps": int(model.num_timesteps),
        "iterations": iterations,
        "phases": phases,
        "success": success,
    }


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def one_run(args, arm: str, seed: int, workdir: Path, started_at: float | None) -> dict:
    if arm == "sb3":
        return sb3_run(args.config, seed, args.budget, args.overrides, started_at)
    return rllib_run(args.config, arm, seed, args.budget, args.overrides, workdir, started_at)


def run_in_fresh_process(args, arm: str, seed: int, workdir: Path) -> dict:
    """`one_run` in a new Python process, timed from its spawn (the row is the child's last line, as JSON)."""
    command = [sys.executable, __file__, "--config", str(args.config), "--budget", str(args.budget)]
    command += [f"--set={o}" for o in args.overrides] + ["--child", arm, str(seed), str(workdir), repr(time.time())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="any hover-style experiment (hover_discrete.yaml)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["stock", "bulk", "sb3"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per training run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, every arm")
    parser.add_argument(
        "--start",
        choices=["command", "train"],
        default="command",
        help="time from a fresh process's start (default) or, all runs in this process, from train()",
    )
    parser.add_argument("--child", nargs=4, metavar=("ARM", "SEED", "WORKDIR", "STARTED_AT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arm, seed, workdir, started_at = args.child
        print(json.dumps(one_run(args, arm, int(seed), Path(workdir), float(started_at))))
        return
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm in args.arms:
                if args.start == "command":
                    row = run_in_fresh_process(args, arm, seed, Path(tmp))
                else:
                    row = one_run(args, arm, seed, Path(tmp), None)
                rows.append(row)
                reached = "not reached" if row["time_s"] is None else f"{row['time_s']:.1f} s"
                parts = ", ".join(f"{p} {row['phases'][p]:.1f}" for p in PHASES)
                print(
                    f"  {arm:5s} seed {seed}: time to {TARGET} {reached} ({row['iterations']} iterations, "
                    f"{row['env_steps']} env steps; {parts})",
                    flush=True,
                )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.config.name}: wall time from {args.start} start to evaluation success {TARGET} "
        f"({len(args.seeds)} seeds, budget {args.budget:.0f} s, overrides {args.overrides or 'none'}, "
        f"load {load:.1f}); phases: median seconds over the seeds that reached it\n"
    )
    print("| arm | seeds reaching | median time (s) | spread (s) | median env steps | " + " | ".join(PHASES) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(PHASES))
    medians = {}
    for arm in args.arms:
        mine = [r for r in rows if r["arm"] == arm]
        reached = [r for r in mine if r["time_s"] is not None]
        times = [r["time_s"] for r in reached]
        medians[arm] = statistics.median(times) if times else None
        phases = " | ".join(_median([r["phases"][p] for r in reached]) for p in PHASES)
        steps = _median([r["env_steps"] for r in reached])
        print(f"| {arm} | {len(reached)}/{len(mine)} | {_median(times)} | {_spread(times)} | {steps} | {phases} |")
    print()
    for base in ("stock", "sb3", "plain"):
        if "bulk" in medians and base in medians:
            ratio = "n/a" if not (medians["bulk"] and medians[base]) else f"{medians[base] / medians['bulk']:.2f}x"
            print(f"median time to {TARGET}, {base} / bulk: {ratio}")
    print(f"Took {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
