"""Hover-env steps per second on one core, against the raw PyBullet ceiling for the same body.

Re-run (about 30 s; prints markdown tables for README):

    .venv/bin/python benchmarks/env_speed.py            # or: python benchmarks/env_speed.py --quick

Every case runs once per round and the rounds alternate the cases, so a slow spell on a shared machine
hits all of them alike; each figure is the median over the rounds, and each ratio the median of the
per-round ratios. Time is the process's CPU time (``time.process_time``): steps per second of one core,
not counting the time other processes hold the core (on a quiet machine the two are the same).

1. ``gymnasium.make("entropilot/Hover-v0")``, what users get (with Gymnasium's order-enforcing and
   env-checker wrappers), default settings, ``ctbr`` and ``motors``: random actions drawn beforehand
   (sampling is not timed), resets included (random actions end episodes often: about every 65 steps
   in ``ctbr``, 15 in ``motors``); and the hover action.
2. The raw PyBullet ceiling, as the issue words it: the env's world and body (ground plane, gravity,
   box collision shape, the env's physics rate) stepped one control period at a time, ``substeps`` x
   ``stepSimulation`` plus one state read (position, orientation, velocities), no forces and nothing
   else. The body is put back at 1 m every 20 steps so it flies, as the env's drone does (its body
   touches the ground in ~1 % of the random-action steps). Ceiling B is the tighter one the env itself
   integrates with: one ``stepSimulation`` with ``numSubSteps = substeps``, plus the state read. The
   last ceiling row is A with the body resting on the ground, where Bullet's contact solver costs 3-4x
   more (PITFALLS' "~115,000 stepSimulation calls/s" was this case).
3. Where an env step's time goes (``ctbr``, hover action, body in flight), from the differences of:
   the PyBullet calls an env step makes (force, torque, ``stepSimulation``, the state read),
   ``DroneSimulator.step_rows`` (adds the physics model: rate loop, mixer, rotor lag, ground effect, drag,
   rotation matrix), the unwrapped env's ``step`` (adds the action check, reward, crash and success rules,
   observation) and ``gymnasium.make``'s env (adds the wrappers).

The header says whether the simulator's modules ran compiled (``setup.py``); ``ENTROPILOT_PURE_PYTHON=1``
runs them as plain Python for comparison.
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
from entropilot.envs.simulator import DroneSimulator  # noqa: E402

PUT_BACK_EVERY = 20  # steps between putting a ceiling's body back at 1 m


class EnvCase:
    """The hover env stepped with prepared actions; counts the resets that episode ends cause."""

    def __init__(self, action_mode: str, hover: bool, steps: int, wrapped: bool = True):
        self.env = gym.make(HOVER_ID, action_mode=action_mode)
        self.env.reset(seed=0)
        if hover:
            self.actions = np.tile(self.env.unwrapped.sim.hover_action(), (steps, 1))
        else:
            self.actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 4)).astype(np.float32)
        self.target = self.env if wrapped else self.env.unwrapped
        self.resets = self.steps = 0

    def __call__(self, n: int) -> None:
        step, reset, actions = self.target.step, self.target.reset, self.actions
        for i in range(n):
            _, _, terminated, truncated, _ = step(actions[i])
            if terminated or truncated:
                reset()
                self.resets += 1
        self.steps += n

    def close(self) -> None:
        self.env.close()


class SimulatorCase:
    """``DroneSimulator.step_rows`` (what the env calls) with the hover action, from rest at 1 m: it hovers
    (climbing ~1 mm/s), so no put-back adds to its time."""

    def __init__(self, action_mode: str):
        self.sim = DroneSimulator(HoverSettings(action_mode=action_mode))
        self.rng = np.random.default_rng(0)
        self.sim.place(self.rng, [[0.0, 0.0, 1.0]], [(0.0, 0.0, 0.0, 1.0)], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
        self.rows = [self.sim.hover_action().tolist()]

    def __call__(self, n: int) -> None:
        step, rngs, rows = self.sim.step_rows, [self.rng], self.rows
        for _ in range(n):
            step(rows, rngs)

    def close(self) -> None:
        self.sim.close()


class BulletCase:
    """Raw PyBullet on the env's world and body: a ceiling, or the calls an env step makes (``env_calls``)."""

    def __init__(self, sub_stepping: bool, airborne: bool = True, env_calls: bool = False):
        s = HoverSettings()
        self.world = PyBulletWorld(s.airframe, 1, s.physics_hz, s.control_hz)
        c, body = self.world.client, self.world.bodies[0]
        if not sub_stepping:  # one stepSimulation per physics step
            p.setPhysicsEngineParameter(fixedTimeStep=1.0 / s.physics_hz, numSubSteps=1, physicsClientId=c)
        self.calls = 1 if sub_stepping else s.substeps
        self.airborne, self.env_calls = airborne, env_calls
        self.home = [0.0, 0.0, 1.0 if airborne else s.airframe.collision_half_extents[2]]
        self.hover_force = [0.0, 0.0, s.airframe.weight]
        p.resetBasePositionAndOrientation(body, self.home, [0, 0, 0, 1], physicsClientId=c)
        if not airborne:
            for _ in range(200):  # settle onto the plane
                p.stepSimulation(physicsClientId=c)

    def __call__(self, n: int) -> None:
        # Positional arguments throughout, as the env passes them: a keyword costs pybullet ~0.1 us per call.
        c, body, calls, home = self.world.client, self.world.bodies[0], self.calls, self.home
        airborne, env_calls, force, frame = self.airborne, self.env_calls, self.hover_force, p.LINK_FRAME
        step, pose, twist = p.stepSimulation, p.getBasePositionAndOrientation, p.getBaseVelocity
        for i in range(n):
            if airborne and i % PUT_BACK_EVERY == 0:
                p.resetBasePositionAndOrientation(body, home, (0.0, 0.0, 0.0, 1.0), c)
                p.resetBaseVelocity(body, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), c)
            if env_calls:
                p.applyExternalForce(body, -1, force, (0.0, 0.0, 0.0), frame, c)
                p.applyExternalTorque(body, -1, (0.0, 0.0, 0.0), frame, c)
            for _ in range(calls):
                step(c)
            pose(body, c)
            twist(body, c)

    def close(self) -> None:
        self.world.close()


class ResetCase:
    def __init__(self):
        self.env = gym.make(HOVER_ID)
        self.env.reset(seed=0)

    def __call__(self, n: int) -> None:
        reset = self.env.reset
        for _ in range(n):
            reset()

    def close(self) -> None:
        self.env.close()


def measure(cases: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per call of each case, one list entry per round; the rounds alternate the cases."""
    for run in cases.values():
        run(min(steps, 300))  # warm up
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.process_time()
            run(steps)
            seconds[name].append((time.process_time() - start) / steps)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (noisier)")
    args = parser.parse_args()
    steps, rounds = (1000, 5) if args.quick else (3000, 15)
    started = time.perf_counter()
    s = HoverSettings()

    env_rows = {
        f"`Hover-v0` {mode}, {'hover' if hover else 'random'} actions": EnvCase(mode, hover, steps)
        for mode in ("ctbr", "motors")
        for hover in (False, True)
    }
    cases = {
        **env_rows,
        "unwrapped": EnvCase("ctbr", True, steps, wrapped=False),
        "simulator": SimulatorCase("ctbr"),
        "env calls": BulletCase(True, env_calls=True),
        "A": BulletCase(False),
        "B": BulletCase(True),
        "A at rest": BulletCase(False, airborne=False),
        "reset": ResetCase(),
    }
    seconds = measure(cases, steps, rounds)
    for run in cases.values():
        run.close()

    def median(name: str) -> float:
        return statistics.median(seconds[name])

    def ratio(name: str, ceiling: str) -> float:
        """Median over the rounds of (env steps/s) / (ceiling steps/s)."""
        return statistics.median(c / e for e, c in zip(seconds[name], seconds[ceiling]))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    status = compiled.status()
    ran = "compiled" if all(status.values()) else f"compiled: {', '.join(n for n, c in status.items() if c) or 'none'}"
    print(
        f"\nHover env speed, one core ({cpu_name()}, {os.cpu_count()} CPUs, load {load:.1f}), "
        f"Python {platform.python_version()}, pybullet {p.getAPIVersion()}, "
        f"physics {s.physics_hz} Hz / control {s.control_hz} Hz ({s.substeps} substeps); "
        f"median of {rounds} alternating rounds of {steps} steps, CPU time; simulator modules {ran}\n"
    )
    print("| case | steps/s | µs/step | ÷ ceiling A | ÷ ceiling B |")
    print("|---|---:|---:|---:|---:|")
    for name, case in env_rows.items():
        resets = 1000.0 * case.resets / case.steps
        print(
            f"| {name} ({resets:.0f} resets / 1000 steps) | {1 / median(name):,.0f} | {1e6 * median(name):.1f} "
            f"| {ratio(name, 'A'):.0%} | {ratio(name, 'B'):.0%} |"
        )
    ceilings = {
        "A": f"ceiling A: PyBullet only, {s.substeps} × `stepSimulation` + state read, body in flight",
        "B": f"ceiling B: PyBullet only, 1 × `stepSimulation` (numSubSteps={s.substeps}) + state read, in flight",
        "A at rest": "ceiling A with the body resting on the ground (contact solver)",
    }
    for name, label in ceilings.items():
        cells = "| 100% | |" if name == "A" else ("| | 100% |" if name == "B" else "| | |")
        print(f"| {label} | {1 / median(name):,.0f} | {1e6 * median(name):.1f} {cells}")

    # Where the time of an env step goes: differences of medians, so roughly (each is ± the noise).
    parts = {
        "PyBullet calls (force, torque, stepSimulation, state read)": median("env calls"),
        "physics model, rotation matrix and state bookkeeping (`DroneSimulator.step_rows` minus the PyBullet calls)": (
            median("simulator") - median("env calls")
        ),
        "task: action check, reward, crash and success rules, observation (unwrapped `step` minus the simulator)": (
            median("unwrapped") - median("simulator")
        ),
        "Gymnasium wrappers (`gymnasium.make` minus unwrapped)": median("`Hover-v0` ctbr, hover actions")
        - median("unwrapped"),
    }
    total = median("`Hover-v0` ctbr, hover actions")
    print(f"\nWhere a `Hover-v0` ctbr step's {1e6 * total:.1f} µs go (hover action, in flight):\n")
    print("| part | µs | share |")
    print("|---|---:|---:|")
    for name, part in parts.items():
        print(f"| {name} | {1e6 * part:.1f} | {part / total:.0%} |")
    print(f"\n`env.reset()`: {1e6 * median('reset'):.0f} µs. Took {time.perf_counter() - started:.0f} s.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
