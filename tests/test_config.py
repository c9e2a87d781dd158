"""Tests of the experiment configuration: defaults, ready YAML files, overrides, errors, round trips."""

import subprocess
import sys
from pathlib import Path

import pytest

from entropilot.platform import config as config_module
from entropilot.platform.config import (
    RESUMABLE_SECTION,
    ConfigError,
    ExperimentConfig,
    dump_config,
    from_flat_params,
    load_config,
    parse_config,
    read_yaml,
    to_flat_params,
    with_overrides,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _error(data=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data or {}, overrides)
    return str(info.value)


def test_defaults_are_valid_and_laptop_sized():
    cfg = ExperimentConfig()
    assert cfg.algorithm.name == "PPO"
    assert (cfg.algorithm.train_batch_size, cfg.algorithm.minibatch_size, cfg.algorithm.num_epochs) == (2000, 256, 10)
    assert cfg.model.hidden == [64, 64]
    assert cfg.resources.num_env_runners == 1 and cfg.resources.envs_per_runner == 4
    assert cfg.entropy.control.enabled is True  # resolved: on for PPO
    assert cfg.stop.time_s == 900.0
    assert cfg.checkpoint_dir == Path("runs/experiment")
    assert load_config(None) == cfg


def test_sac_turns_entropy_control_off_by_default():
    cfg = parse_config({"algorithm": {"name": "SAC"}})
    assert cfg.entropy.control.enabled is False


@pytest.mark.parametrize("name", ["hover", "waypoint", "swarm"])
def test_ready_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.env.id == f"entropilot/{name.capitalize()}-v0"


def test_hover_is_small_and_fast():
    cfg = load_config(CONFIGS / "hover.yaml")
    assert cfg.algorithm.name == "PPO" and cfg.env.kwargs["action_mode"] == "ctbr"
    assert (cfg.algorithm.train_batch_size, cfg.algorithm.minibatch_size, cfg.algorithm.num_epochs) == (4000, 512, 10)
    r = cfg.resources
    assert (r.num_env_runners, r.envs_per_runner, r.sampler, r.vector_env) == (0, 8, "bulk", "batched")
    assert (cfg.algorithm.kl_coeff, cfg.algorithm.vf_clip, cfg.model.output_gain) == (0.0, None, 0.01)
    # flight-ready stop: a 200-episode evaluation with no crash and a success lower bound >= 0.95
    assert (cfg.stop.success_lower_bound, cfg.stop.max_crashes, cfg.evaluation.episodes) == (0.95, 0, 200)
    assert cfg.stop.time_s <= 900 and cfg.checkpoint.keep_best


def test_overrides_scalars_lists_nested_and_shortcut():
    cfg = load_config(
        CONFIGS / "hover.yaml",
        [
            "algorithm.lr=1e-3",
            "model.hidden=[128,128]",
            "env.kwargs.action_mode=motors",
            "env.kwargs.wind.gust_std=0.5",
            "mlflow.video=true",
            "stop.iterations=3",
            "entropy.target=1.2",
            "entropy.init_threshold=-3.5",
            "checkpoint.dir=null",
        ],
    )
    assert cfg.algorithm.lr == 1e-3
    assert cfg.model.hidden == [128, 128]
    assert cfg.env.kwargs["action_mode"] == "motors"
    assert cfg.env.kwargs["wind"] == {"mean": [0.0, 0.0, 0.0], "gust_std": 0.5}
    assert cfg.mlflow.video is True
    assert cfg.stop.iterations == 3 and cfg.stop.success_lower_bound == 0.95
    assert cfg.entropy.control.target == 1.2 and cfg.entropy.init.threshold == -3.5
    assert cfg.checkpoint.dir is None


def test_override_schedule_and_on_off_words():
    cfg = parse_config(
        {}, ["entropy.control.target=[[0, 3], [1000, 1]]", "resources.gpu=off", "entropy.covariance.mode=off"]
    )
    assert cfg.entropy.control.target == [(0, 3.0), (1000, 1.0)]
    assert cfg.entropy.control.target_at(500) == pytest.approx(2.0)
    assert cfg.entropy.control.target_at(10**6) == 1.0
    assert cfg.resources.gpu == "off" and cfg.entropy.covariance.mode == "off"


def test_unknown_override_path_names_path_and_valid_keys():
    message = _error(overrides=["entropy.contrl.target=1"])
    assert "entropy.contrl" in message
    assert "collapse, control, covariance, init" in message
    assert "model.hidden" in _error(overrides=["model.hidden.width=3"])
    assert "section.field=value" in _error(overrides=["model.hidden"])


def test_numbers_read_the_same_in_files_overrides_sweeps_and_live_tags(tmp_path):
    # PyYAML's YAML 1.1 reads 1e-1 (no dot) as a string; every way into the config reads it as the number it is.
    path = tmp_path / "exp.yaml"
    path.write_text("entropy:\n  control:\n    target: 1e-1\n")
    assert load_config(path).entropy.control.target == 0.1
    assert parse_config({}, ["entropy.control.target=1e-1"]).entropy.control.target == 0.1
    assert parse_config({}, {"entropy.target": 0.1}).entropy.control.target == 0.1
    assert read_yaml("-2E+3") == -2000.0 and read_yaml("1_000") == 1000 and read_yaml("v1e5") == "v1e5"


def test_problems_are_data_callers_read_without_parsing_text():
    with pytest.raises(ConfigError) as caught:
        parse_config({}, ["algorithm.lr=-1", "algorithm.gama=0.9"])
    problems = caught.value.problems
    assert [problem.path for problem in problems] == ["algorithm.gama"]  # paths are checked before values
    assert "valid keys here" in problems[0].message and problems[0].value == 0.9
    with pytest.raises(ConfigError) as caught:
        parse_config({}, ["algorithm.lr=-1"])
    (problem,) = caught.value.problems
    assert (problem.path, problem.value) == ("algorithm.lr", -1)
    assert "0.0 < value <= 1.0" in problem.message


def test_a_resumed_run_may_change_its_stop_criteria_only():
    cfg = load_config(CONFIGS / "hover.yaml")
    resumed = with_overrides(cfg, ["stop.iterations=40", "stop.time_s=1800"], only=RESUMABLE_SECTION)
    assert (resumed.stop.iterations, resumed.stop.time_s, resumed.stop.success_lower_bound) == (40, 1800.0, 0.95)
    assert resumed.model_dump(exclude={"stop"}) == cfg.model_dump(exclude={"stop"})
    with pytest.raises(ConfigError, match=r"algorithm.lr: only stop.\* may change here"):
        with_overrides(cfg, ["algorithm.lr=1e-3"], only=RESUMABLE_SECTION)
    with pytest.raises(ConfigError, match="stop.iteration: unknown key; valid keys here: env_steps, iterations"):
        with_overrides(cfg, ["stop.iteration=40"], only=RESUMABLE_SECTION)  # a typo is not silently ignored
    with pytest.raises(ConfigError, match=r"stop.time_s: .*greater than 0"):
        with_overrides(cfg, ["stop.time_s=-5"], only=RESUMABLE_SECTION)


def test_unknown_yaml_key_fails(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  hiden: [32]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "model.hiden" in message and "[32]" in message and "hidden" in message
    assert str(path) in message


@pytest.mark.parametrize(
    "override, path, shown",
    [
        ("algorithm.gamma=1.5", "algorithm.gamma", "1.5"),
        ("algorithm.lr=-0.1", "algorithm.lr", "-0.1"),
        ("algorithm.name=DQN", "algorithm.name", "DQN"),
        ("model.activation=gelu", "model.activation", "gelu"),
        ("model.hidden=[64,0]", "model.hidden[1]", "0"),
        ("entropy.init.max_draws=0", "entropy.init.max_draws", "0"),
        ("entropy.covariance.fraction=1.5", "entropy.covariance.fraction", "1.5"),
        ("entropy.covariance.mode=cov", "entropy.covariance.mode", "cov"),
        ("resources.num_cpus_per_env_runner=0", "resources.num_cpus_per_env_runner", "0"),
        ("stop.success_rate=1.2", "stop.success_rate", "1.2"),
        ("mlflow.tracking_uri=./mlruns", "mlflow.tracking_uri", "./mlruns"),
        ("algorithm.target_entropy=lots", "algorithm.target_entropy", "lots"),
        ("name=has space", "name", "has space"),
    ],
)
def test_bad_value_names_field_and_value(override, path, shown):
    message = _error(overrides=[override])
    assert f"{path}:" in message
    assert shown in message


def test_range_errors_show_both_bounds():
    assert "0.0 < value <= 1.0" in _error(overrides=["algorithm.gamma=2"])


@pytest.mark.parametrize(
    "overrides, path, shown",
    [
        (["entropy.control.coef_min=0.2", "entropy.control.coef_max=0.1"], "entropy.control.coef_min", "0.2"),
        (["entropy.control.coef=0.5"], "entropy.control.coef", "0.5"),
        (["entropy.control.target=[[0, 2], [500, 1], [400, 0]]"], "entropy.control.target[2]", "400"),
        (["entropy.control.target=[[10, 2]]"], "entropy.control.target[0]", "10"),
        (["algorithm.minibatch_size=4096"], "algorithm.minibatch_size", "4096"),
        (["algorithm.name=SAC", "entropy.covariance.mode=kl_cov"], "entropy.covariance.mode", "kl_cov"),
        (["algorithm.name=SAC", "entropy.control.enabled=true"], "entropy.control.enabled", "True"),
        (["algorithm.name=SAC", "algorithm.replay_capacity=100"], "algorithm.replay_capacity", "100"),
        (["entropy.collapse.floor=2.0", "entropy.control.target=1.0"], "entropy.collapse.floor", "2.0"),
        (["evaluation.seed=3"], "evaluation.seed", "3"),
    ],
)
def test_bad_cross_field_values_name_field_and_value(overrides, path, shown):
    message = _error(overrides=overrides)
    assert f"{path}:" in message
    assert shown in message


# ------------------------------------------------------------------------- entropy.control


def _controller_from(control, measure="effective"):
    """The controller as `entropy.control` configures it (the mapping the PPO learner uses)."""
    from entropilot.policies.entropy_control import EntropyCoefficientController

    settings = control.controller_settings(measure)
    assert settings.pop("measure") == measure
    return EntropyCoefficientController(**settings)


def test_control_defaults_match_the_controller():
    import inspect

    from entropilot.policies.entropy_control import DEFAULT_COEF_MIN, EntropyCoefficientController

    defaults = {k: p.default for k, p in inspect.signature(EntropyCoefficientController).parameters.items()}
    control = ExperimentConfig().entropy.control
    assert control.mode == defaults["mode"] == "lower_bound"  # the safe default: never an entropy penalty
    assert (control.coef, control.resolved_coef_min, control.coef_max) == (
        defaults["initial_coef"],
        DEFAULT_COEF_MIN["lower_bound"],
        defaults["coef_max"],
    )
    assert (control.gain, control.damping, control.max_step) == (
        defaults["gain"],
        defaults["damping"],
        defaults["max_step"],
    )
    assert (
        parse_config({}, ["entropy.control.mode=track"]).entropy.control.resolved_coef_min == DEFAULT_COEF_MIN["track"]
    )


def test_track_mode_accepts_negative_coefficients():
    cfg = parse_config(
        {},
        [
            "entropy.control.mode=track",
            "entropy.control.coef_min=-0.2",
            "entropy.control.coef=-0.1",
            "entropy.control.coef_max=-0.01",
            "entropy.control.damping=0",
        ],
    )
    control = cfg.entropy.control
    assert (control.coef_min, control.coef, control.coef_max, control.damping) == (-0.2, -0.1, -0.01, 0.0)
    assert _controller_from(control).coefficient == -0.1
    assert from_flat_params(to_flat_params(cfg)) == cfg


@pytest.mark.parametrize("mode", ["fixed", "sigma_schedule"])
def test_each_mode_is_one_config_line(mode):
    cfg = parse_config({}, [f"entropy.control.mode={mode}"])
    settings = cfg.entropy.control.controller_settings("effective")
    assert settings["mode"] == mode
    if mode == "fixed":
        assert settings["target"] is None and settings["initial_coef"] == 0.0
    else:
        assert settings["sigma"] == [(0, 1.0), (400_000, 0.3)] and cfg.initial_std == 1.0


@pytest.mark.parametrize("name", ["hover", "waypoint"])
def test_ready_configs_control_with_a_reachable_lower_bound(name):
    from entropilot.envs import action_space
    from entropilot.policies.entropy_range import measure_range

    cfg = load_config(CONFIGS / f"{name}.yaml")
    control = cfg.entropy.control
    assert control.mode == "lower_bound" and cfg.entropy.measure == "effective"
    low, high = measure_range("effective", action_space(cfg.env.id, cfg.env.kwargs))
    assert low < control.min_target() <= control.max_target() < high
    assert low < cfg.entropy.init.threshold < high
    controller = _controller_from(control)
    # Far above the minimum (a std-1 start) or far below: the coefficient never goes negative.
    assert controller.update(4.35, env_steps=0) == 0.0 and controller.update(-20.0, env_steps=1) > 0


@pytest.mark.parametrize(
    "overrides, path, shown",
    [
        # The effective entropy of Box(4) lies in [-21.96, 5.68] nats: the message gives the range.
        (
            ["entropy.init.threshold=6"],
            "entropy.init.threshold",
            r"unreachable: the effective entropy of Box\(-1.0, 1.0, \(4,\), float32\) "
            r"lies in \[-21.96, 5.68\] nats \(got 6.0\)",
        ),
        (["entropy.init.threshold=-30"], "entropy.init.threshold", r"lies in \[-21.96, 5.68\] nats \(got -30.0\)"),
        (["entropy.control.target=[[0, 6.0], [1000, 2.0]]"], "entropy.control.target", r"lies in \[-21.96, 5.68\]"),
        (
            ["entropy.measure=gaussian", "entropy.control.target=100"],
            "entropy.control.target",
            r"gaussian entropy .* lies in \[-74.32, 85.68\]",
        ),
        (["entropy.control.coef_min=-0.01"], "entropy.control.coef_min", "never goes below zero"),
        (
            ["entropy.control.mode=sigma_schedule", "model.free_log_std=false"],
            "entropy.control.mode",
            "needs model.free_log_std true",
        ),
        (
            ["entropy.control.mode=sigma_schedule", "model.initial_std=0.5"],
            "model.initial_std",
            "starts at entropy.control.sigma's 1.0",
        ),
        (["entropy.control.sigma=[[0, 0.5], [100, 0]]"], "entropy.control.sigma", r"every std must be in \(0, 100\]"),
        (
            ["algorithm.name=SAC", "entropy.control.enabled=false", "model.output_gain=0.01"],
            "model.output_gain",
            "PPO's policy head only",
        ),
        (
            ["entropy.covariance.lower=5", "entropy.covariance.upper=1"],
            "entropy.covariance.lower",
            r"must be < upper \(1.0\)",
        ),
    ],
)
def test_unreachable_or_contradictory_entropy_settings_are_refused(overrides, path, shown):
    import re

    message = _error(overrides=overrides)
    assert re.search(rf"{re.escape(path)}: .*{shown}", message), message


def test_unreachable_threshold_is_fine_when_init_is_off():
    assert parse_config({}, ["entropy.init.enabled=false", "entropy.init.threshold=50"]).entropy.init.threshold == 50


def test_weight_seed_defaults_to_the_seed():
    assert parse_config({"seed": 4}).weight_seed == 4
    assert parse_config({"seed": 4, "model": {"weight_seed": 9}}).weight_seed == 9


@pytest.mark.parametrize(
    "override, path, shown",
    [
        ("entropy.control.gain=0", "entropy.control.gain", "0"),
        ("entropy.control.gain=nan", "entropy.control.gain", "nan"),
        ("entropy.control.damping=-0.1", "entropy.control.damping", "-0.1"),
        ("entropy.control.max_step=0", "entropy.control.max_step", "0"),
        ("entropy.control.max_step=inf", "entropy.control.max_step", "inf"),
        ("entropy.control.coef_min=-inf", "entropy.control.coef_min", "-inf"),
        ("entropy.control.coef_max=nan", "entropy.control.coef_max", "nan"),
        ("entropy.control.coef_min=-5", "entropy.control.coef_min", "-5"),
        ("entropy.control.coef=-0.06", "entropy.control.coef", "-0.06"),  # below the lower bound's coef_min 0
        ("entropy.control.mode=anneal", "entropy.control.mode", "anneal"),
        ("model.output_gain=0", "model.output_gain", "0"),
    ],
)
def test_bad_control_values_name_field_and_value(override, path, shown):
    message = _error(overrides=[override])
    assert f"{path}:" in message
    assert shown in message


def test_old_log_space_control_keys_are_rejected():
    message = _error({"entropy": {"control": {"max_log_step": 0.7}}})
    assert "entropy.control.max_log_step" in message


def test_stop_needs_a_criterion():
    message = _error({"stop": {"iterations": None}})
    assert "stop:" in message and "at least one" in message


def test_every_problem_is_listed():
    message = _error({"algorithm": {"lr": 0, "gamma": 2}, "model": {"activation": "x"}})
    for path in ("algorithm.lr", "algorithm.gamma", "model.activation"):
        assert path in message


def test_errors_come_before_anything_heavy_and_without_ray():
    code = (
        "import sys\n"
        "import entropilot.platform.config as c\n"
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
        "try:\n"
        "    c.parse_config({}, ['algorithm.lr=-1'])\n"
        "except c.ConfigError:\n"
        "    pass\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_env_kwargs_are_checked_by_the_envs_room(monkeypatch):
    # The contract: a ValueError from entropilot.envs.validate_env_kwargs becomes a ConfigError at env.kwargs.
    import entropilot.envs as envs

    def validate_env_kwargs(env_id, kwargs):
        if "propellers" in kwargs:
            raise ValueError(f"unknown env option 'propellers' for {env_id}")

    monkeypatch.setattr(envs, "validate_env_kwargs", validate_env_kwargs, raising=False)
    message = _error(overrides=["env.kwargs.propellers=6"])
    assert "env.kwargs:" in message and "propellers" in message


def test_real_envs_reject_an_unknown_kwarg():
    message = _error(overrides=["env.kwargs.not_an_option=1"])
    assert "env.kwargs" in message and "not_an_option" in message


@pytest.mark.parametrize("name", ["hover", "waypoint", "swarm"])
def test_flat_params_round_trip(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    flat = to_flat_params(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in flat.items())
    assert all(len(v) <= config_module.MLFLOW_PARAM_MAX_CHARS for v in flat.values())
    assert flat["algorithm.train_batch_size"] == str(cfg.algorithm.train_batch_size)
    assert flat["name"] == name  # plain strings stay readable
    assert from_flat_params(flat) == cfg


def test_flat_params_keep_strings_that_look_like_other_types():
    cfg = parse_config({"mlflow": {"run_name": "123", "experiment": "true"}})
    assert from_flat_params(to_flat_params(cfg)) == cfg


def test_flat_params_truncate_long_values():
    cfg = parse_config({"mlflow": {"experiment": "x" * 7000}})
    assert len(to_flat_params(cfg)["mlflow.experiment"]) == config_module.MLFLOW_PARAM_MAX_CHARS


@pytest.mark.parametrize("name", ["hover", "waypoint", "swarm"])
def test_dump_load_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["entropy.control.target=[[0, 1.5], [100, 0.5]]"])
    out = tmp_path / "sub" / "config.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_addresses_follow_the_ecosystem_variables(monkeypatch):
    cfg = ExperimentConfig()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cfg.resources.resolve_ray_address() == "local"  # never None: that would attach to a `ray start` cluster
    assert cfg.mlflow.resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert cfg.resources.resolve_ray_address() == "ray://head:10001"
    assert cfg.mlflow.resolve_tracking_uri() == "http://127.0.0.1:5000"
    pinned = parse_config({"resources": {"ray_address": "auto"}, "mlflow": {"tracking_uri": "sqlite:///x.db"}})
    assert pinned.resources.resolve_ray_address() == "auto"
    assert pinned.mlflow.resolve_tracking_uri() == "sqlite:///x.db"


def test_assignment_is_validated():
    cfg = ExperimentConfig()
    with pytest.raises(ValueError):
        cfg.algorithm.lr = -1.0


def test_algorithm_settings_carry_the_sac_options_and_a_log_std_only_where_it_applies():
    from entropilot.platform.algorithm import algorithm_settings

    sac = parse_config(
        {
            "algorithm": {
                "name": "SAC",
                "tau": 0.02,
                "initial_alpha": 0.3,
                "target_entropy": -2.5,
                "replay_capacity": 5000,
                "learning_starts": 7,
            },
            "entropy": {"control": {"enabled": False}},
        }
    )
    settings = algorithm_settings(sac)
    assert (settings["tau"], settings["initial_alpha"], settings["target_entropy"]) == (0.02, 0.3, -2.5)
    assert (settings["replay_capacity"], settings["learning_starts"], settings["entropy_control"]) == (5000, 7, None)
    assert settings["free_log_std"] is False  # RLlib asserts on a free log std for SAC's squashed Gaussian
    discrete = algorithm_settings(parse_config({"env": {"id": "entropilot/HoverDiscrete-v0"}}))
    assert discrete["free_log_std"] is False and discrete["entropy_control"]["measure"] == "effective"
    assert algorithm_settings(parse_config({}))["free_log_std"] is True  # PPO's Gaussian head


def test_the_schema_is_the_only_place_algorithm_defaults_live():
    """`algorithm_config` requires every setting `algorithm_settings` fills from the schema; only knobs the schema
    does not have keep a default there."""
    import inspect

    from entropilot.platform.algorithm import algorithm_config, algorithm_settings

    settings = algorithm_settings(parse_config({"resources": {"gpu": "off"}}))
    parameters = inspect.signature(algorithm_config).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty}
    assert required == set(settings)
    assert set(parameters) - required == {"num_cpus_per_learner", "normalize_observations", "learner_class"}
    # The schema's defaults reach RLlib's config as they are.
    config = algorithm_config(**settings)
    assert (config.train_batch_size_per_learner, config.num_envs_per_env_runner) == (2000, 4)
    assert config.model_config["free_log_std"] is True
