"""`entropilot train` end to end on a tiny budget: real Ray, real PyBullet, a real MLflow server; then resume."""

import os
import signal
import subprocess
import sys

import mlflow
import pytest
import yaml

from entropilot.platform.algorithm import observation_filter_stats
from entropilot.platform.config import parse_config
from entropilot.platform.names import ENTROPY_COLLAPSE_TAG, INIT_DRAW_ENTROPY
from entropilot.platform.phases import PHASES
from entropilot.platform.train import STATE_FILE, prepare_resume, train


def tiny_config(tmp_path, uri, iterations, path=("stock", "sync")):
    return parse_config(tiny_settings(tmp_path, uri, iterations, path))


def tiny_settings(tmp_path, uri, iterations, path=("stock", "sync")) -> dict:
    return {
        "name": "tiny-hover",
        "env": {"id": "entropilot/Hover-v0", "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
        "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
        # A minimum above a fresh std-1 policy's ~4.35 effective nats, floor just below it: the lower bound raises
        # the coefficient every iteration and the detector must flag a collapse. A threshold near the measure's
        # top (5.68 on 4 dims), which no std-1 draw reaches: every draw is tried.
        "entropy": {
            "init": {"threshold": 5.6, "max_draws": 2, "rollout_steps": 100},
            "control": {"target": 5.0, "coef": 0.01},
            "collapse": {"floor": 4.9},
        },
        "resources": {
            "envs_per_runner": 2,
            "num_cpus_per_env_runner": 0.5,
            "sampler": path[0],
            "vector_env": path[1],
        },
        "mlflow": {"tracking_uri": uri, "experiment": "test-train", "video": True, "system_metrics": False},
        "stop": {"iterations": iterations},
        "evaluation": {"interval": 2, "episodes": 1},
        "checkpoint": {"interval": 2, "dir": str(tmp_path / "runs")},
    }


# RLlib's own path (stock sampler, SyncVectorEnv of single envs), and ours (bulk sampler, one PyBullet world).
@pytest.mark.parametrize("path", [("stock", "sync"), ("bulk", "batched")], ids="/".join)
def test_train_logs_to_mlflow_and_resumes_into_the_same_run(
    path, tmp_path, mlflow_server, isolated_mlflow_env, ray_session
):
    first = train(tiny_config(tmp_path, mlflow_server, iterations=2, path=path), echo=lambda line: None)
    assert first.iterations == 2 and (first.checkpoint / STATE_FILE).is_file()

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.train_batch_size"] == "200"
    steps = [m.step for m in client.get_metric_history(first.run_id, "entropy")]
    assert steps == [1, 2]
    coefficients = [m.value for m in client.get_metric_history(first.run_id, "entropy_coeff")]
    assert len(coefficients) == 2 and coefficients[0] != coefficients[1]  # the controller acts every iteration
    assert ENTROPY_COLLAPSE_TAG in run.data.tags
    assert [m.value for m in client.get_metric_history(first.run_id, "entropy_collapse")] == [1.0, 1.0]
    assert [m.step for m in client.get_metric_history(first.run_id, "success_rate")] == [2]
    for timing in ("learner_time_s", "sampling_time_s", "env_steps_per_s"):
        assert [m.step for m in client.get_metric_history(first.run_id, timing)] == [1, 2]
    # Where the time went: the phases add up to the run's wall time at every iteration.
    for entry in first.history:
        phases = [entry[f"time_{phase}_s"] for phase in PHASES]
        assert min(phases) >= 0 and sum(phases) == pytest.approx(entry["time_s"])
        assert entry["time_startup_s"] > 0 and entry["time_init_s"] > 0 and entry["time_sampling_s"] > 0
    assert first.history[1]["time_evaluation_s"] > first.history[0]["time_evaluation_s"] == 0
    draws = client.get_metric_history(first.run_id, INIT_DRAW_ENTROPY)
    assert len(draws) == 2  # a threshold no draw clears: every draw is tried, the best kept
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"plots", "checkpoint", "video"} <= artifacts
    # The checkpoint holds the observation filter's statistics: every observation sampled (resets included).
    assert observation_filter_stats(first.checkpoint).count >= 2 * 200

    # Resume from the run folder with a later stop: same MLflow run, iterations continue at 3, nothing lost.
    cfg, checkpoint, overrides = prepare_resume(str(first.checkpoint.parent), ["stop.iterations=4"])
    resumed = train(cfg, resume=checkpoint, echo=lambda line: None, resumed_with=overrides)
    assert resumed.run_id == first.run_id
    assert resumed.iterations == 4
    steps = [m.step for m in client.get_metric_history(first.run_id, "entropy")]
    assert steps == [1, 2, 3, 4]
    env_steps = [m.value for m in client.get_metric_history(first.run_id, "env_steps")]
    assert env_steps == sorted(env_steps) and env_steps[2] > env_steps[1]  # sampling continued, not restarted
    assert observation_filter_stats(resumed.checkpoint).count >= 4 * 200


def test_sigterm_ends_the_run_as_killed_and_says_how_to_resume(tmp_path, mlflow_server):
    """`kill PID` (or `ray job stop`, a scheduler) is a stop request, not a failure: the run is marked KILLED, the
    output names the checkpoint to resume from, and Ray's C++ failure handler prints no stack trace."""
    settings = tiny_settings(tmp_path, mlflow_server, iterations=100_000)
    settings["checkpoint"]["interval"] = 1
    settings["mlflow"]["video"] = False
    settings["resources"]["num_env_runners"] = 0  # sampling in the driver: no runner actor to start
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    process = subprocess.Popen(
        [sys.executable, "-m", "entropilot", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:  # iteration 3's line comes after iteration 2's checkpoint was saved
        lines.append(line)
        if line.startswith("iter    3"):
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest
    assert process.returncode != 0, output
    assert "SIGTERM received" not in output  # Ray's C++ handler did not run
    [stopped] = [line for line in output.splitlines() if "marked KILLED" in line]
    run_id = stopped.split("MLflow run ")[1].split()[0]
    assert mlflow.MlflowClient(mlflow_server).get_run(run_id).info.status == "KILLED"
    run_dir = tmp_path / "runs"
    checkpoint = stopped.split("continues from ")[1].split()[0]
    assert f"--resume {run_dir}" in stopped and (run_dir / checkpoint / STATE_FILE).is_file(), stopped
