"""Drone-steps per second of the batched world (``DroneVectorEnv``: N drones, one ``stepSimulation``) on one core,
against the bare N-body PyBullet ceiling, the single env and Gymnasium's ``SyncVectorEnv`` of N single envs.

Re-run (about a minute; prints markdown tables for README; the issue's target: >= 0.6 of the ceiling at N = 64):

    .venv/bin/python benchmarks/vector_env_speed.py          # or --quick; --sizes 1 16 64 256 (default)

The sizes are measured one after another, each with its own cases (built, measured, closed: a 256-env
``SyncVectorEnv`` in memory would slow the others). Within a size every case runs once per round and the rounds
alternate the cases, so a slow spell on a shared machine hits all of them alike; each figure is the median over the
rounds, and each ratio the median of the per-round ratios. Time is the process's CPU time
(``time.process_time``): drone-steps per second of one core. A round gives every case the same number of
drone-steps (N drones x steps).

1. Ceiling: the vector env's own world and bodies (ground plane, gravity, box collision shapes, drones filtered
   from one another, each in its own frame of the grid) and nothing else: per control step, per body one
   ``applyExternalForce`` and one ``applyExternalTorque`` (zero: the bodies fall freely and so move, as flying
   drones do, which costs Bullet's broadphase an update each step) and one state read (position, orientation,
   velocities), and one ``stepSimulation`` with ``numSubSteps``. Every body is put back at 1 m every 20 steps so
   it never touches the ground: no contacts.
2. ``DroneVectorEnv`` (``entropilot/Hover-v0``, default settings, ``ctbr``), what ``gymnasium.make_vec(...,
   vectorization_mode="vector_entry_point")`` builds: random actions drawn beforehand, autoresets included
   (random actions end an episode about every 70 steps, and ~2 % of the drone-steps touch the ground, where Bullet's
   contact solver works); and, to show the env's own cost apart from those, every drone holding the hover action
   (no ground contact, a reset every 288 steps).
3. ``SyncVectorEnv`` of N ``gymnasium.make`` single envs (``vectorization_mode="sync"``, what RLlib's env runner
   builds by default), same actions; and the single env itself (``gymnasium.make``, N = 1, with its resets).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from _machine import cpu_name, pin_to_one_core

pin_to_one_core()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pybullet as p  # noqa: E402

import entropilot.envs  # noqa: E402,F401  (registers the ids)
from entropilot.envs import HOVER_ID, HoverSettings, compiled  # noqa: E402
from entropilot.envs.pybullet_world import PyBulletWorld  # noqa: E402
from entropilot.envs.simulator import frame_spacing  # noqa: E402

PUT_BACK_EVERY = 20  # steps between putting the ceiling's bodies back at 1 m


class CeilingCase:
    """The bare N-body world: force, torque and state read per body, one sub-stepped ``stepSimulation``."""

    def __init__(self, num_drones: int, steps: int):
        s = HoverSettings()
        spacing = frame_spacing(s.arena_half_size)
        self.world = PyBulletWorld(
            s.airframe, num_drones, s.physics_hz, s.control_hz, drones_collide=False, spacing=spacing
        )
        self.homes = [[x, y, 1.0] for x, y in self.world.offsets]
        self.steps = 0

    def __call__(self, n: int) -> None:
        # Positional arguments throughout, as the env passes them: a keyword costs pybullet ~0.1 us per call.
        c, bodies, homes, frame = self.world.client, self.world.bodies, self.homes, p.LINK_FRAME
        force, torque, origin, still = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)
        apply_force, apply_torque, step = p.applyExternalForce, p.applyExternalTorque, p.stepSimulation
        pose, twist, place, push = (
            p.getBasePositionAndOrientation,
            p.getBaseVelocity,
            p.resetBasePositionAndOrientation,
            p.resetBaseVelocity,
        )
        for i in range(n):
            if (self.steps + i) % PUT_BACK_EVERY == 0:
                for body, home in zip(bodies, homes):
                    place(body, home, still, c)
                    push(body, origin, origin, c)
            for body in bodies:
                apply_force(body, -1, force, origin, frame, c)
                apply_torque(body, -1, torque, frame, c)
            step(c)
            for body in bodies:
                pose(body, c)
                twist(body, c)
        self.steps += n

    def close(self) -> None:
        self.world.close()


class VectorCase:
    """A vector env (ours or ``SyncVectorEnv``) stepped with prepared random actions; counts episode ends."""

    def __init__(self, mode: str, num_drones: int, steps: int, hover: bool = False):
        self.env = gym.make_vec(HOVER_ID, num_envs=num_drones, vectorization_mode=mode)
        self.env.reset(seed=0)
        if hover:
            self.actions = np.tile(self.env.unwrapped.sim.hover_action(), (1, num_drones, 1))
        else:
            rng = np.random.default_rng(0)
            self.actions = rng.uniform(-1.0, 1.0, (steps, num_drones, 4)).astype(np.float32)
        self.ends = self.drone_steps = 0

    def __call__(self, n: int) -> None:
        step, actions, ends = self.env.step, self.actions, 0
        for i in range(n):
            _, _, terminated, truncated, _ = step(actions[i % len(actions)])
            ends += int(terminated.sum() + truncated.sum())
        self.ends += ends
        self.drone_steps += n * self.env.num_envs

    def close(self) -> None:
        self.env.close()


class SingleCase:
    """``gymnasium.make(Hover-v0)`` with prepared random actions, resetting at each episode end."""

    def __init__(self, steps: int):
        self.env = gym.make(HOVER_ID)
        self.env.reset(seed=0)
        self.actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 4)).astype(np.float32)

    def __call__(self, n: int) -> None:
        step, reset, actions = self.env.step, self.env.reset, self.actions
        for i in range(n):
            _, _, terminated, truncated, _ = step(actions[i % len(actions)])
            if terminated or truncated:
                reset()

    def close(self) -> None:
        self.env.close()


def measure(cases: dict, drone_steps: int, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per drone-step of each case (name -> (run, N)), one list entry per round; rounds alternate the
    cases."""
    for run, num_drones in cases.values():
        run(max(1, 300 // num_drones))  # warm up
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (run, num_drones) in cases.items():
            steps = max(1, drone_steps // num_drones)
            start = time.process_time()
            run(steps)
            seconds[name].append((time.process_time() - start) / (steps * num_drones))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 256], help="drones per world")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (noisier)")
    args = parser.parse_args()
    if min(args.sizes) < 1:
        parser.error("--sizes must be >= 1")
    drone_steps, rounds = (4000, 5) if args.quick else (16000, 15)
    started = time.perf_counter()
    seconds: dict[str, list[float]] = {}
    ends: dict[int, float] = {}
    for n in args.sizes:
        steps = max(1, drone_steps // n)
        cases = {
            "ceiling": (CeilingCase(n, steps), n),
            "vector": (VectorCase("vector_entry_point", n, steps), n),
            "hover": (VectorCase("vector_entry_point", n, steps, hover=True), n),
            "sync": (VectorCase("sync", n, steps), n),
            "single": (SingleCase(drone_steps), 1),
        }
        for name, values in measure(cases, drone_steps, rounds).items():
            seconds[f"{name} {n}"] = values
        ends[n] = 1000.0 * cases["vector"][0].ends / max(1, cases["vector"][0].drone_steps)
        for run, _ in cases.values():
            run.close()

    def rate(name: str) -> float:
        return 1.0 / statistics.median(seconds[name])

    def ratio(name: str, base: str) -> float:
        """Median over the rounds of (drone-steps/s of name) / (drone-steps/s of base)."""
        return statistics.median(b / a for a, b in zip(seconds[name], seconds[base]))

    s = HoverSettings()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    status = compiled.status()
    ran = "compiled" if all(status.values()) else f"compiled: {', '.join(n for n, c in status.items() if c) or 'none'}"
    print(
        f"\nBatched hover worlds, one core ({cpu_name()}, {os.cpu_count()} CPUs, load {load:.1f}), "
        f"Python {platform.python_version()}, pybullet {p.getAPIVersion()}, physics {s.physics_hz} Hz / control "
        f"{s.control_hz} Hz ({s.substeps} substeps); median of {rounds} alternating rounds of {drone_steps} "
        f"drone-steps, CPU time; simulator modules {ran}\n"
    )
    print(
        "| N | ceiling (bare N-body PyBullet) | `DroneVectorEnv` | ÷ ceiling | `SyncVectorEnv` of N single envs "
        "| `DroneVectorEnv` ÷ `SyncVectorEnv` | episode ends / 1000 drone-steps | hover actions ÷ ceiling |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        ceiling, ours, sync = f"ceiling {n}", f"vector {n}", f"sync {n}"
        print(
            f"| {n} | {rate(ceiling):,.0f} | {rate(ours):,.0f} | {ratio(ours, ceiling):.0%} "
            f"| {rate(sync):,.0f} | {ratio(ours, sync):.2f}x | {ends[n]:.0f} | {ratio(f'hover {n}', ceiling):.0%} |"
        )
    singles = ", ".join(f"{rate(f'single {n}'):,.0f}" for n in args.sizes)
    print(f"\nThe single env (`gymnasium.make`, resets included), beside each size: {singles} steps/s; ", end="")
    print(
        ", ".join(f"`DroneVectorEnv` N={n}: {ratio(f'vector {n}', f'single {n}'):.2f}x" for n in args.sizes)
        + f" of it. Drone-steps/s; took {time.perf_counter() - started:.0f} s."
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
