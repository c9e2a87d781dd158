"""Adaptive entropy control for PPO: schedules over env steps, a controller that sets the entropy coefficient
(lower bound, signed tracker or fixed), and a detector that flags entropy collapse. Plain Python, no Ray."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

_STEPS_PER_RATE_UNIT = 1_000_000


def _finite_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def _env_steps(value: object) -> float:
    steps = _finite_real("env_steps", value)
    if steps < 0:
        raise ValueError(f"env_steps must be >= 0; got {value!r}")
    return steps


class Schedule:
    """A value over env steps: a constant, or piecewise-linear [[env_steps, value], ...] (RLlib's format).

    Before the first point the first value holds, after the last point the last value holds. `what`
    names the value in error messages ("target entropy", "sigma").
    """

    def __init__(self, points: float | Sequence[Sequence[float]], what: str = "target entropy"):
        if isinstance(points, Real):
            self._steps = [0.0]
            self._values = [_finite_real(what, points)]
            return
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
            raise ValueError(f"{what} must be a number or a non-empty list of [env_steps, value] pairs; got {points!r}")
        self._steps, self._values = [], []
        for i, point in enumerate(points):
            if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
                raise ValueError(f"schedule point {i} must be a pair [env_steps, value]; got {point!r}")
            steps = _finite_real(f"schedule point {i} env_steps", point[0])
            value = _finite_real(f"schedule point {i} value", point[1])
            if steps < 0:
                raise ValueError(f"schedule point {i} env_steps must be >= 0; got {point[0]!r}")
            if self._steps and steps <= self._steps[-1]:
                raise ValueError(
                    f"schedule env_steps must be strictly increasing; point {i} has {point[0]!r} "
                    f"after {self._steps[-1]:g}"
                )
            self._steps.append(steps)
            self._values.append(value)

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(self._values)

    def __call__(self, env_steps: float) -> float:
        steps = _env_steps(env_steps)
        if steps <= self._steps[0]:
            return self._values[0]
        for (s0, v0), (s1, v1) in zip(zip(self._steps, self._values), zip(self._steps[1:], self._values[1:])):
            if steps <= s1:
                return v0 + (v1 - v0) * (steps - s0) / (s1 - s0)
        return self._values[-1]


# How the entropy coefficient is set; see EntropyCoefficientController. `sigma_schedule` holds the
# coefficient at 0 and sets the Gaussian's std from a schedule instead (the learner does that).
CONTROL_MODES = ("lower_bound", "track", "fixed", "sigma_schedule")
COEFFICIENT_MODES = ("lower_bound", "track", "fixed")
# coef_min when none is given: a lower bound never penalizes entropy; the tracker may, this much.
DEFAULT_COEF_MIN = {"lower_bound": 0.0, "track": -0.05}


class EntropyCoefficientController:
    """Sets PPO's entropy coefficient (its loss term is -coef * entropy) once per training iteration.

    Modes:
    - `lower_bound` (the default, the safe one): keep the measured entropy at or above `target`, a
      minimum, with coef in [0, coef_max]. It is dual ascent on the constraint entropy >= target, as
      SAC tunes its temperature: while the policy is above the minimum the coefficient decays to 0 and
      PPO runs unchanged; below it, the coefficient grows until the entropy comes back. It never
      rewards certainty, so it cannot drive a collapse.
    - `track`: make the entropy follow `target` from both sides, coef in [coef_min, coef_max] with
      coef_min < 0 allowed. A target below the entropy the policy has by itself needs an entropy
      *penalty* (negative coefficient); such a penalty rewards certainty, i.e. it is an entropy-collapse
      force: held too long or too strong it drives the std toward zero, after which exploration, PPO's
      ratios and the log-probabilities degrade and nothing recovers. `coef_min` caps that force; keep
      |coef_min| at or below the size of the policy-gradient signal, and pair it with a collapse floor
      (`EntropyCollapseDetector`) below every target. On hover a falling schedule kept the coefficient
      negative for the whole run: the tracker then acts as an annealing penalty, not as a safeguard.
    - `fixed`: coef = `initial_coef` throughout (a baseline; 0 is plain PPO without entropy bonus).

    Update (lower_bound, track), with error e = target - measured (nats), a PI controller with
    integral I (its state) and output coef:
        I    = I + gain * e_k                                        (integral action: dual ascent)
        coef = clamp(I + damping * e_k, coef_min, coef_max),         (proportional action)
    the change of coef per iteration limited to +-max_step. Unclamped, this is the incremental form
    coef += gain * e_k + damping * (e_k - e_{k-1}); the first step is (gain + damping) * e. The two modes
    differ in their anti-windup, i.e. in what I does while coef sits at a bound:
    - track keeps I = coef - damping * e_k (back-calculation), which makes it exactly the incremental
      update it has always been: the coefficient leaves a bound on the first update whose error turns.
    - lower_bound clamps I to [0, coef_max] (the PI Lagrangian of Stooke et al. 2020, the multiplier
      projected onto coef >= 0). While the entropy is above the minimum, I sits at 0 and damping * e < 0,
      so the coefficient is exactly 0, noise or not. (Back-calculation would store I = -damping * e > 0
      there, and every uptick of the falling error would kick the coefficient above 0: an entropy bonus
      the policy does not need.)
    The controller acts on the coefficient itself (linear, not its logarithm) because in `track` mode
    it changes sign.

    Plant and stability: PPO's entropy *integrates* the coefficient. The loss gradient on each log
    std is -coef, and each of an iteration's Adam steps moves a log std by about
    lr * coef / rms(its gradient), so per iteration
        H_{k+1} = H_k + b * coef_k + d,
    with plant gain b (nats per iteration per unit coefficient) and a drift d (most policies
    sharpen by themselves, d < 0). Measured on hover's PPO (lr 3e-4, 10 epochs x 8 minibatches,
    4 action dims, free log std; fixed coefficients +-0.05 and +-0.01 for 6 iterations each):
    b = 0.8 .. 1.2 and d = -0.006 .. -0.016 nats per iteration of Gaussian entropy, i.e. +-0.05 moves
    it by about 0.045 nats per iteration (the effective entropy moves as much while the bounds do not
    bite, less once actions clip). b grows with lr, Adam steps per iteration and action dims (and a
    state-dependent std, whose many weights all move), and shrinks once |coef| approaches the
    log-std gradient rms (Adam's steps saturate at ~lr). With e = target - H the closed loop is
        e_{k+1} = (2 - b*gain - b*damping) e_k - (1 - b*damping) e_{k-1},
    stable (Jury) iff 0 < b*damping < 2 and b*(gain + 2*damping) < 4. Pure integral action
    (damping = 0) is marginal on an integrating plant - it oscillates for ever - hence the damping
    term. Near z = 1 the loop behaves like s^2 + b(gain + damping) s + b*gain: natural frequency
    sqrt(b*gain) per iteration, damping ratio (gain + damping) * sqrt(b / gain) / 2.
    Defaults: gain 0.003, damping 0.08. At hover's b = 1 (including the half-iteration lag of a
    measurement averaged over the update) the error decays with a time constant of ~23 iterations
    (~46k env steps of hover), damping ratio 0.75; the ratio is >= 0.5 for b >= 0.5 and 1 for
    b in 2..20; the loop stays stable up to b ~ 24, a 20-fold faster plant than hover's. A ramp
    target (a falling schedule) is followed with no steady lag, since the loop holds two integrators
    (coefficient and entropy). coef_max 0.05: enough to overcome the drift, short of Adam's
    saturation. `max_step` 0.005 keeps one outlier batch or a large early error from slamming the
    coefficient from 0 to a bound: that takes >= 10 iterations.
    Measured and target entropy must be the same quantity (the learner feeds the configured measure);
    the controller only sees numbers.
    """

    def __init__(
        self,
        target: Schedule | float | Sequence[Sequence[float]] | None,
        mode: str = "lower_bound",
        initial_coef: float = 0.0,
        coef_min: float | None = None,
        coef_max: float = 0.05,
        gain: float = 0.003,
        damping: float = 0.08,
        max_step: float = 0.005,
    ):
        if mode not in COEFFICIENT_MODES:
            raise ValueError(f"controller mode must be one of {COEFFICIENT_MODES}; got {mode!r}")
        self._mode = mode
        self._schedule = _target_schedule(mode, target)
        initial_coef = _finite_real("initial_coef", initial_coef)
        if coef_min is None:
            # A fixed coefficient uses no bounds; any coef_min <= coef_max will do.
            coef_min = DEFAULT_COEF_MIN.get(mode, min(initial_coef, coef_max))
        settings = _checked_settings(mode, coef_min, coef_max, gain, damping, max_step)
        if mode != "fixed" and not settings[0] <= initial_coef <= settings[1]:
            raise ValueError(
                f"initial_coef must lie in [coef_min, coef_max] = [{settings[0]}, {settings[1]}]; got {initial_coef}"
            )
        self._coef_min, self._coef_max, self._gain, self._damping, self._max_step = settings
        self._coef = self._integral = initial_coef
        self._last_error = 0.0  # kept for the checkpoint: what the controller last saw
        self._num_updates = 0
        self._num_ignored = 0

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def coefficient(self) -> float:
        """The entropy coefficient to use now; negative = an entropy penalty (track mode only)."""
        return self._coef

    @property
    def num_ignored(self) -> int:
        """How many non-finite measurements were ignored (a NaN entropy is a symptom, not a signal)."""
        return self._num_ignored

    def target(self, env_steps: float) -> float | None:
        """The target (track) or minimum (lower_bound) entropy at `env_steps`; None for a fixed coefficient."""
        return None if self._schedule is None else self._schedule(env_steps)

    def retune(
        self,
        *,
        target: Schedule | float | Sequence[Sequence[float]] | None = None,
        coef: float | None = None,
        coef_min: float | None = None,
        coef_max: float | None = None,
        gain: float | None = None,
        damping: float | None = None,
        max_step: float | None = None,
    ) -> None:
        """Change settings of a running controller (live tuning); None keeps a setting.

        The integrator state (coefficient, integral, counters) stays, so the loop goes on from
        where it is instead of restarting at `initial_coef`. A coefficient outside new bounds is
        clamped into them, as a bound does during updates. `coef` sets a fixed coefficient (fixed
        mode only: elsewhere the coefficient is the integrator's state). All checks run before
        anything changes: a rejected call leaves the controller as it was.
        """
        if self._mode == "fixed" and target is not None:
            raise ValueError("a fixed coefficient has no target; set coef")
        if self._mode != "fixed" and coef is not None:
            raise ValueError(f"coef is the {self._mode} controller's own state; set target or the bounds instead")
        schedule = self._schedule if target is None else _target_schedule(self._mode, target)
        new_coef = self._coef if coef is None else _finite_real("coef", coef)
        keep = lambda value, current: current if value is None else value  # noqa: E731
        settings = _checked_settings(
            self._mode,
            keep(coef_min, self._coef_min),
            keep(coef_max, self._coef_max),
            keep(gain, self._gain),
            keep(damping, self._damping),
            keep(max_step, self._max_step),
        )
        self._schedule = schedule
        self._coef_min, self._coef_max, self._gain, self._damping, self._max_step = settings
        if self._mode == "fixed":
            self._coef = new_coef
        else:
            self._coef = self._clamp(self._coef)
            self._integral = self._clamp(self._integral) if self._mode == "lower_bound" else self._back_calculated()

    def update(self, measured_entropy: float, env_steps: float) -> float:
        """Take one measurement (nats) at `env_steps`; return the coefficient to use next."""
        _env_steps(env_steps)
        measured = float(measured_entropy)
        if not math.isfinite(measured):
            # Acting on NaN/inf would poison the coefficient for good; keep the last one instead.
            self._num_ignored += 1
            return self._coef
        self._num_updates += 1
        if self._schedule is None:  # a fixed coefficient: nothing to follow
            return self._coef
        error = self._schedule(env_steps) - measured
        self._last_error = error
        integral = self._integral + self._gain * error
        if self._mode == "lower_bound":
            integral = self._clamp(integral)
        wanted = self._clamp(integral + self._damping * error)
        self._coef = min(max(wanted, self._coef - self._max_step), self._coef + self._max_step)
        self._integral = integral if self._mode == "lower_bound" else self._back_calculated()
        return self._coef

    def _back_calculated(self) -> float:
        """track's integral: what the coefficient holds, less its proportional part."""
        return self._coef - self._damping * self._last_error

    def _clamp(self, coef: float) -> float:
        return min(max(coef, self._coef_min), self._coef_max)

    def state_dict(self) -> dict[str, float | int]:
        """Plain Python numbers, so it fits an RLlib Learner state or a JSON checkpoint."""
        return {
            "coef": self._coef,
            "integral": self._integral,
            "last_error": self._last_error,
            "num_updates": self._num_updates,
            "num_ignored": self._num_ignored,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        missing = {"coef", "integral", "last_error", "num_updates", "num_ignored"} - state.keys()
        if missing:
            raise ValueError(
                f"controller state is missing {sorted(missing)} (a checkpoint of an older controller can't be "
                "resumed: restart the controller or start from a newer checkpoint)"
            )
        coef = _finite_real("state coef", state["coef"])
        integral = _finite_real("state integral", state["integral"])
        last_error = _finite_real("state last_error", state["last_error"])
        counts = {}
        for key in ("num_updates", "num_ignored"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"state {key} must be an int >= 0; got {value!r}")
            counts[key] = value
        # A resumed run may have changed the bounds; the stored state must obey the new ones. A fixed
        # coefficient is the configured one, not the stored one.
        self._last_error = last_error
        if self._mode != "fixed":
            self._coef = self._clamp(coef)
            self._integral = self._clamp(integral) if self._mode == "lower_bound" else self._back_calculated()
        self._num_updates, self._num_ignored = counts["num_updates"], counts["num_ignored"]


def _target_schedule(mode: str, target) -> Schedule | None:
    if mode == "fixed":
        return None
    if target is None:
        raise ValueError(f"a {mode} controller needs a target entropy")
    return target if isinstance(target, Schedule) else Schedule(target)


def _checked_settings(mode, coef_min, coef_max, gain, damping, max_step) -> tuple[float, float, float, float, float]:
    """The controller's bounds and gains as floats, or a ValueError naming the first bad one."""
    coef_min, coef_max = _finite_real("coef_min", coef_min), _finite_real("coef_max", coef_max)
    if not coef_min <= coef_max:
        raise ValueError(f"need coef_min <= coef_max; got coef_min={coef_min}, coef_max={coef_max}")
    if mode == "lower_bound" and coef_min < 0:
        raise ValueError(
            f"a lower_bound controller never goes below zero: coef_min must be >= 0; got {coef_min} "
            "(a negative coefficient needs mode track)"
        )
    if not _finite_real("gain", gain) > 0:
        raise ValueError(f"gain must be > 0; got {gain}")
    if not _finite_real("damping", damping) >= 0:
        raise ValueError(f"damping must be >= 0; got {damping}")
    if not _finite_real("max_step", max_step) > 0:
        raise ValueError(f"max_step must be > 0; got {max_step}")
    return coef_min, coef_max, float(gain), float(damping), float(max_step)


@dataclass(frozen=True)
class CollapseCheck:
    """Outcome of one `EntropyCollapseDetector.update`; `reasons` is empty when nothing is wrong."""

    collapsed: bool
    reasons: tuple[str, ...]
    drop_per_million_steps: float | None


class EntropyCollapseDetector:
    """Flags entropy collapse: entropy below `floor`, or falling faster than `max_drop_per_million_steps`.

    The rate is measured per 1M env steps, not per iteration, so one threshold means the same thing
    whatever the batch size. It is the least-squares slope over the measurements of the last
    `window_env_steps` (at least 3 of them), because the difference of two consecutive noisy batch
    estimates would fire on noise. A non-finite entropy is always flagged: the policy has diverged.
    """

    def __init__(
        self,
        floor: float | None = None,
        max_drop_per_million_steps: float | None = None,
        window_env_steps: int = 500_000,
    ):
        if floor is None and max_drop_per_million_steps is None:
            raise ValueError("set at least one of floor and max_drop_per_million_steps")
        self._floor = None if floor is None else _finite_real("floor", floor)
        self._max_drop = None
        if max_drop_per_million_steps is not None:
            self._max_drop = _finite_real("max_drop_per_million_steps", max_drop_per_million_steps)
            if self._max_drop <= 0:
                raise ValueError(f"max_drop_per_million_steps must be > 0; got {max_drop_per_million_steps}")
        if not _finite_real("window_env_steps", window_env_steps) > 0:
            raise ValueError(f"window_env_steps must be > 0; got {window_env_steps}")
        self._window = float(window_env_steps)
        self._history: list[tuple[float, float]] = []

    def update(self, entropy: float, env_steps: float) -> CollapseCheck:
        steps = _env_steps(env_steps)
        entropy = float(entropy)
        if not math.isfinite(entropy):
            return CollapseCheck(True, (f"entropy is not finite ({entropy})",), None)
        # Dropping points at or after `steps` also handles a run rewound to an earlier checkpoint.
        self._history = [p for p in self._history if steps - self._window <= p[0] < steps]
        self._history.append((steps, entropy))
        reasons = []
        if self._floor is not None and entropy < self._floor:
            reasons.append(f"entropy {entropy:.4g} below floor {self._floor:.4g}")
        drop = self._drop_per_million_steps()
        if self._max_drop is not None and drop is not None and drop > self._max_drop:
            reasons.append(f"entropy falling {drop:.4g} nats per 1M env steps, faster than {self._max_drop:.4g}")
        return CollapseCheck(bool(reasons), tuple(reasons), drop)

    def _drop_per_million_steps(self) -> float | None:
        if len(self._history) < 3:
            return None
        n = len(self._history)
        mean_steps = sum(s for s, _ in self._history) / n
        mean_entropy = sum(h for _, h in self._history) / n
        covariance = sum((s - mean_steps) * (h - mean_entropy) for s, h in self._history)
        variance = sum((s - mean_steps) ** 2 for s, _ in self._history)
        return -covariance / variance * _STEPS_PER_RATE_UNIT

    def state_dict(self) -> dict[str, list[list[float]]]:
        return {"history": [[s, h] for s, h in self._history]}

    def load_state_dict(self, state: dict[str, list[list[float]]]) -> None:
        if "history" not in state:
            raise ValueError("collapse detector state is missing 'history'")
        self._history = [
            (_finite_real("history env_steps", s), _finite_real("history entropy", h)) for s, h in state["history"]
        ]
