"""Discrete velocity commands: what a command policy's indices mean (per world axis, an index into a table of speeds).
Standard library only: the env that trains such a policy and the onboard runtime that flies it read indices here."""

from __future__ import annotations

AXES = ("x", "y", "z")


def velocity_command(levels, index, name: str = "action") -> list[float]:
    """One drone's command indices (one per world axis) -> its velocity command (m/s, world frame, z up).

    ``index``: a sequence or array of 3 integers (integral floats count). A ValueError names ``name`` and what is
    wrong: an index must be an integer in [0, len(levels)).
    """
    values = index.tolist() if hasattr(index, "tolist") else index
    shape = getattr(index, "shape", None)
    if not isinstance(values, (list, tuple)) or len(values) != len(AXES) or (shape is not None and len(shape) != 1):
        got = shape if shape is not None else (len(values) if isinstance(values, (list, tuple)) else type(values))
        raise ValueError(f"{name} must have shape ({len(AXES)},) (one command index per axis), got {got}")
    rows = []
    for value in values:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValueError(f"{name} must hold integer command indices, got {list(values)}")
        rows.append(int(value))
    if any(not 0 <= i < len(levels) for i in rows):
        raise ValueError(f"{name} indices must be in [0, {len(levels) - 1}], got {rows}")
    return [float(levels[i]) for i in rows]


def command_meaning(levels) -> list[str]:
    """What each sub-action's index commands, one line per axis (what export writes into the policy file)."""
    table = ", ".join(f"{i} -> {v:+g}" for i, v in enumerate(levels))
    return [f"velocity command along world {axis} (z up), m/s: {table}" for axis in AXES]
