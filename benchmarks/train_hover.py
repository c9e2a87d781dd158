"""Training speed on hover: env steps/s while training, seconds per PPO iteration, and wall time until the
evaluation success rate first reaches 0.95, for `configs/hover.yaml` beside a baseline in the same run.

Re-run (each arm stops at 0.95 success or the budget; about 20-30 minutes on a 2-core laptop):

    .venv/bin/python benchmarks/train_hover.py                 # entropilot hover vs plain PPO
    .venv/bin/python benchmarks/train_hover.py --budget 600 --seeds 0 1
    .venv/bin/python benchmarks/train_hover.py --config configs/hover_discrete.yaml --budget 3600   # categorical
    .venv/bin/python benchmarks/train_hover.py --config configs/hover_sac.yaml --arm entropilot --budget 3600

The baseline is the same experiment as plain RLlib PPO: entropy-aware initialization off and the
entropy-coefficient controller off (coefficient 0, RLlib's default), everything else equal, so the
ratio isolates what entropilot's entropy handling buys. Time to 0.95 is wall-clock time from the
start of `train()` (as `entropilot train` calls it) on this machine: Ray start-up, algorithm build,
entropy-aware initialization and the periodic evaluations all count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray

from entropilot.platform.config import load_config
from entropilot.platform.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover.yaml"
# The config as it is, and the same experiment as plain RLlib (SAC: the config as it is, one arm).
ARMS = {
    "entropilot": [],
    "plain PPO": ["entropy.init.enabled=false", "entropy.control.enabled=false"],
}


def run(config: Path, label: str, seed: int, budget: float, overrides: list[str], workdir: Path) -> dict:
    cfg = load_config(
        config,
        [
            f"seed={seed}",
            f"stop.time_s={budget}",
            "stop.success_rate=0.95",
            "mlflow.video=false",
            "mlflow.system_metrics=false",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"checkpoint.dir={workdir}/{label}-{seed}",
            "evaluation.interval=5",
            *overrides,
        ],
    )
    result = train(cfg, echo=lambda line: None)
    ray.shutdown()  # each arm starts from a fresh Ray, as a user's `entropilot train` does
    history = result.history
    reached = next((h["time_s"] for h in history if h.get("success_rate", 0.0) >= 0.95), None)
    iteration_s = [h["time_this_iter_s"] for h in history[1:] if "time_this_iter_s" in h]
    steps_per_s = [h["env_steps_per_s"] for h in history[1:] if "env_steps_per_s" in h]
    row = {
        "label": label,
        "seed": seed,
        "time_to_095_s": reached,
        "env_steps": result.env_steps,
        "success": result.success_rate,
        "s_per_iteration": statistics.median(iteration_s),
        "env_steps_per_s": statistics.median(steps_per_s),
    }
    print(
        f"  {label:10s} seed {seed}: time to 0.95 {_fmt(reached)} s, {row['s_per_iteration']:.2f} s/iteration, "
        f"{row['env_steps_per_s']:.0f} env steps/s, final success {result.success_rate}",
        flush=True,
    )
    return row


def _fmt(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=900.0, help="seconds per training run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="any hover-style experiment (hover_discrete.yaml)")
    parser.add_argument("--arm", choices=ARMS, action="append", help="run only these arms (default: both)")
    args = parser.parse_args()
    arms = {label: ARMS[label] for label in args.arm or ARMS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for label, overrides in arms.items():
                rows.append(run(args.config, label, seed, args.budget, overrides, Path(tmp)))
    print("\n| arm | seeds reaching 0.95 | median time to 0.95 (s) | s / iteration | env steps/s while training |")
    print("|---|---|---|---|---|")
    summary = {}
    for label in arms:
        mine = [r for r in rows if r["label"] == label]
        reached = [r["time_to_095_s"] for r in mine if r["time_to_095_s"] is not None]
        summary[label] = statistics.median(reached) if reached else None
        print(
            f"| {label} | {len(reached)}/{len(mine)} | {_fmt(summary[label])} | "
            f"{statistics.median(r['s_per_iteration'] for r in mine):.2f} | "
            f"{statistics.median(r['env_steps_per_s'] for r in mine):.0f} |"
        )
    ours, base = summary.get("entropilot"), summary.get("plain PPO")
    if ours and base:
        print(f"\ntime-to-0.95 ratio (plain PPO / entropilot): {base / ours:.2f}x")
    else:
        print(f"\ntime-to-0.95 ratio: n/a (budget {args.budget:.0f} s; an arm that does not reach 0.95 has no time)")


if __name__ == "__main__":
    main()
