"""Fly a controller (any obs -> action callable) for whole episodes and report what happened.

``run_episodes`` flies a single-drone Gymnasium env; ``run_swarm_episodes`` flies every drone of the
multi-agent swarm with one shared controller. Both run the same loop (``_fly``) over a small adapter
that presents either env as "agents -> observations", a single-drone env being a swarm of one.
``run_vector_episodes`` flies one episode on every env of a vector of single-drone envs at once, the
controller acting on all of them in one call: the results ``run_episodes`` gives episode after episode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    length: int
    final_distance: float
    crash: str | None
    positions: np.ndarray = field(repr=False)  # (T + 1, 3) world positions
    targets: np.ndarray = field(repr=False)  # (T + 1, 3) the reference point at each step
    frames: list = field(default_factory=list, repr=False)  # in a swarm: one list shared by all drones' results
    agent: str | None = None  # the swarm agent id ("drone_3"); None for a single-drone env


def run_episodes(
    env,
    controller: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    seed: int,
    record_frames: bool = False,
    reset_controller: Callable[[], None] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with seeds ``seed, seed + 1, ...`` on a single-drone env."""
    return _fly(_SingleDrone(env), controller, episodes, seed, record_frames, reset_controller)


def run_swarm_episodes(
    env,
    controller: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    seed: int,
    record_frames: bool = False,
    reset_controller: Callable[[], None] | None = None,
) -> list[EpisodeResult]:
    """Run ``episodes`` episodes with seeds ``seed, seed + 1, ...`` on a ``SwarmEnv``, every drone flown by
    ``controller`` (one shared, stateless policy: it is called once per live drone per step).

    Returns one ``EpisodeResult`` per drone and episode (episode-major, drones in ``possible_agents``
    order), so ``summarize`` and a mean over ``success`` give per-drone rates: the success rate is the
    fraction of drones that succeeded. A drone's return, length and trajectory end where it crashed.
    """
    return _fly(_Swarm(env), controller, episodes, seed, record_frames, reset_controller)


def run_vector_episodes(env, controller: Callable[[np.ndarray], np.ndarray], seed: int) -> list[EpisodeResult]:
    """One episode on each of the ``num_envs`` single-drone envs of a Gymnasium vector env, all at once, env k
    seeded with ``seed + k``; ``controller`` (stateless) maps observations (N, obs) to actions (N, act).

    Equal to ``run_episodes`` of ``num_envs`` episodes from ``seed`` (each env's first episode counts; the
    vector env's autoreset afterwards is stepped along and ignored).
    """
    drones = _VectorDrones(env)
    n = env.num_envs
    obs, _ = env.reset(seed=[seed + k for k in range(n)])
    positions, targets = [[p] for p in drones.positions()], [[t] for t in drones.targets()]
    totals, steps, final_infos = [0.0] * n, [0] * n, [{}] * n
    live = np.ones(n, dtype=bool)
    while live.any():
        obs, rewards, terminated, truncated, infos = env.step(controller(obs))
        now_positions, now_targets = drones.positions(), drones.targets()
        ended = live & (terminated | truncated)
        for k in np.flatnonzero(live):
            totals[k] += rewards[k]
            steps[k] += 1
            positions[k].append(now_positions[k])
            targets[k].append(now_targets[k])
        for k in np.flatnonzero(ended):
            final_infos[k] = vector_info(infos, k)
        live &= ~ended
    return [
        EpisodeResult(
            seed + k,
            bool(info.get("is_success", False)),
            float(totals[k]),
            steps[k],
            info["distance"],
            info.get("crash"),
            np.array(positions[k]),
            np.array(targets[k]),
        )
        for k, info in enumerate(final_infos)
    ]


def vector_info(infos: dict, index: int) -> dict:
    """Env ``index``'s entries of a Gymnasium vector info dict (the keys its ``_key`` mask marks for it)."""
    return {
        key: value[index]
        for key, value in infos.items()
        if not key.startswith("_") and (f"_{key}" not in infos or infos[f"_{key}"][index])
    }


class _VectorDrones:
    """Where the drones of a vector of single-drone envs are, and their targets: the batched ``DroneVectorEnv``
    (one world, one episode per drone) or Gymnasium's ``SyncVectorEnv`` of single envs (one episode each)."""

    def __init__(self, env):
        inner = env.unwrapped
        self.episodes = inner.episodes if hasattr(inner, "episodes") else [sub.unwrapped.episode for sub in inner.envs]

    def positions(self) -> list[np.ndarray]:
        return [episode.sim.position[episode.index].copy() for episode in self.episodes]

    def targets(self) -> list[np.ndarray]:
        return [np.array(episode.target) for episode in self.episodes]


class _SingleDrone:
    """A Gymnasium single-drone env as a swarm of one agent (id None)."""

    def __init__(self, env):
        self.env = env
        self.sim = env.unwrapped.sim
        self.agents: tuple = (None,)

    def reset(self, seed: int) -> dict:
        obs, _ = self.env.reset(seed=seed)
        return {None: obs}

    def step(self, actions: dict):
        obs, reward, terminated, truncated, info = self.env.step(actions[None])
        done = terminated or truncated
        return {None: obs}, {None: reward}, {None: done}, {None: info}, done

    def target(self, index: int) -> np.ndarray:
        return self.env.unwrapped.target[0]


class _Swarm:
    """An RLlib ``MultiAgentEnv`` swarm: agents are ``possible_agents``, drone i is ``sim`` body i."""

    def __init__(self, env):
        self.env = env
        self.sim = env.sim
        self.agents = tuple(env.possible_agents)

    def reset(self, seed: int) -> dict:
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, actions: dict):
        obs, rewards, terminateds, truncateds, infos = self.env.step(actions)
        dones = {a: terminateds.get(a, False) or truncateds.get(a, False) for a in rewards}
        return obs, rewards, dones, infos, terminateds["__all__"] or truncateds["__all__"]

    def target(self, index: int) -> np.ndarray:
        return self.env.targets[index]


def _fly(
    world, controller, episodes: int, seed: int, record_frames: bool, reset_controller: Callable[[], None] | None
) -> list[EpisodeResult]:
    sim, agents = world.sim, world.agents
    index = {agent: i for i, agent in enumerate(agents)}
    results = []
    for k in range(episodes):
        obs = world.reset(seed + k)
        if reset_controller is not None:
            reset_controller()
        positions = {a: [sim.position[index[a]].copy()] for a in agents}
        targets = {a: [world.target(index[a]).copy()] for a in agents}
        frames = [world.env.render()] if record_frames else []
        totals, steps, last_info = dict.fromkeys(agents, 0.0), dict.fromkeys(agents, 0), {}
        live, done = [a for a in agents if a in obs], False
        while not done:
            obs, rewards, dones, infos, done = world.step({a: controller(obs[a]) for a in live})
            for a, reward in rewards.items():
                totals[a] += reward
                steps[a] += 1
                positions[a].append(sim.position[index[a]].copy())
                targets[a].append(world.target(index[a]).copy())
                last_info[a] = infos[a]
            if record_frames:
                frames.append(world.env.render())
            live = [a for a in live if not dones.get(a, False)]
        for a in agents:
            info = last_info[a]
            results.append(
                EpisodeResult(
                    seed + k,
                    bool(info.get("is_success", False)),
                    totals[a],
                    steps[a],
                    info["distance"],
                    info.get("crash"),
                    np.array(positions[a]),
                    np.array(targets[a]),
                    frames,
                    a,
                )
            )
    return results


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    return {
        "success_rate": float(np.mean([r.success for r in results])),
        "mean_return": float(np.mean([r.episode_return for r in results])),
        "mean_length": float(np.mean([r.length for r in results])),
        "mean_final_distance": float(np.mean([r.final_distance for r in results])),
        "crash_rate": float(np.mean([r.crash is not None for r in results])),
    }


def report_flights(
    results: list[EpisodeResult],
    start: float,
    control_hz: int,
    plot: str | None,
    video: str | None,
    title: str,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Echo one line per flown episode and the summary (flown since ``time.perf_counter()`` was ``start``); save the
    trajectory plot and the first episode's GIF if asked. Returns `summarize`'s statistics."""
    for r in results:
        outcome = "success" if r.success else (f"crash ({r.crash})" if r.crash else "no success")
        echo(
            f"  seed {r.seed}: {outcome:18s} {r.length} steps, return {r.episode_return:7.2f}, "
            f"start {np.linalg.norm(r.positions[0] - r.targets[0]):.2f} m -> final {r.final_distance:.3f} m from target"
        )
    stats = summarize(results)
    echo(
        f"success rate {stats['success_rate']:.2f}, mean final distance {stats['mean_final_distance']:.3f} m, "
        f"{sum(r.length for r in results) / (time.perf_counter() - start):.0f} steps/s"
    )
    if plot:
        from entropilot.envs.plots import plot_trajectories

        plot_trajectories(results, plot, title=title)
        echo(f"trajectory plot: {plot}")
    if video:
        from entropilot.envs.plots import save_gif

        save_gif(results[0].frames, video, fps=control_hz)
        echo(f"video: {video}")
    return stats
