"""Episodes flown in lockstep on a vector env, in batches (``run_vector_episodes``), are the episodes ``run_episodes``
flies one by one, with the same episode statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entropilot.envs import HOVER_ID, WAYPOINT_ID, make_env, make_vector_env
from entropilot.envs.evaluate import lockstep_drones, run_episodes, run_vector_episodes
from entropilot.envs.pid import CascadedPID


def _same(a, b) -> None:
    """The same episode: drone 0 of a vector world to the bit, others to ~1e-13 m (their frames' offsets)."""
    for name in ("seed", "success", "length", "crash", "settling_time", "saturated_fraction", "saturated_by_component"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("episode_return", "final_distance", "max_tilt_deg"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-9), name
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("env_id", "options"),
    [
        (HOVER_ID, {"start_tilt_deg": 60.0, "max_tilt_deg": 50.0, "start_velocity": 1.0}),  # some crash, some saturate
        (
            HOVER_ID,
            {
                "action_mode": "motors",
                "true_airframe": {"mass": 1.2},
                "wind": {"gust_std": 0.5},
                "action_delay_steps": 1,
                "randomization": {"kf": 0.1, "action_delay_steps": 2, "wind_speed": 1.0},
            },
        ),
        (WAYPOINT_ID, {"episode_seconds": 4.0}),
    ],
)
def test_a_batch_flies_the_episodes_one_by_one_flight_flies(env_id, options):
    seeds = list(range(20, 27))
    env = make_env(env_id, **options)
    pid = CascadedPID.for_env(env)
    try:
        alone = run_episodes(env, pid, len(seeds), seeds[0], reset_controller=pid.reset)
    finally:
        env.close()
    for drones in (7, 3):  # one batch, and batches of 3, 3, 1 (two drones flying on unrecorded)
        vector = make_vector_env(env_id, drones, **options)
        batch_pid = CascadedPID.for_env(vector)
        try:
            batched = run_vector_episodes(vector, batch_pid, seeds[0], len(seeds), reset_controller=batch_pid.reset)
        finally:
            vector.close()
        assert [r.seed for r in batched] == seeds
        for a, b in zip(alone, batched):
            _same(a, b)
    if "start_tilt_deg" in options:
        assert any(r.crash for r in alone) and any(r.success for r in alone)
        assert any(r.saturated_fraction > 0 for r in alone)


def test_the_episode_statistics_mean_what_they_say():
    env = make_env(HOVER_ID, start_tilt_deg=0.0, start_velocity=0.0)
    pid = CascadedPID.for_env(env)
    try:
        (result,) = run_episodes(env, pid, 1, 5, reset_controller=pid.reset)
    finally:
        env.close()
    distances = np.linalg.norm(result.positions - result.targets, axis=1)
    tilt = result.max_tilt_deg
    assert result.success and 0.0 < tilt < 30.0  # the PID's tilt limit
    # settled: inside the radius from then on, and not one step earlier
    k = round(result.settling_time * 48)
    assert (distances[k:] <= 0.1).all() and distances[k - 1] > 0.1
    assert 0.0 <= result.saturated_fraction < 0.5

    no_thrust = np.array([-1.0, 0.0, 0.0, 0.0])
    vector = make_vector_env(HOVER_ID, 1)
    try:
        falling = run_vector_episodes(vector, lambda obs: np.tile(no_thrust, (len(obs), 1)), 0, 2, record_paths=False)
    finally:
        vector.close()
    for r in falling:
        assert r.crash == "ground_impact" and not r.success and r.saturated_fraction == 1.0
        assert r.saturated_by_component == (1.0, 0.0, 0.0, 0.0)  # only the thrust command sits at its bound
        assert r.settling_time is None and r.positions is None and math.isfinite(r.max_tilt_deg)


def test_lockstep_batches_are_as_even_as_they_can_be():
    assert [lockstep_drones(n, 100) for n in (1, 20, 100, 101, 150, 250)] == [1, 20, 100, 51, 75, 84]
