"""Live tuning: entropy-control settings taken from a running training's MLflow tags. Validation and the
controller/learner mechanics without Ray; then a real training (Ray, PyBullet, an MLflow server) changed
from outside through the run's tags, resumed, and through a tracking-server outage."""

import json
import re

import gymnasium as gym
import mlflow
import pytest
from ray.rllib.algorithms.ppo import PPOConfig

from entropilot.platform.config import ConfigError, parse_config
from entropilot.platform.live_tuning import ERROR_TAG, MODE_FIELDS, live_control, live_settings, live_tag
from entropilot.platform.train import STATE_FILE, prepare_resume, train
from entropilot.policies.entropy_control import EntropyCoefficientController
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner

TARGET = live_tag("target")
COEF_MIN = live_tag("coef_min")


def config(**control):
    """The signed tracker unless `mode` says otherwise: its live fields are the most."""
    return parse_config({"entropy": {"control": {"mode": "track", "target": 3.0, **control}}})


# -- validation ---------------------------------------------------------------------------------------


def test_live_tags_become_config_values():
    control = live_control(
        config(),
        {TARGET: "[[0, 3], [200000, 1.5]]", COEF_MIN: "-0.01", live_tag("gain"): "0.004", "mlflow.user": "someone"},
    )
    assert control.target == [(0, 3.0), (200_000, 1.5)]
    assert (control.coef_min, control.gain) == (-0.01, 0.004)
    assert (control.coef_max, control.damping, control.max_step) == (0.05, 0.08, 0.005)  # the config's
    assert live_control(config(), {}) == config().entropy.control


def test_live_bounds_may_exclude_the_starting_coef():
    # coef only sets where a lower_bound or track run starts; the running coefficient is clamped into live bounds.
    control = live_control(config(coef=0.0), {COEF_MIN: "0.01", live_tag("coef_max"): "0.02"})
    assert (control.coef_min, control.coef_max) == (0.01, 0.02)
    # PyYAML reads 1e-3 as a string; the schema still takes it as a number, and so does the clamp.
    assert live_control(config(coef=0.0), {COEF_MIN: "1e-3"}).coef_min == 0.001


@pytest.mark.parametrize(
    "mode, tags, expected",
    [
        ("fixed", {live_tag("coef"): "0.02"}, {"coef": 0.02}),
        ("sigma_schedule", {live_tag("sigma"): "[[0, 0.4], [1000, 0.2]]"}, {"sigma": [(0, 0.4), (1000, 0.2)]}),
        ("lower_bound", {TARGET: "1.5", COEF_MIN: "0.001"}, {"target": 1.5, "coef_min": 0.001}),
    ],
)
def test_each_mode_takes_its_own_live_fields(mode, tags, expected):
    control = live_control(config(mode=mode), tags)
    assert {field: getattr(control, field) for field in expected} == expected
    settings = live_settings(control)
    assert set(settings) == set(MODE_FIELDS[mode]) and all(settings[k] == v for k, v in expected.items())


@pytest.mark.parametrize(
    "mode, tag, why",
    [
        ("fixed", TARGET, rf"not used in entropy.control.mode fixed; live there: {re.escape(live_tag('coef'))}"),
        ("lower_bound", live_tag("sigma"), "not used in entropy.control.mode lower_bound"),
        ("sigma_schedule", COEF_MIN, rf"not used .*; live there: {re.escape(live_tag('sigma'))} \(got"),
    ],
)
def test_a_field_the_mode_does_not_use_is_refused(mode, tag, why):
    with pytest.raises(ConfigError, match=rf"{re.escape(tag)}: {why}"):
        live_control(config(mode=mode), {tag: "0.01"})


def test_a_lower_bound_refuses_a_live_penalty():
    with pytest.raises(ConfigError, match=rf"{re.escape(COEF_MIN)}: a lower_bound controller never goes below zero"):
        live_control(config(mode="lower_bound"), {COEF_MIN: "-0.01"})


@pytest.mark.parametrize(
    "tags, where, why",
    [
        ({COEF_MIN: "0.5"}, COEF_MIN, r"must be <= coef_max \(0.05\) \(got 0.5\)"),
        ({COEF_MIN: "0.01", live_tag("coef_max"): "0.005"}, COEF_MIN, r"must be <= coef_max \(0.005\) \(got 0.01\)"),
        ({live_tag("gain"): "abc"}, live_tag("gain"), r"Input should be a valid number.*\(got 'abc'\)"),
        (
            {live_tag("gain"): "2"},
            live_tag("gain"),
            r"Input should be less than or equal to 1; allowed: 0.0 < value <= 1.0 \(got 2\)",
        ),
        ({live_tag("damping"): "[1"}, live_tag("damping"), r"not valid YAML/JSON: expected ',' or ']'.* \(got '\[1'\)"),
        ({TARGET: "[[5, 3]]"}, TARGET, r"schedule must start at env step 0 \(got \[5, 3\]\)"),
        ({TARGET: "[[0, 3], [0, 2]]"}, TARGET, r"schedule env steps must be strictly increasing \(got \[0, 2\]\)"),
        # A target under the collapse floor would make every iteration a "collapse".
        ({TARGET: "-9"}, "entropy.collapse.floor", r"must be below the lowest entropy.control.target \(-9.0\)"),
        (
            {"entropilot.live.entropy.target": "2"},
            "entropilot.live.entropy.target",
            rf"not a live setting; allowed: {TARGET}, .* \(got '2'\)",
        ),
        ({live_tag("coef_init"): "0.01"}, live_tag("coef_init"), "not a live setting"),
        ({live_tag("coef"): "0.01"}, live_tag("coef"), "not used in entropy.control.mode track"),
        # Above what the effective entropy of Box(4) can reach.
        ({TARGET: "6"}, TARGET, r"unreachable: .* lies in \[-21.96, 5.68\] nats"),
    ],
)
def test_bad_live_tags_are_named_with_value_and_reason(tags, where, why):
    with pytest.raises(ConfigError, match=rf"MLflow live tags\):\n  - {re.escape(where)}: {why}"):
        live_control(config(), tags)


def test_live_tags_need_entropy_control():
    sac = parse_config({"algorithm": {"name": "SAC"}})
    with pytest.raises(ConfigError, match=rf"{re.escape(TARGET)}: entropy control is off in this run"):
        live_control(sac, {TARGET: "2.0"})


# -- the controller and the learner -------------------------------------------------------------------


def test_retune_keeps_the_integrator_state():
    controller = EntropyCoefficientController(target=3.0, mode="track", gain=0.01, damping=0.05)
    for steps, measured in ((0, 5.0), (100, 4.8), (200, 4.7)):
        controller.update(measured, steps)
    before = controller.state_dict()
    controller.retune(target=[[0, 2.0], [1000, 1.0]], gain=0.02, max_step=1.0)
    assert controller.state_dict() == before
    assert controller.target(500) == 1.5
    # The next step is the PI increment with the new settings and the old last error.
    error = 1.5 - 4.6
    expected = before["coef"] + 0.02 * error + 0.05 * (error - before["last_error"])
    assert controller.update(4.6, 500) == pytest.approx(max(expected, -0.05))


def test_retune_clamps_the_coefficient_and_rejects_bad_settings_whole():
    controller = EntropyCoefficientController(target=3.0, mode="track", initial_coef=-0.04)
    controller.retune(coef_min=-0.01)
    assert controller.coefficient == -0.01
    before = controller.state_dict()
    with pytest.raises(ValueError, match="need coef_min <= coef_max; got coef_min=-0.01, coef_max=-0.02"):
        controller.retune(target=1.0, coef_max=-0.02)
    assert controller.state_dict() == before and controller.target(0) == 3.0  # nothing half-applied
    with pytest.raises(ValueError, match="gain must be > 0"):
        controller.retune(gain=0.0)


def test_learner_keeps_live_settings_in_its_state():
    env = gym.make("Pendulum-v1")
    ppo = (
        PPOConfig()
        .environment("Pendulum-v1")
        .learners(learner_class=EntropyControlledPPOLearner, learner_config_dict={"entropy_control": {"target": 1.0}})
    )

    def controller(learner):
        return learner.entropy_coeff_schedulers_per_module["default_policy"].controller

    learner = ppo.build_learner(env=env)
    original = learner.get_state()
    learner.retune_entropy_control({"target": [[0, 2.0], [100, 1.0]], "coef_min": 0.01})
    assert controller(learner).target(50) == 1.5 and controller(learner).coefficient == 0.01
    retuned = learner.get_state()

    fresh = ppo.build_learner(env=env)
    fresh.set_state(retuned)
    assert controller(fresh).target(50) == 1.5 and controller(fresh).state_dict() == controller(learner).state_dict()
    # Restoring a state from before the retune brings back the config's settings.
    fresh.set_state(original)
    assert controller(fresh).target(50) == 1.0 and controller(fresh).coefficient == 0.0
    with pytest.raises(ValueError, match="need coef_min <= coef_max"):
        fresh.retune_entropy_control({"coef_min": 0.5})


# -- a real training tuned from outside ---------------------------------------------------------------


def tiny_config(tmp_path, uri, iterations):
    return parse_config(
        {
            "name": "live-tuning",
            "env": {"id": "entropilot/Hover-v0", "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
            "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
            # Far below a fresh policy's ~4.35 effective nats: the signed tracker steps the coefficient down at
            # max_step each iteration.
            "entropy": {"init": {"enabled": False}, "control": {"mode": "track", "target": 3.0}},
            "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
            "mlflow": {"tracking_uri": uri, "experiment": "test-live-tuning", "video": False, "system_metrics": False},
            "stop": {"iterations": iterations},
            "evaluation": {"interval": None},
            "checkpoint": {"interval": None, "dir": str(tmp_path / "runs")},
        }
    )


class User:
    """Acts while training runs, like a person in the MLflow UI: `at[prefix]()` runs when a console line starts
    with `prefix` (`after(i)`: iteration i's progress line)."""

    def __init__(self, at):
        self.at = at
        self.lines = []

    def echo(self, line):
        self.lines.append(line)
        for prefix, act in self.at.items():
            if line.startswith(prefix):
                act()


def after(iteration):
    return f"iter {iteration:4d} "


def test_tags_set_during_training_retune_it_and_survive_resume(
    tmp_path, mlflow_server_process, isolated_mlflow_env, ray_session
):
    client = mlflow.MlflowClient(mlflow_server_process.uri)

    def run_id():  # the running training, as the UI lists it (its experiment exists once training started)
        experiment = client.get_experiment_by_name("test-live-tuning")
        return client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")[0].info.run_id

    user = User(
        {
            after(1): lambda: client.set_tag(run_id(), TARGET, "2.0"),
            after(2): lambda: client.set_tag(run_id(), COEF_MIN, "0.5"),
        }
    )  # above coef_max 0.05: rejected
    first = train(tiny_config(tmp_path, mlflow_server_process.uri, iterations=3), echo=user.echo)

    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(first.run_id, key)]  # noqa: E731
    assert history("entropy_target") == [(1, 3.0), (2, 2.0), (3, 2.0)]  # the learners' own target
    assert history("live/target") == [(2, 2.0)]
    assert f"live: entropy.control.target 3 → 2 (from MLflow tag {TARGET}) at iteration 2" in user.lines
    error = f"{COEF_MIN}: must be <= coef_max (0.05) (got 0.5)"
    warnings = [line for line in user.lines if line.startswith("WARNING: live settings not applied")]
    assert warnings == [f"WARNING: live settings not applied at iteration 3, the ones in force stay: {error}"]
    assert client.get_run(first.run_id).data.tags[ERROR_TAG] == f"iteration 3: {error}"
    assert history("live/coef_min") == []
    coefficients = [value for _, value in history("entropy_coeff")]
    assert coefficients[-1] < -0.005  # the controller is pushing entropy down: bounds ahead will clamp it
    state = json.loads((first.checkpoint / STATE_FILE).read_text())
    assert state["live_tags"] == {TARGET: "2.0"}

    # The user fixes the bad value, then the run resumes; then removes the tag again; then the tracking server
    # goes away until training ends.
    client.set_tag(first.run_id, COEF_MIN, "-0.005")
    user = User(
        {
            after(4): lambda: client.delete_tag(first.run_id, COEF_MIN),
            after(5): mlflow_server_process.stop,
            "stopped:": mlflow_server_process.start,
        }
    )
    cfg, checkpoint, overrides = prepare_resume(str(first.checkpoint.parent), ["stop.iterations=6"])
    resumed = train(cfg, resume=checkpoint, echo=user.echo, resumed_with=overrides)
    assert resumed.run_id == first.run_id and resumed.iterations == 6

    assert history("entropy_target")[3:] == [(4, 2.0), (5, 2.0), (6, 2.0)]  # from the checkpoint, not re-applied
    assert not any("entropy.control.target" in line for line in user.lines)
    live_lines = [line for line in user.lines if line.startswith("live:")]
    assert live_lines == [
        f"live: entropy.control.coef_min -0.05 → -0.005 (from MLflow tag {COEF_MIN}) at iteration 4",
        f"live: entropy.control.coef_min -0.005 → -0.05 (tag {COEF_MIN} removed: the config's value) at iteration 5",
    ]
    assert history("live/coef_min") == [(4, -0.005), (5, -0.05)]
    # Clamped into the new bound at once and held there by the target far below; free again once it is removed.
    coefficients = dict(history("entropy_coeff"))
    assert coefficients[4] == -0.005 and coefficients[5] < -0.005 and coefficients[6] < coefficients[5]
    assert [step for step, _ in history("entropy")] == [1, 2, 3, 4, 5, 6]  # iteration 6 trained through the outage
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[ERROR_TAG] == "none since iteration 4"
    assert run.data.params["entropy.control.target"] == "3.0"  # params keep describing the original config
