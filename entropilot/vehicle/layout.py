"""The observation layout every policy reads, named and ordered: the envs fill it from the simulator, the vehicle links
from telemetry, and export writes it into the ONNX file. Standard library only."""

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
# A heading-frame observation (an env's ``observation_frame: heading``) turns the horizontal quantities about z by minus
# the heading read from (r11, r21); below this length of (r11, r21) (the body x axis vertical) it divides by this.
HEADING_NORM_MIN = 1e-9

OBSERVATION_NAMES: tuple[str, ...] = tuple(name for _, names, _ in OBSERVATION_GROUPS for name in names)
OBSERVATION_SIZE = len(OBSERVATION_NAMES)


# Where each group sits in the observation vector.
OBSERVATION_COLUMNS: dict[str, slice] = {}
_start = 0
for _group, _names, _ in OBSERVATION_GROUPS:
    OBSERVATION_COLUMNS[_group] = slice(_start, _start + len(_names))
    _start += len(_names)
del _start, _group, _names
