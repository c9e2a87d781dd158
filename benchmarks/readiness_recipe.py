"""The flight-readiness recipe, lever by lever: train a task with each cumulative set of levers (a stop criterion on a
larger evaluation with a confidence bound and no crashes, keeping the best checkpoint; a tighter training envelope;
a crash penalty larger than what rushing gains; training randomization that covers the readiness conditions; wider
starts), export each policy, fly it through the readiness matrix (policy and PID on the same held-out seeds), and
print what each lever bought and what it cost in training time, beside the baseline trained in the same run.

Re-run (each training bounded by --budget seconds; on a quiet 2-core machine hover's baseline takes ~3 minutes):

    .venv/bin/python benchmarks/readiness_recipe.py --task hover --seeds 0 1 2 --budget 1800
    .venv/bin/python benchmarks/readiness_recipe.py --task hover-motors --arms baseline penalty --seeds 0 1 2
    .venv/bin/python benchmarks/readiness_recipe.py --task waypoint --budget 3600
    .venv/bin/python benchmarks/readiness_recipe.py --smoke          # minutes: checks the harness, not the recipe

Every row's numbers are in <workdir>/recipe.json; the training runs are in <workdir>/mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# configs/hover.yaml ships with the levers on; its baseline is the quick recipe it had before them (stop at the first
# 20-episode evaluation at 0.95, the env's own crash envelope and penalty), so every arm starts from that.
HOVER_QUICK = [
    "stop.success_rate=0.95",
    "stop.success_lower_bound=null",
    "stop.max_crashes=null",
    "evaluation.episodes=20",
    "evaluation.interval=5",
    "checkpoint.keep_best=false",
    "env.kwargs.max_tilt_deg=80",
    "env.kwargs.crash_penalty=2",
    "env.kwargs.replay_crash_starts=0",
    "env.kwargs.randomization.action_delay_steps=0",
    "env.kwargs.observation_frame=world",
]
TASKS = {  # name: (config, the task's overrides, then the baseline's)
    "hover": (ROOT / "configs" / "hover.yaml", [], HOVER_QUICK),
    "hover-motors": (ROOT / "configs" / "hover.yaml", ["env.kwargs.action_mode=motors"], HOVER_QUICK),
    "waypoint": (ROOT / "configs" / "waypoint.yaml", [], []),
}
# Cumulative: each arm is the one before it plus its own overrides.
LEVERS = {
    "baseline": [],
    "stop": [  # 200 evaluation episodes; stop on a 95 % lower bound >= 0.95 with no crash; keep the best checkpoint
        "evaluation.episodes=200",
        "evaluation.interval=10",
        "stop.success_rate=null",
        "stop.success_lower_bound=0.95",
        "stop.max_crashes=0",
        "checkpoint.keep_best=true",
    ],
    # Training inside a tighter envelope than the one it is judged by: a tilt past 45 degrees ends the episode as a
    # crash (the readiness report still counts crashes at the env's default 80), with a crash costing 20 steps.
    "envelope": ["env.kwargs.max_tilt_deg=45", "env.kwargs.crash_penalty=20"],
    # A crash costs more than any approach can gain by rushing (a hover episode returns at most ~290, discounted
    # ~100): below it, PPO trades a few percent of crashes for a faster approach. 1000 stops learning (measured).
    "penalty": ["env.kwargs.crash_penalty=200"],
    # A quarter of resets start where one of the last 256 crashed episodes started, so the rare starts the policy
    # cannot fly yet are practised until it can.
    "replay": ["env.kwargs.replay_crash_starts=0.25"],
    # Each episode draws 0 or 1 control period of extra latency: the policy cannot lean on commands landing at once.
    "latency": ["env.kwargs.randomization.action_delay_steps=1"],
    # Position error, velocity and attitude seen from the drone's heading: no heading is preferred, so the policy
    # stops slewing to one at full yaw rate from every start (configs/hover.yaml since 2026-12-07).
    "heading": ["env.kwargs.observation_frame=heading"],
    "randomized": [  # the readiness conditions inside the training distribution
        "env.kwargs.randomization={mass: 0.25, inertia: 0.1, kf: 0.2, km: 0.1, motor_time_constant: 0.5, "
        "noise: 0.9, action_delay_steps: 1, wind_speed: 1.5}",
        "env.kwargs.true_airframe={motor_time_constant: 1.4}",  # with the 0.5 spread: 0.7x-2.1x the nominal lag
        "env.kwargs.wind={mean: [0, 0, 0], gust_std: 0.3}",
        "env.kwargs.sensor_noise={position: 0.005, velocity: 0.02, attitude: 0.01, angular_velocity: 0.05}",
    ],
    "wide": [  # starts as wide as the readiness wide_start condition
        "env.kwargs.start_low=[-1.0, -1.0, 0.5]",
        "env.kwargs.start_high=[1.0, 1.0, 1.8]",
        "env.kwargs.start_tilt_deg=30.0",
        "env.kwargs.start_velocity=0.5",
    ],
}
SMOKE = [
    "algorithm.train_batch_size=400",
    "algorithm.minibatch_size=200",
    "algorithm.num_epochs=2",
    "entropy.init.enabled=false",
    "resources.envs_per_runner=2",
    "evaluation.interval=1",
    "stop.iterations=2",
]


def arm_overrides(arm: str) -> list[str]:
    names = list(LEVERS)
    return [o for name in names[: names.index(arm) + 1] for o in LEVERS[name]]


def run(task: str, arm: str, seed: int, budget: float, workdir: Path, readiness, smoke: bool, extra: list[str]) -> dict:
    import ray

    from entropilot.deploy.export import export_policy
    from entropilot.deploy.readiness import evaluate_policy
    from entropilot.platform.config import load_config
    from entropilot.platform.train import train

    config, task_overrides, baseline = TASKS[task]
    root = workdir / f"{task}-{arm}-{seed}"
    overrides = [
        *task_overrides,
        *baseline,
        *arm_overrides(arm),
        *extra,
        f"seed={seed}",
        f"stop.time_s={budget}",
        "mlflow.video=false",
        "mlflow.system_metrics=false",
        f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
        f"mlflow.experiment=readiness-recipe-{task}",
        f"checkpoint.dir={root}",
        *(SMOKE if smoke else []),
    ]
    result = train(load_config(config, overrides), echo=lambda line: None)
    ray.shutdown()  # each arm starts from a fresh Ray, as a user's `entropilot train` does
    exported = export_policy(root, root / "policy.onnx")  # the best checkpoint where the arm kept one
    report = evaluate_policy(exported.path, readiness, workers=2, echo=lambda line: None)
    (root / "readiness.json").write_text(json.dumps(report, indent=2))
    history = result.history
    row = {
        "task": task,
        "arm": arm,
        "seed": seed,
        "train_s": history[-1]["time_s"],
        "env_steps": result.env_steps,
        "stopped": result.stopped_because,
        "checkpoint": exported.checkpoint.name,
        "conditions": {
            name: {who: {k: c[who][k] for k in ("successes", "episodes", "crashes")} for who in ("policy", "pid")}
            for name, c in report["conditions"].items()
        },
        "gate": report["gate"]["passed"],
    }
    nominal = row["conditions"]["nominal"]["policy"]
    print(
        f"  {task} {arm:10s} seed {seed}: trained {row['train_s']:.0f} s ({row['stopped']}), "
        f"{row['checkpoint']}; nominal {nominal['successes']}/{nominal['episodes']}, {nominal['crashes']} crashes; "
        f"crashes in all conditions {sum(c['policy']['crashes'] for c in row['conditions'].values())}; "
        f"gate {'PASS' if row['gate'] else 'FAIL'}",
        flush=True,
    )
    return row


def table(rows: list[dict]) -> str:
    """One line per arm and seed: training time (and its ratio to the baseline of the same seed), nominal success
    and crashes, and per condition the policy's successes minus the PID's."""
    names = list(rows[0]["conditions"])
    base = {(r["task"], r["seed"]): r["train_s"] for r in rows if r["arm"] == "baseline"}
    header = ["arm", "seed", "train s", "x base", "nominal", "crashes", *[f"{n} -PID" for n in names[1:]]]
    lines = ["  ".join(header)]
    for r in rows:
        c = r["conditions"]
        ratio = r["train_s"] / base[(r["task"], r["seed"])] if (r["task"], r["seed"]) in base else float("nan")
        cells = [
            r["arm"],
            str(r["seed"]),
            f"{r['train_s']:.0f}",
            f"{ratio:.2f}",
            f"{c['nominal']['policy']['successes']}/{c['nominal']['policy']['episodes']}",
            str(sum(v["policy"]["crashes"] for v in c.values())),
            *[f"{c[n]['policy']['successes'] - c[n]['pid']['successes']:+d}" for n in names[1:]],
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=list(TASKS), default="hover")
    parser.add_argument("--arms", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds per training run")
    parser.add_argument("--episodes", type=int, default=None, help="readiness episodes per condition [matrix's]")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides on top of every arm's levers"
    )
    parser.add_argument("--smoke", action="store_true", help="2 tiny iterations per arm: checks the harness only")
    args = parser.parse_args()

    from entropilot.deploy.readiness_config import load_readiness_config

    readiness = load_readiness_config()
    episodes = args.episodes or (4 if args.smoke else None)
    if episodes:
        readiness = readiness.model_copy(update={"episodes": episodes})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="readiness-recipe-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"readiness recipe on {args.task}: arms {args.arms}, seeds {args.seeds}, budget {args.budget:.0f} s, "
        f"overrides {args.set}; {workdir}"
    )
    rows = [
        run(args.task, arm, seed, args.budget, workdir, readiness, args.smoke, args.set)
        for seed in args.seeds
        for arm in args.arms
    ]
    (workdir / "recipe.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":  # the readiness flights start worker processes (spawn)
    main()
