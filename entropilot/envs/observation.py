"""The observation layout every drone task emits (named, ordered: deploy writes it into the ONNX file) and its builder."""

from __future__ import annotations

import numpy as np

from entropilot.envs.settings import SensorNoise

# (group, element names, meaning); order is the order in the observation vector.
OBSERVATION_GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("pos_err", ("pos_err_x", "pos_err_y", "pos_err_z"), "position minus target, world frame (z up), m"),
    (
        "rotation",
        ("r11", "r12", "r13", "r21", "r22", "r23", "r31", "r32", "r33"),
        "body-to-world rotation matrix, row-major",
    ),
    ("velocity", ("vel_x", "vel_y", "vel_z"), "linear velocity, world frame, m/s"),
    ("body_rates", ("rate_x", "rate_y", "rate_z"), "angular velocity, body frame (x forward, y left, z up), rad/s"),
    ("prev_action", ("prev_action_0", "prev_action_1", "prev_action_2", "prev_action_3"), "previous action in [-1, 1]"),
)
OBSERVATION_NAMES: tuple[str, ...] = tuple(name for _, names, _ in OBSERVATION_GROUPS for name in names)
OBSERVATION_SIZE = len(OBSERVATION_NAMES)


def _skew(v: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3, 3) cross-product matrices."""
    zero = np.zeros(len(v))
    return np.stack(
        [
            np.stack([zero, -v[:, 2], v[:, 1]], axis=1),
            np.stack([v[:, 2], zero, -v[:, 0]], axis=1),
            np.stack([-v[:, 1], v[:, 0], zero], axis=1),
        ],
        axis=1,
    )


def observe(sim, targets: np.ndarray, noise: SensorNoise, rng: np.random.Generator) -> np.ndarray:
    """(N, OBSERVATION_SIZE) float32 observations of every drone in ``sim`` (a DroneSimulator)."""
    n = sim.num_drones
    position, rotation, velocity, rates = sim.position, sim.rotation, sim.velocity, sim.body_rates
    if noise.enabled:
        position = position + rng.normal(0.0, noise.position, (n, 3))
        velocity = velocity + rng.normal(0.0, noise.velocity, (n, 3))
        rates = rates + rng.normal(0.0, noise.angular_velocity, (n, 3))
        # A small random rotation keeps the matrix (nearly) orthonormal, unlike noise on each element.
        rotation = rotation @ (np.eye(3) + _skew(rng.normal(0.0, noise.attitude, (n, 3))))
    return np.concatenate(
        [position - targets, rotation.reshape(n, 9), velocity, rates, sim.last_action], axis=1
    ).astype(np.float32)
