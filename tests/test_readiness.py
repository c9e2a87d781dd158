"""Flight readiness without MLflow or Ray: the condition matrix, the statistics, the batched flights against flights
one by one, the report in the policy file, the gate on a vehicle flight, the evaluate command."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import write_linear_policy

from entropilot.cli import main as cli
from entropilot.deploy.contract import (
    PREFIX,
    READINESS_KEY,
    SEAL_KEY,
    SEAL_PLACEHOLDER,
    policy_sha256,
    seal,
    sha256_hex,
)
from entropilot.deploy.fly import FlightError, check_readiness
from entropilot.deploy.gate import judge, verdict_line
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.deploy.readiness import episode_stats, evaluate_policy
from entropilot.deploy.readiness_config import (
    ReadinessError,
    check_conditions,
    check_seeds,
    load_readiness_config,
    merge_options,
)
from entropilot.deploy.readiness_record import stamp_report
from entropilot.deploy.readiness_report import crashed_flights
from entropilot.envs import HOVER_ID, WAYPOINT_ID, make_env
from entropilot.envs.evaluate import EpisodeResult, run_episodes
from entropilot.envs.pid import CascadedPID
from entropilot.platform.stats import wilson_interval

# Short episodes, few of them: the numbers are not the point here, their bookkeeping is.
TINY = """
episodes: 5
seed: 3000000
base: {episode_seconds: 2.0, success_seconds: 1.0, start_tilt_deg: 20.0, randomization: null}
conditions:
  nominal: {}
  heavy: {true_airframe: {mass: 1.2}}
  late: {action_delay_steps: 1}
gate: {condition: nominal, max_crashes: 0, min_success_lower_bound: 0.5}
"""


@pytest.fixture
def tiny_matrix(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def leveller(tmp_path):
    """A linear policy that holds altitude and levels the vehicle but does not steer to the target."""
    return write_linear_policy(tmp_path / "leveller.onnx", k_level=3.0, env_kwargs={"randomization": {"mass": 0.05}})


# ---- the matrix ------------------------------------------------------------------------------------------------------


def test_the_shipped_gate_passes_a_good_policy_usually_and_a_poor_one_almost_never():
    """The gate judged on the shipped number of episodes, as a statistical test: a crash-free policy that succeeds
    99 % of the time passes most of the time, one at 95 % almost never (binomial odds over the successes the Wilson
    bound accepts). On 100 episodes the first passed 37 % of the time: only 100/100 cleared the bound."""
    from scipy.stats import binom

    config = load_readiness_config()
    gate = config.gate.model_dump()
    n = config.episodes

    def passes(successes: int) -> bool:
        interval = list(wilson_interval(successes, n, config.confidence))
        return judge({"crashes": 0, "success_interval": interval}, gate)["passed"]

    fewest = min(k for k in range(n + 1) if passes(k))
    assert all(passes(k) for k in range(fewest, n + 1))
    assert binom.sf(fewest - 1, n, 0.99) > 0.8  # P(successes >= fewest) for a 99 % policy
    assert binom.sf(fewest - 1, n, 0.95) < 0.01


def test_the_shipped_matrix_holds_the_issue_conditions_and_flies_every_single_drone_env():
    config = load_readiness_config()
    assert config.episodes >= 100 and config.gate.condition == "nominal" and config.gate.max_crashes == 0
    assert list(config.conditions) == [
        "nominal",
        "mass_1.2x",
        "mass_0.9x",
        "kf_0.85x",
        "motor_lag_2x",
        "wind_0.5",
        "wind_1.5",
        "sensor_noise",
        "latency_1_step",
        "wide_start",
    ]
    for env_id in (HOVER_ID, WAYPOINT_ID):
        options = check_conditions(config, env_id, {"action_mode": "motors", "randomization": {"mass": 0.1}})
        assert "randomization" not in options["nominal"]  # the base puts the training randomization back to off
        assert options["mass_1.2x"]["true_airframe"] == {"mass": 1.2} and options["nominal"]["action_mode"] == "motors"
    # held-out: outside the training runner seeds and the training-time evaluation seeds of the shipped configs
    assert check_seeds(config, {"seeds": {"training": [0, 9], "evaluation": [1_000_000, 1_000_020]}}) is None
    assert "not checked" in check_seeds(config, {})


def test_a_user_matrix_extends_the_default_and_null_resets_an_option(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "extends: default\nepisodes: 7\nconditions:\n  nominal: {wind: {mean: [0.1, 0, 0]}}\n"
        "  gusty: {wind: {gust_std: 1.0}}\ngate: {min_success_lower_bound: 0.9}\n"
    )
    config = load_readiness_config(path)
    assert config.episodes == 7 and list(config.conditions)[-1] == "gusty" and len(config.conditions) == 11
    assert config.conditions["nominal"] == {"wind": {"mean": [0.1, 0, 0]}}
    assert config.gate.min_success_lower_bound == 0.9 and config.gate.max_crashes == 0
    assert merge_options(
        {"wind": {"mean": [1, 0, 0], "gust_std": 0.2}, "x": 1}, {"wind": {"gust_std": 0.5}, "x": None}
    ) == {"wind": {"mean": [1, 0, 0], "gust_std": 0.5}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("conditions: {nominal: {}}\nepisodes: 0\n", "episodes: Input should be greater than or equal to 1"),
        ("conditions: {nominal: {}}\ngates: {}\n", "gates: unknown key; valid keys here: episodes, seed"),
        ("conditions: {heavy: {}}\n", "gate.condition 'nominal' is not a condition"),
        ("conditions: {'no spaces': {}, nominal: {}}\n", "must be letters, digits"),
        ("extends: mine\nconditions: {nominal: {}}\n", "the one matrix to extend is 'default'"),
        ("[1, 2]\n", "must hold a mapping"),
    ],
)
def test_bad_matrices_are_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ReadinessError, match=message):
        load_readiness_config(path)


def test_a_condition_the_env_refuses_is_named_before_anything_flies(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("conditions: {nominal: {}, heavy: {true_airframe: {mass: 3.0}}, typo: {wnd: {}}}\n")
    with pytest.raises(ReadinessError) as err:
        check_conditions(load_readiness_config(path), HOVER_ID, {})
    assert "condition 'heavy'" in str(err.value) and "cannot lift it" in str(err.value)
    assert "condition 'typo'" in str(err.value) and "'wnd'" in str(err.value)
    assert "condition 'nominal'" not in str(err.value)


def test_held_out_seeds_that_overlap_training_are_refused():
    config = load_readiness_config()
    with pytest.raises(ReadinessError, match=r"overlap the policy's evaluation seeds \[1999990, 2000010\)"):
        check_seeds(config, {"seeds": {"training": [0, 9], "evaluation": [1_999_990, 2_000_010]}})


# ---- statistics and the gate -----------------------------------------------------------------------------------------


def test_the_wilson_interval():
    low, high = wilson_interval(100, 100, 0.95)
    assert high == 1.0 and low == pytest.approx(0.963, abs=5e-4)
    assert wilson_interval(99, 100, 0.95)[0] == pytest.approx(0.9455, abs=5e-4)  # one failure: below 0.95
    assert wilson_interval(0, 10, 0.95) == (0.0, pytest.approx(0.2775, abs=5e-4))
    low, high = wilson_interval(46, 50, 0.95)  # the issue's quickstart policy: 46/50
    assert low == pytest.approx(0.8113, abs=5e-4) and high == pytest.approx(0.9685, abs=5e-4)
    assert wilson_interval(30, 60, 0.99)[0] < wilson_interval(30, 60, 0.95)[0]


def test_the_gate_judges_crashes_and_the_lower_bound():
    gate = {"condition": "nominal", "max_crashes": 0, "min_success_lower_bound": 0.95}
    stats = {"episodes": 100, "successes": 100, "crashes": 0, "success_interval": [0.963, 1.0]}
    assert judge(stats, gate) == {**gate, "passed": True, "reasons": []}
    failed = judge({**stats, "successes": 96, "crashes": 4, "success_interval": [0.90, 0.98]}, gate)
    assert not failed["passed"] and failed["reasons"] == [
        "4 crash(es), at most 0 allowed",
        "success lower bound 0.900 < 0.95",
    ]


# ---- flights ---------------------------------------------------------------------------------------------------------


def _assert_close(ours, theirs) -> None:
    """The same statistics: every key, every count and reason, every float to 1e-9."""
    if isinstance(ours, dict):
        assert list(ours) == list(theirs)
        for key in ours:
            _assert_close(ours[key], theirs[key])
    elif isinstance(ours, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_close(a, b)
    elif isinstance(ours, float):
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    else:
        assert ours == theirs


def test_the_matrix_flies_the_episodes_one_by_one_flights_fly(leveller, tiny_matrix):
    config = load_readiness_config(tiny_matrix)
    report = evaluate_policy(leveller, config, echo=lambda line: None)
    policy = OnnxPolicy(leveller)
    assert report["policy"]["sha256"] == policy.sha256 and report["policy"]["policy_sha256"] == policy.policy_sha256
    assert report["seeds"] == [3_000_000, 3_000_005] and list(report["conditions"]) == ["nominal", "heavy", "late"]
    assert report["notes"] and "not checked" in report["notes"][0]  # the linear policy records no training seeds
    for name, flown in report["conditions"].items():
        kwargs = config.condition_kwargs({"randomization": {"mass": 0.05}}, name)
        assert "randomization" not in kwargs
        env = make_env(HOVER_ID, **kwargs)
        pid = CascadedPID.for_env(env)
        try:
            alone_pid = run_episodes(env, pid, 5, 3_000_000, reset_controller=pid.reset)
            alone_policy = run_episodes(env, policy, 5, 3_000_000)
        finally:
            env.close()
        # the drones of one world agree with the single env to ~1e-13 m (their frames' offsets): the PID's numbers
        # to that, its outcomes exactly
        _assert_close(flown["pid"], episode_stats(alone_pid, 0.95))
        # onnxruntime on a batch vs one row may round differently: the outcomes must agree, the numbers closely
        mine, theirs = flown["policy"], episode_stats(alone_policy, 0.95)
        assert mine["successes"] == theirs["successes"] and mine["crash_reasons"] == theirs["crash_reasons"]
        assert mine["final_distance_m"]["p50"] == pytest.approx(theirs["final_distance_m"]["p50"], rel=1e-3)
    gate = report["gate"]
    assert gate["condition"] == "nominal" and gate["passed"] is False and gate["reasons"]
    assert verdict_line(report).startswith("FAIL: nominal success 0/5")


# ---- the report in the file, and the gate on a vehicle ---------------------------------------------------------------


def _report(policy_path, passed: bool) -> dict:
    """A report as evaluate_policy writes it, for a file, without flying (the gate checks are about its fields)."""
    stats = {"episodes": 10, "successes": 10 if passed else 3, "crashes": 0 if passed else 2}
    stats["success_interval"] = list(wilson_interval(stats["successes"], 10, 0.95))
    gate = {"condition": "nominal", "max_crashes": 0, "min_success_lower_bound": 0.5}
    return {
        "policy": {"policy_sha256": policy_sha256(policy_path.read_bytes()), "sha256": "x"},
        "confidence": 0.95,
        "conditions": {"nominal": {"policy": stats}},
        "gate": judge(stats, gate),
    }


def test_a_stamped_report_changes_the_file_not_the_network(tmp_path, leveller):
    before = leveller.read_bytes()
    report = _report(leveller, passed=True)
    sha = stamp_report(leveller, report)
    policy = OnnxPolicy(leveller)  # seal intact
    assert policy.sha256 == sha != sha256_hex(before)  # a new file...
    assert policy.policy_sha256 == policy_sha256(before) == report["policy"]["policy_sha256"]
    assert policy.metadata[READINESS_KEY] == report
    # a new report replaces the old one
    again = _report(leveller, passed=False)
    stamp_report(leveller, again)
    keys = [p.key for p in onnx.load(str(leveller)).metadata_props]
    assert keys.count(PREFIX + READINESS_KEY) == 1 and OnnxPolicy(leveller).metadata[READINESS_KEY] == again
    # a report is stamped only into the network it was made for
    other = write_linear_policy(tmp_path / "other.onnx", k_level=1.0)
    assert policy_sha256(other.read_bytes()) != policy.policy_sha256
    with pytest.raises(ReadinessError, match="not the network the report was made for"):
        stamp_report(other, report)


def _copy_report_into(source, target) -> None:
    """What stamp_report refuses to do: another file's report, re-sealed into ``target``."""
    model = onnx.load(str(target))
    report = OnnxPolicy(source).metadata[READINESS_KEY]
    for prop in model.metadata_props:
        if prop.key == SEAL_KEY:
            prop.value = SEAL_PLACEHOLDER
    model.metadata_props.add(key=PREFIX + READINESS_KEY, value=json.dumps(report))
    target.write_bytes(seal(model.SerializeToString()))


def test_a_vehicle_flight_needs_a_passing_report_for_this_network_or_force(tmp_path, leveller, caplog):
    lines = []
    with pytest.raises(FlightError, match="carries no readiness report"):
        check_readiness(OnnxPolicy(leveller), force=False, dry_run=False, echo=lines.append)
    stamp_report(leveller, _report(leveller, passed=False))
    failing = OnnxPolicy(leveller)
    with pytest.raises(FlightError, match=r"2 crash\(es\), at most 0 allowed.*--force overrides it"):
        check_readiness(failing, force=False, dry_run=False, echo=lines.append)
    with caplog.at_level(logging.WARNING, logger="entropilot.deploy.gate"):
        check_readiness(failing, force=True, dry_run=False, echo=lines.append)
    assert "going on because of --force" in lines[-1] and "overridden with --force" in caplog.text
    check_readiness(failing, force=False, dry_run=True, echo=lines.append)  # a dry run sends nothing
    assert lines[-1].startswith("dry run: the readiness gate is not applied")

    stamp_report(leveller, _report(leveller, passed=True))
    check_readiness(OnnxPolicy(leveller), force=False, dry_run=False, echo=lines.append)
    assert lines[-1] == "readiness gate: PASS: nominal success 10/10 (95 % interval 0.722-1.000), 0 crash(es)"

    other = write_linear_policy(tmp_path / "other.onnx", k_level=1.0)
    _copy_report_into(leveller, other)
    with pytest.raises(FlightError, match="made for another network"):
        check_readiness(OnnxPolicy(other), force=False, dry_run=False, echo=lines.append)


def test_fly_on_mavlink_refuses_a_policy_without_a_report_before_connecting(leveller):
    result = CliRunner().invoke(cli, ["fly", str(leveller), "--link", "mavlink", "--connect", "udpout:127.0.0.1:9"])
    assert result.exit_code == 1 and "the readiness gate refuses this policy" in result.output, result.output
    assert "waiting" not in result.output.lower()  # never got as far as the link


# ---- the command -----------------------------------------------------------------------------------------------------


def test_evaluate_prints_writes_and_stamps_and_exits_by_the_verdict(tmp_path, leveller, tiny_matrix):
    out = tmp_path / "report"
    args = ["evaluate", str(leveller), "--conditions", str(tiny_matrix), "--output-dir", str(out), "--workers", "1"]
    result = CliRunner().invoke(cli, [*args, "--stamp", "--no-mlflow"])
    assert result.exit_code == 1, result.output  # the leveller never reaches the target: the gate fails
    assert "readiness: 3 condition(s) x 5 held-out episodes" in result.output
    header = next(line for line in result.output.splitlines() if line.startswith("condition"))
    assert "policy success" in header and "PID success" in header
    assert "gate: FAIL: nominal success 0/5" in result.output
    report = json.loads((out / "readiness.json").read_text())
    markdown = (out / "readiness.md").read_text()
    assert (out / "readiness.png").stat().st_size > 10_000 and "| nominal | 0/5 |" in markdown
    shares = report["conditions"]["nominal"]["policy"]["saturated_by_component"]
    assert "| condition | a0 | a1 | a2 | a3 |" in markdown
    assert "| nominal | " + " | ".join(f"{100 * v:.1f} %" for v in shares) + " |" in markdown
    assert OnnxPolicy(leveller).metadata[READINESS_KEY] == report
    assert f"sealed again, sha256 {OnnxPolicy(leveller).sha256}" in result.output

    passing = tmp_path / "lenient.yaml"
    passing.write_text(TINY.replace("min_success_lower_bound: 0.5", "min_success_lower_bound: 0.0"))
    lenient = CliRunner().invoke(
        cli, [*args[:2], "--conditions", str(passing), "--output-dir", str(out), "--no-mlflow"]
    )
    assert lenient.exit_code == 0 and "gate: PASS" in lenient.output, lenient.output

    registered = CliRunner().invoke(cli, ["evaluate", "models:/x@y", "--stamp", "--no-mlflow"])
    assert registered.exit_code == 1 and "a registered file is never changed" in registered.output


def test_episode_statistics(leveller):
    env = make_env(HOVER_ID, episode_seconds=2.0, success_seconds=1.0)
    try:
        results = run_episodes(env, OnnxPolicy(leveller), 4, 0)
    finally:
        env.close()
    stats = episode_stats(results, 0.95)
    assert stats["episodes"] == 4 and stats["success_rate"] == np.mean([r.success for r in results])
    assert stats["final_distance_m"]["max"] == max(r.final_distance for r in results)
    assert stats["max_tilt_deg"]["max"] == max(r.max_tilt_deg for r in results)
    assert 0.0 <= stats["saturated_fraction"] <= 1.0
    steps = sum(r.length for r in results)
    assert len(stats["saturated_by_component"]) == 4
    for i, share in enumerate(stats["saturated_by_component"]):  # each component's share, weighted by episode length
        assert share == pytest.approx(sum(r.saturated_by_component[i] * r.length for r in results) / steps)
        assert share <= stats["saturated_fraction"] + 1e-12  # a step with any component at a bound counts once


def test_the_report_names_the_seeds_whose_flights_crashed():
    def flight(seed: int, crash: str | None) -> EpisodeResult:
        return EpisodeResult(
            seed, crash is None, 1.0, 10, 0.5, crash, None, None, max_tilt_deg=5.0, saturated_fraction=0.0
        )

    flown = [flight(7, "tilt"), flight(5, None), flight(6, "left_arena"), flight(9, "tilt")]
    stats = episode_stats(flown, 0.95)
    assert stats["crashed_seeds"] == [[6, "left_arena"], [7, "tilt"], [9, "tilt"]]  # by seed, each with its reason
    assert episode_stats(flown[1:2], 0.95)["crashed_seeds"] == []
    pid = episode_stats(flown[1:2], 0.95)
    report = json.loads(json.dumps({"conditions": {"nominal": {"policy": stats, "pid": pid}}}))  # as in the .json
    assert crashed_flights(report) == [
        "",
        "Crashed flights, by seed (a seed starts the same flight again):",
        "",
        "- `nominal`, policy: 6 (left_arena), 7 (tilt), 9 (tilt)",  # the PID did not crash: no line
    ]
    assert crashed_flights(report, most=1)[-1] == "- `nominal`, policy: 6 (left_arena) and 2 more"
    assert crashed_flights({"conditions": {"nominal": {"policy": pid, "pid": pid}}}) == []
