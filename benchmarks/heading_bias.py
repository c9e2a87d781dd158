"""Does a policy prefer a heading? Its first commands from held-out starts, by the heading it starts at: the mean
collective-thrust command, the share of starts where thrust is cut (below -0.8 of its range) and the share where the
yaw-rate command is within 10 % of its bound. A policy that sees every heading alike shows the same row everywhere;
the world-frame hover policies slewed to one heading at full yaw rate and cut thrust from the far side
(docs/flight-readiness.md, "The heading frame").

    .venv/bin/python benchmarks/heading_bias.py out/hover_policy.onnx            # 2000 starts from seed 3000000
    .venv/bin/python benchmarks/heading_bias.py POLICY.onnx --starts 500 --seed 2000000

A `ctbr` policy of a single-drone task (Hover, Waypoint); flown from the nominal vehicle in still air.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.envs import make_env

BINS = 8  # 45 degrees each


def first_commands(path: str, starts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(start headings in degrees, first actions) of the policy at ``path`` over ``starts`` seeded resets."""
    policy = OnnxPolicy(path)
    m = policy.metadata
    if m["action_mode"] != "ctbr":
        raise SystemExit(f"{path}: a {m['action_mode']} policy; this reads ctbr's thrust and yaw-rate commands")
    kwargs = {**m["env_kwargs"], "action_mode": "ctbr", "control_hz": m["control_hz"], "physics_hz": m["physics_hz"]}
    env = make_env(m["env_id"], **kwargs)
    headings, actions = [], []
    for s in range(seed, seed + starts):
        obs, _ = env.reset(seed=s)
        rotation = env.unwrapped.sim.rotation[0]  # the true attitude, whatever frame the policy observes in
        headings.append(math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])))
        actions.append(policy(obs))
    env.close()
    return np.array(headings), np.array(actions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="an exported ctbr policy (.onnx)")
    parser.add_argument("--starts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=3000000, help="the first held-out start's seed")
    args = parser.parse_args(argv)
    headings, actions = first_commands(args.policy, args.starts, args.seed)
    thrust, yaw = actions[:, 0], actions[:, 3]
    print("| start heading (deg) | starts | first thrust, mean | thrust below -0.8 | yaw-rate command at its bound |")
    print("|---|---:|---:|---:|---:|")
    edges = np.linspace(-180.0, 180.0, BINS + 1)
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (headings >= low) & (headings < high)
        print(
            f"| {low:.0f} .. {high:.0f} | {inside.sum()} | {thrust[inside].mean():+.2f} | "
            f"{np.mean(thrust[inside] < -0.8):.0%} | {np.mean(np.abs(yaw[inside]) > 0.9):.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
