"""Fly a controller (any obs -> action callable) for whole episodes and report what happened.

``run_episodes`` flies a single-drone Gymnasium env; ``run_swarm_episodes`` flies every drone of the
multi-agent swarm with one shared controller. Both run the same loop (``_fly``) over a small adapter
that presents either env as "agents -> observations", a single-drone env being a swarm of one.
``run_vector_episodes`` flies episodes on every env of a vector of single-drone envs at once, the controller acting
on all of them in one call: the results ``run_episodes`` gives episode after episode. Every loop keeps its episodes'
books with one ``_Recorder``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from entropilot.envs.plots import frame_stride


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    length: int
    final_distance: float
    crash: str | None
    positions: np.ndarray | None = field(repr=False)  # (T + 1, 3) world positions (None: not recorded)
    targets: np.ndarray | None = field(repr=False)  # (T + 1, 3) the reference point at each step
    frames: list = field(default_factory=list, repr=False)  # in a swarm: one list shared by all drones' results
    agent: str | None = None  # the swarm agent id ("drone_3"); None for a single-drone env
    # From the true state: the largest angle between body z and world z over the episode.
    max_tilt_deg: float = math.nan
    # When the drone entered the success radius of its reference for good (stayed inside to the end), s from the
    # start; None if it ended outside.
    settling_time: float | None = None
    # Of the steps, those whose executed action (what the rotors were commanded: the policy's, clipped to [-1, 1], or
    # a command task's inner loop's) has a component at +-1.
    saturated_fraction: float = math.nan
    # The same per action component: a policy that flies bang-bang on one channel shows here (thrust, rates, motors).
    saturated_by_component: tuple[float, ...] = ()


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


class _Recorder:
    """One drone's episode, step by step: return, length, trajectory (if kept), the last step's info, how long it has
    stayed inside the success radius, its largest tilt and its saturated actions."""

    def __init__(self, seed: int, agent, sim, index: int, target: np.ndarray, record_paths: bool = True):
        self.seed, self.agent, self.sim, self.index = seed, agent, sim, index
        self.radius, self.dt = sim.settings.success_radius, 1.0 / sim.settings.control_hz
        self.positions = [sim.position[index].copy()] if record_paths else None
        self.targets = [target.copy()] if record_paths else None
        self.total, self.steps, self.info, self.saturated = 0.0, 0, {}, 0
        drone = sim.drones[index]
        self.saturated_components = [0] * len(drone.action)
        self.min_tilt_cos = drone.rotation[8]
        start_distance = math.dist(drone.position, target)
        self.inside_since = 0 if start_distance <= self.radius else None  # the step since which it stays inside

    def step(self, reward: float, info: dict, target: np.ndarray | None = None) -> None:
        """After a step: its reward and info, the reference (kept with the path)."""
        self.total += reward
        self.steps += 1
        self.info = info
        drone = self.sim.drones[self.index]
        self.min_tilt_cos = min(self.min_tilt_cos, drone.rotation[8])
        at_bound = [abs(a) >= 1.0 for a in drone.action]
        self.saturated += any(at_bound)
        self.saturated_components = [n + hit for n, hit in zip(self.saturated_components, at_bound)]
        inside = info["distance"] <= self.radius
        self.inside_since = (self.inside_since if self.inside_since is not None else self.steps) if inside else None
        if self.positions is not None:
            self.positions.append(self.sim.position[self.index].copy())
            self.targets.append(target.copy())

    def result(self, frames: list) -> EpisodeResult:
        info = self.info
        return EpisodeResult(
            self.seed,
            bool(info.get("is_success", False)),
            self.total,
            self.steps,
            float(info["distance"]),
            info.get("crash"),
            None if self.positions is None else np.array(self.positions),
            None if self.targets is None else np.array(self.targets),
            frames,
            self.agent,
            math.degrees(math.acos(max(-1.0, min(1.0, self.min_tilt_cos)))),
            None if self.inside_since is None else self.inside_since * self.dt,
            self.saturated / max(self.steps, 1),
            tuple(n / max(self.steps, 1) for n in self.saturated_components),
        )


def _fly(
    world, controller, episodes: int, seed: int, record_frames: bool, reset_controller: Callable[[], None] | None
) -> list[EpisodeResult]:
    sim, agents = world.sim, world.agents
    index = {agent: i for i, agent in enumerate(agents)}
    stride = frame_stride(world.env.unwrapped.settings.control_hz)
    results = []
    for k in range(episodes):
        obs = world.reset(seed + k)
        if reset_controller is not None:
            reset_controller()
        books = {a: _Recorder(seed + k, a, sim, index[a], world.target(index[a])) for a in agents}
        frames = [world.env.render()] if record_frames else []
        live, done, steps = [a for a in agents if a in obs], False, 0
        while not done:
            actions = {a: controller(obs[a]) for a in live}
            obs, rewards, dones, infos, done = world.step(actions)
            steps += 1
            for a, reward in rewards.items():
                books[a].step(reward, infos[a], world.target(index[a]))
            if record_frames and steps % stride == 0:
                frames.append(world.env.render())
            live = [a for a in live if not dones.get(a, False)]
        results += [books[a].result(frames) for a in agents]
    return results


def run_vector_episodes(
    env,
    controller: Callable[[np.ndarray], np.ndarray],
    seed: int,
    episodes: int | None = None,
    *,
    reset_controller: Callable[[], None] | None = None,
    record_paths: bool = True,
) -> list[EpisodeResult]:
    """``episodes`` episodes (default: one per env) on seeds ``seed, seed + 1, ...``, ``num_envs`` at a time in
    lockstep on a Gymnasium vector env of single-drone envs (the batched ``DroneVectorEnv`` or a ``SyncVectorEnv``;
    the caller's: build it once, fly several controllers). Each step calls ``controller`` once on the (N, obs)
    observations of every env; an env whose episode has ended flies on into its next one, unrecorded (the vector
    env's autoreset), so a stateful controller such as the batched PID keeps one row per env. ``reset_controller``
    runs before each batch. Env k of a batch flies its seed as the single env does: the results are ``run_episodes``'
    on the same seeds (to ~1e-13 m in the batched world, whose drones fly in offset frames; and up to the controller's
    own batch-size effects); trajectories only with ``record_paths``."""
    drones = _vector_episodes(env)
    n = env.num_envs
    seeds = list(range(seed, seed + (n if episodes is None else episodes)))
    results = []
    for start in range(0, len(seeds), n):
        chunk = seeds[start : start + n]
        obs, _ = env.reset(seed=chunk + [None] * (n - len(chunk)))  # spare envs fly on, unrecorded
        if reset_controller is not None:
            reset_controller()
        books = [_Recorder(s, None, d.sim, d.index, np.array(d.target), record_paths) for s, d in zip(chunk, drones)]
        live = list(range(len(chunk)))
        while live:
            obs, rewards, terminated, truncated, infos = env.step(controller(obs))
            ended = (terminated | truncated).tolist()
            for k in live:
                target = np.array(drones[k].target) if record_paths else None
                books[k].step(float(rewards[k]), vector_info(infos, k), target)
            live = [k for k in live if not ended[k]]
        results += [book.result([]) for book in books]
    return results


def vector_info(infos: dict, index: int) -> dict:
    """Env ``index``'s entries of a Gymnasium vector info dict (the keys its ``_key`` mask marks for it)."""
    return {
        key: value[index]
        for key, value in infos.items()
        if not key.startswith("_") and (f"_{key}" not in infos or infos[f"_{key}"][index])
    }


def _vector_episodes(env) -> list:
    """The episode (``tasks.HoverEpisode``: its simulator, drone index and reference point) of each env of a vector of
    single-drone envs: the batched ``DroneVectorEnv`` (one world) or Gymnasium's ``SyncVectorEnv`` of single envs."""
    inner = env.unwrapped
    return inner.episodes if hasattr(inner, "episodes") else [sub.unwrapped.episode for sub in inner.envs]


def lockstep_drones(episodes: int, most: int) -> int:
    """How many drones fly ``episodes`` episodes in the fewest batches of at most ``most``, the batches as even as they
    can be (150 at most 100: 75 drones, twice), so few drones fly unrecorded."""
    return math.ceil(episodes / math.ceil(episodes / most))


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

        save_gif(results[0].frames, video, control_hz)
        echo(f"video: {video}")
    return stats
