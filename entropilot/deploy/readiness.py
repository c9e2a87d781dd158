"""Flight readiness: an exported policy and the cascaded PID flown through a matrix of conditions (``readiness_config``)
on the same held-out seeds, a whole condition's episodes at once (one batched onnxruntime call per step), summarized
per condition and judged by the gate (``gate``). Ground side: it runs the simulator. The report is a plain dict (what
``readiness.json`` holds and export writes into the policy file); ``readiness_report`` renders and logs it."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from entropilot.deploy.contract import policy_sha256
from entropilot.deploy.gate import judge
from entropilot.deploy.readiness_config import ReadinessConfig, check_conditions, check_seeds
from entropilot.platform.stats import wilson_interval  # the Wilson score interval: see INTERVAL

REPORT_FORMAT = 1
# Unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0 and n successes, where a
# flight-readiness rate lives (100/100 -> [0.963, 1] at 95 %).
INTERVAL = "Wilson score"
# The most drones of one condition flown in lockstep, in one PyBullet world (a vector env): a whole condition of the
# default matrix at once.
BATCH_SIZE = 100

Echo = Callable[[str], None]


def episode_stats(results: list, confidence: float) -> dict[str, Any]:
    """What a condition's episodes (``EpisodeResult``s) say about a controller: success rate with its interval,
    crashes by reason, final-distance percentiles, settling times of the episodes that settled, max tilt
    percentiles, the fraction of steps whose action saturated (any component, and each), and the seeds that crashed
    (so a crash can be flown again and looked at: the same seed starts the same flight)."""
    n = len(results)
    successes = sum(r.success for r in results)
    crashes = Counter(r.crash for r in results if r.crash)
    distances = np.array([r.final_distance for r in results])
    settled = np.array([r.settling_time for r in results if r.settling_time is not None])
    tilts = np.array([r.max_tilt_deg for r in results])
    steps = sum(r.length for r in results)
    low, high = wilson_interval(successes, n, confidence)
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n,
        "success_interval": [low, high],
        "crashes": sum(crashes.values()),
        "crash_reasons": dict(sorted(crashes.items())),
        "crashed_seeds": [[r.seed, r.crash] for r in sorted(results, key=lambda r: r.seed) if r.crash],
        "final_distance_m": _percentiles(distances, (50, 90, 99)),
        "settled": len(settled),
        "settling_time_s": _percentiles(settled, (50, 90)) if len(settled) else None,
        "max_tilt_deg": _percentiles(tilts, (50, 95)),
        "saturated_fraction": sum(r.saturated_fraction * r.length for r in results) / max(steps, 1),
        "saturated_by_component": [
            sum(r.saturated_by_component[i] * r.length for r in results) / max(steps, 1)
            for i in range(min((len(r.saturated_by_component) for r in results), default=0))
        ],
    }


def _percentiles(values: np.ndarray, qs: tuple[int, ...]) -> dict[str, float]:
    out = {f"p{q}": float(np.percentile(values, q)) for q in qs}
    out["max"] = float(values.max())
    return out


def fly_condition(
    policy_path: str,
    env_id: str,
    env_kwargs: dict[str, Any],
    seed: int,
    episodes: int,
    confidence: float,
    batch_size: int = BATCH_SIZE,
) -> dict[str, dict[str, Any]]:
    """One condition: the policy and the nominal PID, each flown once from every seed (``seed`` .. ``seed + episodes -
    1``) on the drones of one vector env (at most ``batch_size`` at a time), the policy through one batched
    onnxruntime call per step. {"policy": stats, "pid": stats}. A process-pool task: it loads the policy file itself."""
    from entropilot.deploy.onnx_policy import OnnxPolicy
    from entropilot.envs import make_vector_env
    from entropilot.envs.evaluate import lockstep_drones, run_vector_episodes
    from entropilot.envs.pid import CascadedPID

    policy = OnnxPolicy(policy_path)
    env = make_vector_env(env_id, lockstep_drones(episodes, batch_size), **env_kwargs)
    try:
        pid = CascadedPID.for_env(env)  # the nominal airframe: what the action mapping assumes
        flown = run_vector_episodes(env, policy.batch, seed, episodes, record_paths=False)
        baseline = run_vector_episodes(env, pid, seed, episodes, reset_controller=pid.reset, record_paths=False)
        return {"policy": episode_stats(flown, confidence), "pid": episode_stats(baseline, confidence)}
    finally:
        env.close()


def evaluate_policy(
    policy_path: str | os.PathLike,
    config: ReadinessConfig,
    *,
    source: str | None = None,
    workers: int = 1,
    batch_size: int = BATCH_SIZE,
    echo: Echo = print,
) -> dict[str, Any]:
    """Fly the exported policy at ``policy_path`` through every condition of ``config`` (validated first, as are the
    seeds against the policy's training seeds) and return the report with the gate's verdict. ``workers`` > 1 flies
    that many conditions at a time, each in a process of its own (started with ``spawn``: call it from under
    ``if __name__ == "__main__":`` in a script)."""
    import entropilot
    from entropilot.deploy.onnx_policy import OnnxPolicy

    path = Path(policy_path)
    policy = OnnxPolicy(path)  # refuses a broken seal or contract before anything flies
    m = policy.metadata
    policy_kwargs = {
        **m["env_kwargs"],
        "action_mode": m["action_mode"],
        "control_hz": m["control_hz"],
        "physics_hz": m["physics_hz"],
    }
    options = check_conditions(config, m["env_id"], policy_kwargs)
    note = check_seeds(config, m)
    seeds = config.seeds
    workers = max(1, min(workers, len(options)))
    echo(
        f"readiness: {len(options)} condition(s) x {config.episodes} held-out episodes (seeds {seeds[0]}-{seeds[-1]}) "
        f"of {m['env_id']} ({m['action_mode']}), policy and PID, {workers} process(es)"
    )
    start = time.perf_counter()
    args = [
        (str(path), m["env_id"], kwargs, config.seed, config.episodes, config.confidence, batch_size)
        for kwargs in options.values()
    ]
    if workers == 1:
        flown = [fly_condition(*a) for a in args]
    else:
        # spawn: a fresh interpreter per worker (no PyBullet client or onnxruntime session inherited through fork)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            flown = list(pool.map(fly_condition, *zip(*args)))
    conditions = {
        name: {"options": config.conditions[name], **stats} for name, stats in zip(options, flown, strict=True)
    }
    gate = config.gate.model_dump()
    return {
        "format": REPORT_FORMAT,
        "policy": {
            "source": source or str(path),
            "sha256": policy.sha256,
            "policy_sha256": policy_sha256(path.read_bytes()),
            "env_id": m["env_id"],
            "action_mode": m["action_mode"],
            "control_hz": m["control_hz"],
            "training_run_id": m.get("training_run_id"),
            "training_iteration": m.get("training_iteration"),
        },
        "episodes": config.episodes,
        "seeds": [seeds[0], seeds[-1] + 1],
        "confidence": config.confidence,
        "interval": INTERVAL,
        "base": config.base,
        "conditions": conditions,
        "gate": judge(conditions[gate["condition"]]["policy"], gate),
        "notes": [note] if note else [],
        "seconds": round(time.perf_counter() - start, 1),
        "entropilot_version": entropilot.__version__,
    }
