"""Schedules, the entropy-coefficient controller in each mode and the collapse detector, on toy entropy plants."""

import json
import math

import pytest

from entropilot.policies.entropy_control import (
    EntropyCoefficientController,
    EntropyCollapseDetector,
    Schedule,
)


def test_constant_schedule():
    schedule = Schedule(-2.5)
    assert schedule(0) == schedule(10**9) == -2.5


def test_piecewise_schedule_interpolates_and_holds_ends():
    schedule = Schedule([[1000, 2.0], [3000, -2.0], [4000, -3.0]])
    assert schedule(0) == 2.0
    assert schedule(1000) == 2.0
    assert schedule(2000) == pytest.approx(0.0)
    assert schedule(3500) == pytest.approx(-2.5)
    assert schedule(4000) == -3.0
    assert schedule(10**8) == -3.0


@pytest.mark.parametrize(
    "target,message",
    [
        ([], "non-empty list"),
        ("1.0", "non-empty list"),
        (math.nan, "target entropy must be a finite number"),
        ([[0, 1.0], [2000, 0.5], [1000, 0.0]], "strictly increasing; point 2 has 1000 after 2000"),
        ([[0, 1.0], [0, 0.5]], "strictly increasing"),
        ([[0, 1.0], [1000, math.inf]], "point 1 value must be a finite number"),
        ([[0, 1.0], [1000]], r"point 1 must be a pair \[env_steps, value\]"),
        ([[-5, 1.0]], "point 0 env_steps must be >= 0"),
    ],
)
def test_bad_schedule_names_the_problem(target, message):
    with pytest.raises(ValueError, match=message):
        Schedule(target)


def test_schedule_rejects_negative_env_steps():
    with pytest.raises(ValueError, match="env_steps must be >= 0"):
        Schedule(1.0)(-1)


STEPS_PER_ITERATION = 2000  # env steps per training iteration, as in configs/hover.yaml


def static_plant(coefficient: float) -> float:
    """Entropy reached at once, rising with the coefficient: 1 nat at coefficient 0, 5 nats per unit."""
    return 1.0 + 5.0 * coefficient


def run_integrating_plant(controller, iterations, entropy, *, b=1.0, drift=0.0, pull=0.0, natural=0.0, first=0):
    """PPO-like plant: entropy integrates the coefficient. Per iteration
        entropy += b * coef + drift + pull * (natural - entropy),
    b ~ 1 nat per iteration per unit coefficient as measured on hover; drift < 0 is a policy that sharpens by
    itself; pull > 0 relaxes it toward a natural level. The controller sees the mean over the iteration
    (the learner averages entropy over the update's minibatches). Returns the final entropy and per
    iteration (target, entropy, coefficient)."""
    history = []
    for k in range(first, first + iterations):
        after = entropy + b * controller.coefficient + drift + pull * (natural - entropy)
        measured, entropy = 0.5 * (entropy + after), after
        steps = (k + 1) * STEPS_PER_ITERATION
        coefficient = controller.update(measured, env_steps=steps)
        history.append((controller.target(steps), entropy, coefficient))
    return entropy, history


def track(target, **kwargs):
    """The signed tracker (mode track), whose coefficient may go negative."""
    return EntropyCoefficientController(target=target, mode="track", **kwargs)


def test_tracker_is_signed_and_centred():
    controller = track(0.0)
    assert controller.coefficient == 0.0
    # Far above target: the coefficient goes negative (an entropy penalty), one max_step at a time.
    assert controller.update(10.0, env_steps=0) == pytest.approx(-0.005)


def test_the_default_lower_bound_never_goes_below_zero():
    controller = EntropyCoefficientController(target=2.0)
    assert controller.mode == "lower_bound" and controller.coefficient == 0.0
    # Above the minimum all run long (a sharpening policy from 5.68 nats): the coefficient stays at 0.
    entropy, history = run_integrating_plant(controller, 100, 5.68, b=1.0, drift=-0.01)
    assert all(c == 0.0 for _, h, c in history if h > 2.2)
    # Once below, it pushes back up and holds the minimum: b * coef + drift = 0.
    entropy, history = run_integrating_plant(controller, 400, entropy, b=1.0, drift=-0.01, first=100)
    assert min(c for _, _, c in history) >= 0.0
    assert entropy == pytest.approx(2.0, abs=0.01) and controller.coefficient == pytest.approx(0.01, abs=5e-4)
    # Noisy measurements above the minimum: the coefficient is exactly 0 each time (no kick on an uptick).
    fresh = EntropyCoefficientController(target=2.0)
    for k, noise in enumerate([0.3, -0.2, 0.4, -0.5, 0.1, -0.1, 0.5]):
        assert fresh.update(3.0 + noise, env_steps=k) == 0.0
    # An entropy far above the minimum never gets a penalty.
    assert controller.update(50.0, env_steps=10**6) >= 0.0 and controller.update(50.0, env_steps=10**6) == 0.0


def test_fixed_coefficient_ignores_measurements():
    controller = EntropyCoefficientController(target=None, mode="fixed", initial_coef=0.004)
    assert controller.target(0) is None
    assert controller.update(3.0, env_steps=0) == controller.update(-30.0, env_steps=1) == 0.004
    controller.retune(coef=0.01)
    assert controller.coefficient == 0.01 and controller.state_dict()["num_updates"] == 2
    with pytest.raises(ValueError, match="no target"):
        controller.retune(target=1.0)
    # A stored coefficient does not override the configured one.
    controller.load_state_dict({"coef": 0.5, "integral": 0.5, "last_error": 0.0, "num_updates": 7, "num_ignored": 0})
    assert controller.coefficient == 0.01


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="lower_bound", coef_min=-0.01), "never goes below zero: coef_min must be >= 0; got -0.01"),
        (
            dict(mode="lower_bound", initial_coef=-0.01),
            r"initial_coef must lie in \[coef_min, coef_max\] = \[0.0, 0.05\]",
        ),
        (dict(mode="sigma_schedule"), "controller mode must be one of"),
        (dict(mode="track", target=None), "needs a target"),
    ],
)
def test_modes_refuse_what_they_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntropyCoefficientController(**{"target": 1.0, **kwargs})


def test_only_a_fixed_coefficient_is_set_directly():
    with pytest.raises(ValueError, match="own state"):
        EntropyCoefficientController(target=1.0).retune(coef=0.01)


@pytest.mark.parametrize("target, coefficient", [(1.1, 0.02), (0.9, -0.02)], ids=["above", "below"])
def test_controller_converges_on_static_plant(target, coefficient):
    controller = track(target)
    for iteration in range(600):
        controller.update(static_plant(controller.coefficient), env_steps=iteration * STEPS_PER_ITERATION)
    assert static_plant(controller.coefficient) == pytest.approx(target, abs=0.001)
    assert controller.coefficient == pytest.approx(coefficient, abs=2e-4)


@pytest.mark.parametrize("target", [6.5, 3.0], ids=["above-start", "below-start"])
def test_controller_converges_on_integrating_plant_with_drift(target):
    # A policy that sharpens by itself (drift -0.01 nats per iteration) from a std-1 start (5.68 nats): at the
    # target the coefficient must cancel the drift exactly, b * coef + drift = 0.
    controller = track(target)
    entropy, history = run_integrating_plant(controller, 400, 5.68, b=1.0, drift=-0.01)
    assert entropy == pytest.approx(target, abs=0.005)
    assert controller.coefficient == pytest.approx(0.01, abs=5e-4)
    # Well damped: after the transient it stays close, no ringing.
    assert all(abs(h - target) < 0.05 for _, h, _ in history[-100:])


@pytest.mark.parametrize("target", [6.0, 3.0], ids=["above-natural", "below-natural"])
def test_target_below_the_natural_level_needs_a_penalty(target):
    # The policy relaxes toward a natural entropy of 5 nats (as on hover, where it stayed at 4-5.5 nats).
    # Holding 3 nats takes a steady entropy penalty: b * coef = pull * (target - natural) = -0.02.
    plant = dict(b=1.0, pull=0.01, natural=5.0)
    controller = track(target)
    entropy, _ = run_integrating_plant(controller, 500, 5.0, **plant)
    assert entropy == pytest.approx(target, abs=0.005)
    expected = 0.01 * (target - 5.0)
    assert controller.coefficient == pytest.approx(expected, abs=5e-4)
    assert (controller.coefficient < 0) == (target < 5.0)
    if target < 5.0:
        # A controller that can't go below zero (the lower bound) leaves entropy at its natural level.
        nonnegative = EntropyCoefficientController(target=target)
        stuck, _ = run_integrating_plant(nonnegative, 500, 5.0, **plant)
        assert nonnegative.coefficient == 0.0 and stuck == pytest.approx(5.0, abs=0.01)


def test_controller_tracks_a_falling_schedule():
    # Hover's schedule: 4 -> 0 nats over 300k env steps (150 iterations), falling faster than the policy's own
    # drift, so following it takes a penalty: b * coef = slope - drift = -4/150 + 0.01.
    controller = track([[0, 4.0], [300_000, 0.0]])
    _, ramp = run_integrating_plant(controller, 150, 5.68, b=1.0, drift=-0.01)
    _, hold = run_integrating_plant(controller, 150, ramp[-1][1], b=1.0, drift=-0.01, first=150)
    # The start (1.7 nats above target) takes the penalty to its bound, then entropy catches up and follows.
    assert min(c for _, _, c in ramp) == -0.05
    assert all(abs(t - h) < 0.06 for t, h, _ in ramp[75:])
    assert all(abs(t - h) < 0.03 for t, h, _ in ramp[-20:])  # no steady lag behind the ramp
    assert all(c == pytest.approx(-4 / 150 + 0.01, abs=0.002) for _, _, c in ramp[100:])
    assert hold[-1][0] == 0.0 and all(abs(h) < 0.01 for _, h, _ in hold[-50:])
    assert hold[-1][2] == pytest.approx(0.01, abs=5e-4)


def test_controller_respects_bounds_without_windup():
    controller = track(5.0, initial_coef=0.01, coef_min=-0.03, coef_max=0.04)
    for iteration in range(100):  # unreachable target above: pinned at coef_max
        assert -0.03 <= controller.update(0.0, env_steps=iteration) <= 0.04
    assert controller.coefficient == 0.04
    # The first measurement above target moves it off the bound at once: nothing wound up.
    assert controller.update(6.0, env_steps=100) < 0.04
    for iteration in range(101, 300):  # unreachable target below: pinned at the (negative) coef_min
        assert -0.03 <= controller.update(10.0, env_steps=iteration) <= 0.04
    assert controller.coefficient == -0.03
    assert controller.update(4.0, env_steps=300) > -0.03


def test_controller_step_is_the_pi_increment_then_clamped():
    controller = track(0.0, gain=0.01, damping=0.1, max_step=0.03)
    # First step: e = 0.2 with e_prev = 0 -> (gain + damping) * e, the positional PI's proportional kick.
    assert controller.update(-0.2, env_steps=0) == pytest.approx(0.022)
    # Then gain * e + damping * (e - e_prev) = 0.001 - 0.01.
    assert controller.update(-0.1, env_steps=1) == pytest.approx(0.013)
    # Large errors move the coefficient by max_step only, either way.
    assert controller.update(-50.0, env_steps=2) == pytest.approx(0.043)
    assert controller.update(50.0, env_steps=3) == pytest.approx(0.013)
    assert controller.update(50.0, env_steps=4) == pytest.approx(-0.017)


def test_controller_ignores_non_finite_measurements():
    controller = track(-1.0)
    reference = track(-1.0)
    for iteration, measured in enumerate([0.5, math.nan, 0.2, math.inf, -0.3, -math.inf]):
        coefficient = controller.update(measured, env_steps=iteration)
        if math.isfinite(measured):
            assert coefficient == reference.update(measured, env_steps=iteration)
        else:
            assert coefficient == reference.coefficient
    assert controller.num_ignored == 3
    assert controller.state_dict()["num_updates"] == 3


def test_controller_state_round_trip_gives_identical_outputs():
    config = dict(
        target=[[0, 1.0], [100_000, -1.0]], mode="track", initial_coef=0.02, coef_min=-0.1, gain=0.01, damping=0.05
    )
    original = EntropyCoefficientController(**config)
    entropy, _ = run_integrating_plant(original, 10, 3.0)
    assert original.coefficient < 0
    state = json.loads(json.dumps(original.state_dict()))  # plain numbers only
    assert set(state) == {"coef", "integral", "last_error", "num_updates", "num_ignored"}
    restored = EntropyCoefficientController(**config)
    restored.load_state_dict(state)
    assert restored.coefficient == original.coefficient
    _, expected = run_integrating_plant(original, 30, entropy, first=10)
    _, resumed = run_integrating_plant(restored, 30, entropy, first=10)
    assert resumed == expected


def test_controller_load_clamps_to_new_bounds():
    controller = track(0.0, coef_min=-0.02, coef_max=0.05)
    state = {"coef": 0.5, "integral": 0.5, "last_error": 0.0, "num_updates": 3, "num_ignored": 0}
    controller.load_state_dict(state)
    assert controller.coefficient == 0.05
    controller.load_state_dict({**state, "coef": -0.5})
    assert controller.coefficient == -0.02
    controller.load_state_dict({**state, "coef": -0.01})
    assert controller.coefficient == -0.01


@pytest.mark.parametrize(
    "change, message",
    [
        # A checkpoint of the old log-space controller.
        # A checkpoint of the incremental controller, which had no integral.
        (dict(integral=None), r"missing \['integral'\] \(a checkpoint of an older controller"),
        (dict(coef=None), r"missing \['coef'\]"),
        (dict(last_error=None, num_ignored=None), r"missing \['last_error', 'num_ignored'\]"),
        (dict(coef=math.nan), "state coef must be a finite number"),
        (dict(last_error="0.1"), "state last_error must be a finite number"),
        (dict(num_updates=-1), "state num_updates must be an int >= 0; got -1"),
        (dict(num_ignored=1.5), "state num_ignored must be an int >= 0; got 1.5"),
    ],
)
def test_controller_load_rejects_bad_state(change, message):
    controller = EntropyCoefficientController(target=0.0)
    state = {"coef": 0.01, "integral": 0.01, "last_error": 0.0, "num_updates": 3, "num_ignored": 0}
    state = {k: v for k, v in {**state, **change}.items() if v is not None}
    before = controller.state_dict()
    with pytest.raises(ValueError, match=message):
        controller.load_state_dict(state)
    assert controller.state_dict() == before  # nothing half-loaded


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(coef_min=0.1, coef_max=0.01), "need coef_min <= coef_max; got coef_min=0.1, coef_max=0.01"),
        (dict(initial_coef=-0.06), r"initial_coef must lie in \[coef_min, coef_max\] = \[-0.05, 0.05\]; got -0.06"),
        (dict(initial_coef=0.2, coef_max=0.1), r"initial_coef must lie in .*; got 0.2"),
        (dict(coef_min=math.nan), "coef_min must be a finite number; got nan"),
        (dict(coef_max=math.inf), "coef_max must be a finite number; got inf"),
        (dict(initial_coef=True), "initial_coef must be a finite number; got True"),
        (dict(gain=0.0), "gain must be > 0; got 0.0"),
        (dict(gain=-math.inf), "gain must be a finite number"),
        (dict(damping=-1.0), "damping must be >= 0; got -1.0"),
        (dict(max_step=0.0), "max_step must be > 0; got 0.0"),
        (dict(max_step=math.nan), "max_step must be a finite number"),
    ],
)
def test_controller_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        track(0.0, **kwargs)


def test_controller_rejects_old_log_space_keyword():
    with pytest.raises(TypeError, match="max_log_step"):
        EntropyCoefficientController(target=0.0, max_log_step=0.5)


def test_tracker_with_equal_bounds_is_a_fixed_coefficient():
    controller = track(0.0, initial_coef=-0.01, coef_min=-0.01, coef_max=-0.01)
    assert controller.update(3.0, env_steps=0) == controller.update(-3.0, env_steps=1) == -0.01


def test_controller_rejects_bad_env_steps():
    with pytest.raises(ValueError, match="env_steps"):
        EntropyCoefficientController(target=0.0).update(0.0, env_steps=math.nan)


def test_detector_flags_floor():
    detector = EntropyCollapseDetector(floor=-2.0)
    assert not detector.update(-1.0, 0).collapsed
    check = detector.update(-2.5, 4000)
    assert check.collapsed
    assert check.reasons == ("entropy -2.5 below floor -2",)


def test_detector_flags_fast_drop_not_slow_noisy_decline():
    fast = EntropyCollapseDetector(max_drop_per_million_steps=5.0, window_env_steps=100_000)
    checks = [fast.update(1.0 - 1e-5 * steps, steps) for steps in range(0, 100_000, 10_000)]
    assert checks[0].drop_per_million_steps is None and not checks[1].collapsed
    assert checks[-1].collapsed
    assert checks[-1].drop_per_million_steps == pytest.approx(10.0)
    assert "falling 10 nats per 1M env steps, faster than 5" in checks[-1].reasons[0]

    slow = EntropyCollapseDetector(max_drop_per_million_steps=5.0, window_env_steps=100_000)
    # Declines 1 nat per 1M steps, with batch noise that alone would read as 40 nats per 1M step-to-step.
    for i, steps in enumerate(range(0, 1_000_000, 10_000)):
        noise = 0.2 if i % 2 else -0.2
        assert not slow.update(1.0 - 1e-6 * steps + noise, steps).collapsed


def test_detector_flags_non_finite_entropy():
    check = EntropyCollapseDetector(floor=-5.0).update(math.nan, 0)
    assert check.collapsed and "not finite" in check.reasons[0]


def test_detector_state_round_trip_and_rewind():
    config = dict(floor=-3.0, max_drop_per_million_steps=5.0, window_env_steps=100_000)
    original = EntropyCollapseDetector(**config)
    for steps in range(0, 50_000, 10_000):
        original.update(1.0 - 1e-5 * steps, steps)
    restored = EntropyCollapseDetector(**config)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    for steps in range(50_000, 90_000, 10_000):
        assert restored.update(1.0 - 1e-5 * steps, steps) == original.update(1.0 - 1e-5 * steps, steps)
    # Rewound to an earlier checkpoint: later history is dropped, so no rate from too few points.
    assert restored.update(0.5, 10_000).drop_per_million_steps is None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(), "at least one"),
        (dict(max_drop_per_million_steps=0.0), "must be > 0"),
        (dict(floor=math.inf), "floor must be a finite number"),
        (dict(floor=0.0, window_env_steps=0), "window_env_steps must be > 0"),
    ],
)
def test_detector_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntropyCollapseDetector(**kwargs)
