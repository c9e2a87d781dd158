"""What an entropy value means and which values a measure can reach on an action space. Plain Python
(no torch), so the config can refuse unreachable thresholds and targets before Ray starts."""

import math

import gymnasium as gym

# Entropy of N(0, 1) in nats: a Gaussian of std s has 1/2 log(2 pi e) + log s per dimension.
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)
# Floor of the effective std, in half-widths of the action box (1e-3: an actuator's resolution). It keeps the
# effective entropy finite for a deterministic policy and puts the bottom of its range at log(1e-3) + 1.42.
RESOLUTION = 1e-3
# RLlib clips a Gaussian's log std to +-20 (DefaultModelConfig.log_std_clip_param).
LOG_STD_CLIP = 20.0
# Names of the measures of a Gaussian policy (see policies/entropy.py); a categorical policy has one entropy.
MEASURES = ("effective", "gaussian")
# What a categorical policy's one entropy is called wherever a measure's name appears (metrics, measured_entropies).
CATEGORICAL = "categorical"


def categorical_sizes(action_space: gym.spaces.Space) -> tuple[int, ...] | None:
    """The sub-action sizes K_i of a categorical action space (Discrete: one; MultiDiscrete: one per entry, in
    RLlib's flattened order), or None for any other space."""
    if isinstance(action_space, gym.spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return tuple(int(k) for k in action_space.nvec.flat)
    return None


def entropy_key(measure: str, action_space: gym.spaces.Space) -> str:
    """The entropy `measure` reads on `action_space`, as `entropy.measured_entropies` names it: the measure itself
    for a Gaussian policy (Box), `categorical` for a categorical one (it has one entropy, whatever the measure)."""
    if measure not in MEASURES:
        raise ValueError(f"entropy measure must be one of {MEASURES}; got {measure!r}")
    return CATEGORICAL if categorical_sizes(action_space) is not None else measure


def measure_range(measure: str, action_space: gym.spaces.Space) -> tuple[float, float]:
    """(lowest, highest) value in nats that `measure` can take, averaged over states, on `action_space`.

    Box with d dims: `effective` lies in d * [1.42 + log(1e-3), 1.42 + 1/2 log(1 + 1e-6)] = d * [-5.49, 1.42]
    (the top is a policy that executes +-bound with equal odds, the bottom a deterministic one);
    `gaussian` in d * [1.42 - 20, 1.42 + 20] (RLlib's log-std clip). Discrete(K): [0, log K], MultiDiscrete:
    the sum over its components (a categorical policy's entropy, whatever `measure` says).
    """
    sizes = categorical_sizes(action_space)
    if entropy_key(measure, action_space) == CATEGORICAL and sizes is not None:  # (the key refuses a bad measure)
        return 0.0, float(sum(math.log(k) for k in sizes))
    if isinstance(action_space, gym.spaces.Box):
        dims = math.prod(action_space.shape)
        if measure == "effective":
            per_dim = (HALF_LOG_2PI_E + math.log(RESOLUTION), HALF_LOG_2PI_E + 0.5 * math.log1p(RESOLUTION**2))
        else:
            per_dim = (HALF_LOG_2PI_E - LOG_STD_CLIP, HALF_LOG_2PI_E + LOG_STD_CLIP)
        return dims * per_dim[0], dims * per_dim[1]
    raise ValueError(f"no entropy measure for action space {action_space}; supported: Box, Discrete, MultiDiscrete")


def std_per_dim(nats: float, dims: int) -> float:
    """The per-dimension std (in half-widths of the action box) that `nats` of a d-dim Gaussian measure means:
    exp(nats / d - 1.42). For the effective measure it is the geometric mean of the executed actions' stds."""
    return math.exp(nats / dims - HALF_LOG_2PI_E)


def nats_of_std(std: float, dims: int) -> float:
    """The Gaussian entropy of d dims of std `std`: d * (1.42 + log std); the inverse of `std_per_dim`."""
    return dims * (HALF_LOG_2PI_E + math.log(std))
