"""Rotations and frame conventions off the hot path: quaternions (w, x, y, z), ZYX Euler angles, and our frames
against PX4's NED/FRD. The simulator's per-step rotation, from pybullet's (x, y, z, w) quaternions, is
`envs.physics.rotation_matrix`.

Ours: world z up, body x forward / y left / z up. PX4: world NED, body FRD. The conversion is the rotation by 180
degrees about x, ``FLIP = diag(1, -1, -1)``, for both world and body: our world axes read as x = north, y = west,
z = up (a yaw of 0 faces north in both; yaw angles change sign), our body axes as x forward, y left, z up.

    position / velocity      p_ned = FLIP p,          p = FLIP p_ned
    body rates               w_frd = FLIP w,          w = FLIP w_frd
    rotation (body->world)   R_ned = FLIP R FLIP,     R = FLIP R_ned FLIP
    quaternion (w, x, y, z)  q_ned = (w, x, -y, -z)   (conjugation by the 180-degree turn about x)
"""

from __future__ import annotations

import math

import numpy as np

FLIP = np.diag([1.0, -1.0, -1.0])  # ours <-> NED (world) and FLU <-> FRD (body); its own inverse


def ned_from_world(v) -> np.ndarray:
    """A world vector (position, velocity) of ours in NED; also a body vector FLU -> FRD. (FLIP is an involution.)"""
    return FLIP @ np.asarray(v, dtype=np.float64)


world_from_ned = ned_from_world  # the same flip back


def rotation_ned_from_world(rotation) -> np.ndarray:
    """Our body(FLU)-to-world rotation as PX4's body(FRD)-to-NED rotation."""
    return FLIP @ np.asarray(rotation, dtype=np.float64) @ FLIP


rotation_world_from_ned = rotation_ned_from_world


def rotation_from_quaternion(q) -> np.ndarray:
    """(w, x, y, z) (normalized here) -> 3x3 rotation matrix."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_from_rotation(rotation) -> np.ndarray:
    """3x3 rotation matrix -> (w, x, y, z) with w >= 0 (Shepperd's method: divides by the largest of the four)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    quaternion = np.array(q)
    quaternion /= np.linalg.norm(quaternion)
    return -quaternion if quaternion[0] < 0 else quaternion


def rotation_from_euler(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """ZYX Euler angles (rad) -> R = Rz(yaw) Ry(pitch) Rx(roll), body to world."""
    cr, sr, cp, sp = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def euler_from_rotation(rotation) -> tuple[float, float, float]:
    """The inverse of `rotation_from_euler`: (roll, pitch, yaw) in rad, pitch in [-pi/2, pi/2]."""
    r = np.asarray(rotation, dtype=np.float64)
    roll, yaw = math.atan2(r[2, 1], r[2, 2]), math.atan2(r[1, 0], r[0, 0])
    return roll, -math.asin(max(-1.0, min(1.0, r[2, 0]))), yaw
