"""Entropy schedule, coefficient controller and collapse detector, driven by toy entropy plants."""

import json
import math

import pytest

from entropilot.policies.entropy_control import (
    EntropyCoefficientController,
    EntropyCollapseDetector,
    EntropySchedule,
)


def static_plant(coefficient: float) -> float:
    """Entropy as a monotone function of the coefficient, reached at once."""
    return 1.0 + 0.8 * math.log(coefficient)


def test_constant_schedule():
    schedule = EntropySchedule(-2.5)
    assert schedule(0) == schedule(10**9) == -2.5


def test_piecewise_schedule_interpolates_and_holds_ends():
    schedule = EntropySchedule([[1000, 2.0], [3000, -2.0], [4000, -3.0]])
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
        EntropySchedule(target)


def test_schedule_rejects_negative_env_steps():
    with pytest.raises(ValueError, match="env_steps must be >= 0"):
        EntropySchedule(1.0)(-1)


def test_controller_converges_on_static_plant():
    controller = EntropyCoefficientController(target=-1.0, initial_coef=0.5)
    for iteration in range(150):
        controller.update(static_plant(controller.coefficient), env_steps=iteration * 4000)
    assert static_plant(controller.coefficient) == pytest.approx(-1.0, abs=0.01)


def test_controller_converges_on_integrating_plant():
    # PPO-like: a coefficient above the equilibrium (1e-3) keeps raising entropy, below keeps lowering it.
    controller = EntropyCoefficientController(target=-1.0)
    entropy = 1.0
    for iteration in range(200):
        controller.update(entropy, env_steps=iteration * 4000)
        entropy += 0.3 * (math.log(controller.coefficient) - math.log(1e-3))
    assert entropy == pytest.approx(-1.0, abs=0.01)
    assert controller.coefficient == pytest.approx(1e-3, rel=0.01)


def test_controller_tracks_a_schedule():
    controller = EntropyCoefficientController(target=[[0, 0.5], [400_000, -1.5]], initial_coef=0.1)
    for iteration in range(200):
        steps = iteration * 4000
        controller.update(static_plant(controller.coefficient), env_steps=steps)
    assert controller.target(steps) == -1.5
    assert static_plant(controller.coefficient) == pytest.approx(-1.5, abs=0.01)


def test_controller_respects_bounds_without_windup():
    controller = EntropyCoefficientController(target=5.0, initial_coef=0.01, coef_min=1e-4, coef_max=0.05)
    for iteration in range(100):  # unreachable target: pinned at coef_max
        assert controller.update(0.0, env_steps=iteration) <= 0.05
    assert controller.coefficient == 0.05
    # The first measurement above target moves it off the bound at once: nothing wound up.
    assert controller.update(6.0, env_steps=100) < 0.05
    for iteration in range(101, 300):
        controller.update(10.0, env_steps=iteration)
    assert controller.coefficient >= 1e-4
    assert controller.coefficient == pytest.approx(1e-4)


def test_controller_step_is_limited():
    controller = EntropyCoefficientController(target=0.0, initial_coef=0.01, max_log_step=math.log(2))
    assert controller.update(-50.0, env_steps=0) == pytest.approx(0.02)
    assert controller.update(50.0, env_steps=1) == pytest.approx(0.01)


def test_controller_ignores_non_finite_measurements():
    controller = EntropyCoefficientController(target=-1.0)
    reference = EntropyCoefficientController(target=-1.0)
    for iteration, measured in enumerate([0.5, math.nan, 0.2, math.inf, -0.3, -math.inf]):
        coefficient = controller.update(measured, env_steps=iteration)
        if math.isfinite(measured):
            assert coefficient == reference.update(measured, env_steps=iteration)
        else:
            assert coefficient == reference.coefficient
    assert controller.num_ignored == 3
    assert controller.state_dict()["num_updates"] == 3


def test_controller_state_round_trip_gives_identical_outputs():
    config = dict(target=[[0, 1.0], [100_000, -1.0]], initial_coef=0.02, gain=0.2, damping=0.3)
    original = EntropyCoefficientController(**config)
    for iteration in range(10):
        original.update(static_plant(original.coefficient), env_steps=iteration * 4000)
    state = json.loads(json.dumps(original.state_dict()))  # plain numbers only
    restored = EntropyCoefficientController(**config)
    restored.load_state_dict(state)
    assert restored.coefficient == original.coefficient
    for iteration in range(10, 40):
        measured = static_plant(original.coefficient)
        assert restored.update(measured, iteration * 4000) == original.update(measured, iteration * 4000)


def test_controller_load_clamps_to_new_bounds_and_rejects_bad_state():
    controller = EntropyCoefficientController(target=0.0, initial_coef=0.01, coef_max=0.05)
    state = {"log_coef": math.log(0.5), "last_error": 0.0, "num_updates": 3, "num_ignored": 0}
    controller.load_state_dict(state)
    assert controller.coefficient == pytest.approx(0.05)
    with pytest.raises(ValueError, match="missing"):
        controller.load_state_dict({"log_coef": 0.0})
    with pytest.raises(ValueError, match="log_coef must be a finite number"):
        controller.load_state_dict({**state, "log_coef": math.nan})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(coef_min=0.0), "0 < coef_min <= coef_max"),
        (dict(coef_min=0.1, coef_max=0.01), "0 < coef_min <= coef_max"),
        (dict(initial_coef=2.0), "initial_coef must lie in"),
        (dict(gain=0.0), "gain must be > 0"),
        (dict(damping=-1.0), "damping must be >= 0"),
        (dict(max_log_step=math.nan), "max_log_step must be a finite number"),
    ],
)
def test_controller_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EntropyCoefficientController(target=0.0, **kwargs)


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
