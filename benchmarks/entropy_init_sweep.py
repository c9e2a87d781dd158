"""Entropy-aware init's threshold sweep on a config (default: hover): the draws' entropy distribution, then per
threshold the acceptance rate and the initial entropy of the policies the init keeps, next to the no-init
baseline (draw 0 of each weight seed, what a run without the init starts from).

Re-run (hover: 20 weight seeds x 10 draws x 1000 env steps, ~3 minutes on a 2-core laptop):

    .venv/bin/python benchmarks/entropy_init_sweep.py
    .venv/bin/python benchmarks/entropy_init_sweep.py configs/hover.yaml --searches 40 --set model.output_gain=1
    .venv/bin/python benchmarks/entropy_init_sweep.py configs/hover_discrete.yaml --set model.output_gain=8

Every search runs the init as `entropilot train` does (same env seed, same family, same measure): weight seed s
draws torch seeds 1000 s + k. Each draw is measured once and every threshold's search is read off those draws
with the init's own rule (`entropy_init.search_outcome`: the first draw that clears it, else the best), which is
what a run with that threshold would keep (the draws' rollouts share env resets and action noise).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import ray

from entropilot.envs import action_space
from entropilot.platform.config import load_config
from entropilot.platform.train import build_from_config
from entropilot.policies.entropy_init import measure_draw, search_outcome
from entropilot.policies.entropy_range import categorical_sizes, measure_range, std_per_dim
from entropilot.policies.initial_weights import InitFamily, draw_seed

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hover.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(CONFIG))
    parser.add_argument("--searches", type=int, default=20, help="weight seeds 0..N-1, one init search each")
    parser.add_argument(
        "--thresholds", type=str, default=None, help="comma-separated nats (default: spread over the draws)"
    )
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override (repeatable)")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    init, measure = cfg.entropy.init, cfg.entropy.measure
    space = action_space(cfg.env.id, cfg.env.kwargs)
    dims = space.shape[0]
    categorical = categorical_sizes(space) is not None
    family = InitFamily(cfg.model.output_gain, cfg.initial_std)
    low, high = measure_range(measure, space)
    print(
        f"{cfg.name}: {args.searches} weight seeds x {init.max_draws} draws x {init.rollout_steps} env steps; "
        f"family output_gain {family.output_gain}, initial_std {family.initial_std}, free_log_std "
        f"{cfg.model.free_log_std}; {cfg.entropy_name} entropy, reachable range [{low:.2f}, {high:.2f}] nats"
    )
    algo = build_from_config(cfg)
    try:
        searches = [
            [
                measure_draw(algo, draw_seed(seed, k), family, measure, init.rollout_steps, cfg.seed)
                for k in range(init.max_draws)
            ]
            for seed in range(args.searches)
        ]
    finally:
        algo.stop()
        ray.shutdown()
    pooled = sorted(d.entropy for draws in searches for d in draws)
    quantiles = statistics.quantiles(pooled, n=10)
    print(
        f"draws: min {pooled[0]:.2f}, 10% {quantiles[0]:.2f}, median {statistics.median(pooled):.2f}, "
        f"90% {quantiles[-1]:.2f}, max {pooled[-1]:.2f} nats"
    )
    if args.thresholds:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    else:
        # Within the reachable range: thresholds a run could be given (a categorical policy's top is sum of ln K).
        thresholds = [max(pooled[0] - 0.5, low), *quantiles[::2], min(pooled[-1] + 0.5, high)]
    baseline = [draws[0].entropy for draws in searches]
    print()
    # What a threshold means per action dim: a Gaussian's std (action half-widths), or a categorical sub-action's
    # perplexity exp(H / dims), the number of equally likely choices with that entropy.
    meaning = "choices per sub-action" if categorical else "std_eff per dim"
    print(
        f"| threshold (nats) | {meaning} | draws clearing it | searches cleared | draws made (mean) | "
        "kept policy's entropy: mean [min, max] |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| no init (draw 0) | - | - | - | 1 | {statistics.mean(baseline):.2f} "
        f"[{min(baseline):.2f}, {max(baseline):.2f}] |"
    )
    for threshold in thresholds:
        outcomes = [search_outcome(draws, threshold) for draws in searches]
        kept = [o.chosen.entropy for o in outcomes]
        print(
            f"| {threshold:.2f} | {math.exp(threshold / dims) if categorical else std_per_dim(threshold, dims):.3f} "
            f"| {sum(e >= threshold for e in pooled) / len(pooled):.0%} "
            f"| {sum(o.cleared for o in outcomes)}/{len(outcomes)} "
            f"| {statistics.mean(len(o.draws) for o in outcomes):.1f} "
            f"| {statistics.mean(kept):.2f} [{min(kept):.2f}, {max(kept):.2f}] |"
        )


if __name__ == "__main__":
    main()
