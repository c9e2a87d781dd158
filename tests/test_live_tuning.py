"""Live tuning: entropy-control settings taken from a running training's MLflow tags. The schema's live fields per
control mode, the pre-filled tags, what tags ask for and how a refusal reads, without Ray; the controller/learner
mechanics; then a real training (Ray, PyBullet, an MLflow server) changed from outside through the run's tags, resumed,
and through a tracking-server outage."""

import inspect
import json
import re

import gymnasium as gym
import mlflow
import pytest
from ray.rllib.algorithms.ppo import PPOConfig

from entropilot.platform.config import ConfigError, ControlConfig, load_config, parse_config, to_flat_params
from entropilot.platform.live_tuning import (
    LIVE_FIELDS,
    MODE_FIELDS,
    accepted_range,
    config_settings,
    initial_tags,
    live_control,
    live_settings,
    live_tag,
    refusal,
    requested_settings,
)
from entropilot.platform.names import LIVE_ERROR_TAG
from entropilot.platform.run_page import DESCRIPTION_TAG, description, first_charts, run_page_url, start_tags
from entropilot.platform.train import STATE_FILE, prepare_resume, train
from entropilot.policies.entropy_control import EntropyCoefficientController
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner

TARGET = live_tag("target")
SHORTCUT = "entropilot.live.entropy.target"  # the `--set` shortcut entropy.target as a tag name
COEF_MIN = live_tag("coef_min")


def config(**control):
    """The signed tracker unless `mode` says otherwise: its live fields are the most."""
    return parse_config({"entropy": {"control": {"mode": "track", "target": 3.0, **control}}})


HOVER = load_config("configs/hover.yaml")  # lower_bound, target -2, coef_min null (resolved: 0), collapse floor -8
# The hover config as a signed tracker of a schedule, with a collapse floor close below it.
TRACK = parse_config(
    {
        **HOVER.model_dump(mode="json"),
        "entropy": {
            **HOVER.entropy.model_dump(mode="json"),
            "control": {
                **HOVER.entropy.control.model_dump(mode="json"),
                "mode": "track",
                "target": [[0, 4], [400000, 1.5]],
            },
            "collapse": {"floor": -3.0},
        },
    }
)


def refused(cfg, tags):
    """What the tuner says of `tags` on a run of `cfg` with the config's settings in force: (console, chip)."""
    settings = config_settings(cfg)
    requests = {}
    with pytest.raises(ConfigError) as caught:
        requests = requested_settings({**initial_tags(cfg), **tags}, settings, settings, cfg.entropy.control)
        live_control(cfg, {**settings, **{field: typed for field, (_, typed) in requests.items()}})
    return refusal(cfg, settings, requests, caught.value)


# -- the live fields and the tags a run starts with ----------------------------------------------------


def test_live_fields_come_from_the_schema_per_mode_and_the_learner_takes_them_all():
    marked = {
        name: info.json_schema_extra["live"]
        for name, info in ControlConfig.model_fields.items()
        if info.json_schema_extra
    }
    assert list(LIVE_FIELDS) == list(marked) and {"target", "coef", "coef_min", "max_step", "sigma"} <= set(marked)
    assert not {"enabled", "mode"} & set(LIVE_FIELDS)  # they only mean something when a run starts
    assert MODE_FIELDS == {
        "lower_bound": ("target", "coef_min", "coef_max", "gain", "damping", "max_step"),
        "track": ("target", "coef_min", "coef_max", "gain", "damping", "max_step"),
        "fixed": ("coef",),
        "sigma_schedule": ("sigma",),
    }
    # A coefficient controller takes all but sigma (`retune`); a sigma schedule is the learner's own.
    assert set(LIVE_FIELDS) - {"sigma"} <= set(inspect.signature(EntropyCoefficientController.retune).parameters)
    assert all(ControlConfig.model_fields[field].description for field in LIVE_FIELDS)  # the run page says them


def test_a_run_starts_with_the_settings_of_its_mode_as_tags_that_read_back_as_the_config():
    tags = initial_tags(HOVER)
    params = to_flat_params(HOVER)
    assert set(tags) == {live_tag(field) for field in MODE_FIELDS["lower_bound"]}
    assert all(tags[live_tag(field)] == params[f"entropy.control.{field}"] for field in ("target", "coef_max", "gain"))
    # coef_min is null in the config: the tag shows what the mode makes of it.
    assert params["entropy.control.coef_min"] == "null" and tags[COEF_MIN] == "0.0"
    assert initial_tags(TRACK)[COEF_MIN] == "-0.05" and initial_tags(TRACK)[TARGET] == "[[0, 4.0], [400000, 1.5]]"
    for cfg in (HOVER, TRACK, config(mode="fixed", coef=0.01), config(mode="sigma_schedule")):
        assert live_control(cfg, config_settings(cfg)).model_dump() == {
            **cfg.entropy.control.model_dump(),
            "coef_min": live_control(cfg, config_settings(cfg)).coef_min,
        }
        assert live_settings(live_control(cfg, config_settings(cfg))) == live_settings(cfg.entropy.control)
    assert initial_tags(config(mode="fixed", coef=0.01)) == {live_tag("coef"): "0.01"}
    assert initial_tags(config(mode="sigma_schedule")) == {live_tag("sigma"): "[[0, 1.0], [400000, 0.3]]"}
    sac = parse_config({"algorithm": {"name": "SAC"}})
    assert initial_tags(sac) == {} and start_tags(sac) == {}  # SAC tunes its own temperature: nothing is live


def test_the_run_description_says_what_each_setting_of_the_mode_does_accepts_and_how_fast_it_acts():
    text = description(HOVER)
    assert start_tags(HOVER) == {**initial_tags(HOVER), DESCRIPTION_TAG: text}
    for field in LIVE_FIELDS:
        said = f"| `{field}`" in text and ControlConfig.model_fields[field].description in text
        assert said == (field in MODE_FIELDS["lower_bound"])
    assert "`entropy.control.mode` (lower_bound)" in text
    assert f"`{SHORTCUT}`" in text  # the shortcut is accepted too
    assert "| `coef_min` | `0.0` |" in text and "-1.0 <= coef_min <= 1.0" in text and "0.0 < gain <= 1.0" in text
    assert "at most `max_step` (0.005) per iteration" in text and "[0, 0.05]" in text
    assert "redrawn every 20 iterations" in text and LIVE_ERROR_TAG in text
    assert "| `coef_min` | `-0.05` |" in description(TRACK) and "[-0.05, 0.05]" in description(TRACK)
    fixed = description(config(mode="fixed", coef=0.01))
    assert "| `coef` | `0.01` |" in fixed and "`target`" not in fixed and "max_step" not in fixed
    assert "| `sigma` | `[[0, 1.0], [400000, 0.3]]` |" in description(config(mode="sigma_schedule"))


def test_metrics_laid_out_first_and_the_run_link():
    assert first_charts({"entropy": 5.0, "entropy_target": 4.0, "entropy_coeff": -0.01, "kl": 0.1}) == {
        "entropy/measured": 5.0,
        "entropy/target": 4.0,
        "entropy/coefficient": -0.01,
    }
    assert first_charts({"sigma_target": 0.5}) == {"entropy/sigma": 0.5}
    assert (
        run_page_url("http://mlflow:5000/", "3", "abc", "model-metrics")
        == "http://mlflow:5000/#/experiments/3/runs/abc/model-metrics?workflowType=machine_learning"
    )
    assert run_page_url("sqlite:///mlflow.db", "1", "abc").startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc")


# -- what the tags ask for -----------------------------------------------------------------------------


def test_live_settings_become_config_values():
    control = live_control(config(), {"target": "[[0, 3], [200000, 1.5]]", "coef_min": "-0.01", "gain": "0.004"})
    assert control.target == [(0, 3.0), (200_000, 1.5)]
    assert (control.coef_min, control.gain) == (-0.01, 0.004)
    assert (control.coef_max, control.damping, control.max_step) == (0.05, 0.08, 0.005)  # the config's
    assert live_control(config(), {}) == config().entropy.control


def test_live_bounds_may_exclude_the_starting_coef():
    # coef only sets where a lower_bound or track run starts; the running coefficient is clamped into live bounds.
    control = live_control(config(coef=0.0), {"coef_min": "0.01", "coef_max": "0.02"})
    assert (control.coef_min, control.coef_max) == (0.01, 0.02)
    # PyYAML reads 1e-3 as a string; the schema still takes it as a number, and so does the clamp.
    assert live_control(config(coef=0.0), {"coef_min": "1e-3"}).coef_min == 0.001
    # The bound a null coef_min resolves to (0 in lower_bound) is clamped against too.
    assert live_control(config(mode="lower_bound", coef=0.0), {"coef_max": "0.02"}).coef_max == 0.02


def test_a_live_sigma_need_not_start_where_the_run_did():
    # model.initial_std must equal the sigma schedule's start when a run starts; a running one is past it.
    cfg = parse_config({"model": {"initial_std": 1.0}, "entropy": {"control": {"mode": "sigma_schedule"}}})
    assert live_control(cfg, {"sigma": "[[0, 0.5], [1000, 0.2]]"}).sigma == [(0, 0.5), (1000, 0.2)]


@pytest.mark.parametrize(
    "mode, settings, expected",
    [
        ("fixed", {"coef": "0.02"}, {"coef": 0.02}),
        ("sigma_schedule", {"sigma": "[[0, 0.4], [1000, 0.2]]"}, {"sigma": [(0, 0.4), (1000, 0.2)]}),
        ("lower_bound", {"target": "1.5", "coef_min": "0.001"}, {"target": 1.5, "coef_min": 0.001}),
        ("track", {"coef_min": "-0.02"}, {"coef_min": -0.02}),
    ],
)
def test_each_mode_takes_its_own_live_fields(mode, settings, expected):
    control = live_control(config(mode=mode), settings)
    assert {field: getattr(control, field) for field in expected} == expected
    retuned = live_settings(control)  # what the learners get
    assert set(retuned) == set(MODE_FIELDS[mode]) and all(retuned[k] == v for k, v in expected.items())
    # A null coef_min reaches the learners resolved for the mode.
    assert live_settings(config(mode=mode).entropy.control).get("coef_min", 0.0) in (0.0, -0.05)


def test_a_tag_asks_when_its_text_differs_from_the_setting_in_force():
    settings = config_settings(TRACK)
    control = TRACK.entropy.control
    tags = {**initial_tags(TRACK), "mlflow.user": "someone"}
    assert requested_settings(tags, settings, settings, control) == {}  # the pre-filled tags ask for nothing
    assert requested_settings({**tags, TARGET: "3.5"}, settings, settings, control) == {"target": (TARGET, "3.5")}
    # The shortcut works beside the pre-filled tag: the tag that differs from what is in force is the one asking.
    assert requested_settings({**tags, SHORTCUT: "3.5"}, settings, settings, control) == {"target": (SHORTCUT, "3.5")}
    in_force = {**settings, "target": "3.5"}
    synced = {**tags, TARGET: "3.5", SHORTCUT: "3.5"}
    assert requested_settings(synced, in_force, settings, control) == {}
    assert requested_settings({**synced, TARGET: "2"}, in_force, settings, control) == {"target": (TARGET, "2")}
    # Every tag of a field removed: back to the config's value; one of them left: it holds.
    without_target = {k: v for k, v in synced.items() if "target" not in k}
    assert requested_settings(without_target, in_force, settings, control) == {"target": (None, settings["target"])}
    assert requested_settings({k: v for k, v in synced.items() if k != TARGET}, in_force, settings, control) == {}
    with pytest.raises(ConfigError, match=rf"{re.escape(TARGET)} and {re.escape(SHORTCUT)}: differ"):
        requested_settings({**tags, TARGET: "2", SHORTCUT: "3"}, settings, settings, control)


@pytest.mark.parametrize(
    "tag, text",
    [("entropilot.live.entropy.control.coef_init", "0.01"), ("entropilot.live.entropy.control.targt", "2")],
)
def test_a_tag_that_is_no_live_setting_is_refused(tag, text):
    console, chip = refused(TRACK, {tag: text})
    field = tag.rsplit(".", 1)[-1]
    live = "target, coef_min, coef_max, gain, damping, max_step"
    assert console == f"{tag} = {text}: not a live setting; live in entropy.control.mode track: {live}"
    assert chip == f"{field}={text}: not a live setting"


@pytest.mark.parametrize(
    "mode, field, live_there",
    [
        ("fixed", "target", "coef"),
        ("lower_bound", "sigma", "target, coef_min, coef_max, gain, damping, max_step"),
        ("track", "coef", "target, coef_min, coef_max, gain, damping, max_step"),
        ("sigma_schedule", "coef_min", "sigma"),
    ],
)
def test_a_field_the_mode_does_not_use_is_refused(mode, field, live_there):
    console, chip = refused(config(mode=mode), {live_tag(field): "0.01"})
    rule = f"not used in entropy.control.mode {mode} (live there: {live_there})"
    assert console == f"{live_tag(field)} = 0.01: {rule}"
    assert chip == f"{field}=0.01: {rule}"


def test_live_tags_need_entropy_control():
    sac = parse_config({"algorithm": {"name": "SAC"}})
    with pytest.raises(ConfigError, match=rf"{re.escape(TARGET)}: entropy control is off in this run"):
        requested_settings({TARGET: "2.0"}, config_settings(sac), config_settings(sac), sac.entropy.control)


# -- how a refusal reads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, tag, text, console, chip",
    [
        # The collapse floor's rule, stated about the target the person typed (not about entropy.collapse.floor).
        (TRACK, TARGET, "-4", "must be above entropy.collapse.floor (-3.0)", "target=-4: needs (-3, 5.67576)"),
        (TRACK, SHORTCUT, "-4", "must be above entropy.collapse.floor (-3.0)", "target=-4: needs (-3, 5.67576)"),
        (HOVER, TARGET, "-9", "must be above entropy.collapse.floor (-8.0)", "target=-9: needs (-8, 5.67576)"),
        (
            TRACK,
            TARGET,
            "[[0, 3], [100, -5]]",
            "[1] must be above entropy.collapse.floor (-3.0) (got [100, -5.0])",
            "target=[[0, 3], [100, -5]]: [1] must be above entropy.collapse.floor (-3.0)",
        ),
        # Above what the effective entropy of Box(4) can reach.
        (TRACK, TARGET, "6", "unreachable: the effective entropy of", "target=6: needs (-3, 5.67576)"),
        (
            TRACK,
            TARGET,
            "[[5, 3]]",
            "[0] schedule must start at env step 0 (got [5, 3])",
            "target=[[5, 3]]: [0] schedule must start at env step 0",
        ),
        (TRACK, COEF_MIN, "0.5", "must be <= coef_max (0.05)", "coef_min=0.5: needs [-1, 0.05]"),
        (TRACK, live_tag("coef_max"), "-0.1", "must be >= coef_min (-0.05)", "coef_max=-0.1: needs [-0.05, 1]"),
        # A penalty needs mode track: in lower_bound coef_min stays at or above 0.
        (HOVER, COEF_MIN, "-0.01", "a lower_bound controller never goes below zero", "coef_min=-0.01: needs [0, 0.05]"),
        (
            TRACK,
            live_tag("gain"),
            "2",
            "Input should be less than or equal to 1; allowed: 0.0 < value <= 1.0",
            "gain=2: needs (0, 1]",
        ),
        (TRACK, live_tag("gain"), "abc", "Input should be a valid number", "gain=abc: needs a number in (0, 1]"),
        (TRACK, live_tag("max_step"), "0", "allowed: 0.0 < value <= 1.0", "max_step=0: needs (0, 1]"),
        (
            TRACK,
            live_tag("damping"),
            "[1",
            "not valid YAML: expected ',' or ']'",
            "damping=[1: needs a number in [0, 1]",
        ),
        (config(mode="fixed"), live_tag("coef"), "2", "allowed: -1.0 <= value <= 1.0", "coef=2: needs [-1, 1]"),
        (
            config(mode="sigma_schedule"),
            live_tag("sigma"),
            "0",
            "every std must be in (0, 100] action half-widths",
            "sigma=0: needs (0, 100]",
        ),
    ],
)
def test_a_refused_value_is_explained_under_the_tag_and_text_typed(cfg, tag, text, console, chip):
    said, shown = refused(cfg, {tag: text})
    assert said.startswith(f"{tag} = {text}: ") and console in said
    assert shown == chip


def test_accepted_range_asks_the_schema_with_the_settings_in_force():
    settings = config_settings(TRACK)
    assert accepted_range(TRACK, settings, "target") == "(-3, 5.67576)"  # each value of the schedule
    assert accepted_range(TRACK, settings, "coef_min") == "[-1, 0.05]"
    assert accepted_range(TRACK, {**settings, "coef_max": "0.0123"}, "coef_min") == "[-1, 0.0123]"
    assert accepted_range(TRACK, settings, "gain") == "(0, 1]"
    assert accepted_range(HOVER, config_settings(HOVER), "coef_min") == "[0, 0.05]"  # no penalty in lower_bound
    assert accepted_range(config(), config_settings(config()), "target") == "(-8, 5.67576)"  # the default floor


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
            # Sampling in the driver: live tuning acts on the learner and needs no runner actor, whose start
            # (~3.5 s on a busy 2-core box) was most of a tiny run's time.
            "resources": {"num_env_runners": 0, "envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
            "mlflow": {"tracking_uri": uri, "experiment": "test-live-tuning", "video": False, "system_metrics": False},
            "stop": {"iterations": iterations},
            "evaluation": {"interval": None},
            "checkpoint": {"interval": 2, "dir": str(tmp_path / "runs")},
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


def test_tags_set_during_training_retune_it_and_survive_resume(tmp_path, mlflow_server_process, isolated_mlflow_env):
    client = mlflow.MlflowClient(mlflow_server_process.uri)
    cfg = tiny_config(tmp_path, mlflow_server_process.uri, iterations=3)
    seen = {}

    def run_id():  # the running training, as the UI lists it (its experiment exists once training started)
        experiment = client.get_experiment_by_name("test-live-tuning")
        return client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")[0].info.run_id

    def look(iteration):  # what a person sees on the run's page after that iteration's console line
        run = client.get_run(run_id())
        seen[iteration] = (run.data.tags, [artifact.path for artifact in client.list_artifacts(run_id(), "plots")])

    user = User(
        {
            after(1): lambda: (look(1), client.set_tag(run_id(), SHORTCUT, "2.0")),  # the --set shortcut's name
            after(2): lambda: client.set_tag(run_id(), COEF_MIN, "0.5"),  # above coef_max 0.05: refused
            after(3): lambda: look(3),
        }
    )
    first = train(cfg, echo=user.echo)

    experiment = client.get_experiment_by_name("test-live-tuning")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training kind
    url = f"{mlflow_server_process.uri}/#/experiments/{experiment.experiment_id}/runs/{first.run_id}"
    assert f"MLflow run {first.run_id}: {url}?workflowType=machine_learning" in user.lines
    # From the start the run shows every live setting with its value, and says how to use them.
    tags, plots = seen[1]
    assert initial_tags(cfg).items() <= tags.items() and tags[COEF_MIN] == "-0.05" and tags[TARGET] == "3.0"
    assert tags[DESCRIPTION_TAG] == description(cfg) and plots == []
    # Plots are drawn at each checkpoint (every 2 iterations here), not only at the end.
    assert seen[3][1] == ["plots/entropy.png", "plots/learning.png"]
    assert client.get_run(first.run_id).data.tags[TARGET] == "2.0"  # the pre-filled tag shows what the shortcut set

    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(first.run_id, key)]  # noqa: E731
    assert history("entropy_target") == [(1, 3.0), (2, 2.0), (3, 2.0)]  # the learners' own target
    assert history("live/target") == history("entropy/target") == history("entropy_target")  # one value, one moment
    assert history("entropy/measured") == history("entropy")
    assert f"live: entropy.control.target 3 → 2 (from MLflow tag {SHORTCUT}) at iteration 2" in user.lines
    warnings = [line for line in user.lines if line.startswith("WARNING: live settings not applied")]
    assert warnings == [
        f"WARNING: live settings not applied at iteration 3, the ones in force stay: "
        f"{COEF_MIN} = 0.5: must be <= coef_max (0.05)"
    ]
    assert client.get_run(first.run_id).data.tags[LIVE_ERROR_TAG] == "coef_min=0.5: needs [-1, 0.05]"
    assert history("live/coef_min") == [(1, -0.05), (2, -0.05), (3, -0.05)]  # a point per iteration: steps
    coefficients = [value for _, value in history("entropy_coeff")]
    assert coefficients[-1] < -0.005  # the controller is pushing entropy down: bounds ahead will clamp it
    state = json.loads((first.checkpoint / STATE_FILE).read_text())
    assert state["live_tags"] == {**initial_tags(cfg), TARGET: "2.0"}

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
    assert history("live/coef_min")[3:] == [(4, -0.005), (5, -0.05), (6, -0.05)]
    # Clamped into the new bound at once and held there by the target far below; free again once it is removed.
    coefficients = dict(history("entropy_coeff"))
    assert coefficients[4] == -0.005 and coefficients[5] < -0.005 and coefficients[6] < coefficients[5]
    assert [step for step, _ in history("entropy")] == [1, 2, 3, 4, 5, 6]  # iteration 6 trained through the outage
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[LIVE_ERROR_TAG] == "none since iteration 4"
    assert run.data.tags[COEF_MIN] == "-0.05"  # the removed tag is back, with the value in force
    assert run.data.params["entropy.control.target"] == "3.0"  # params keep describing the original config
