"""RunTracker against a real MLflow server: config as params, metrics, tags, artifacts, resume, outages;
and the training plots."""

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from entropilot.platform.config import from_flat_params, parse_config, to_flat_params
from entropilot.platform.mlflow_sender import is_outage, is_refusal
from entropilot.platform.names import (
    ENTROPY_INIT_TAG_PREFIX,
    INIT_CHOSEN_ENTROPY,
    INIT_CLEARED,
    INIT_DRAW_ENTROPY,
    INIT_DRAW_ENTROPY_PER_DIM,
    INIT_DRAWS,
    VERSION_TAG,
)
from entropilot.platform.plots import plot_entropy, plot_learning
from entropilot.platform.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, ConfigMismatchError, RunTracker

pytestmark = pytest.mark.usefixtures("isolated_mlflow_env")


def make_cfg(uri, name="tracking", **sections):
    return parse_config({"name": name, "mlflow": {"tracking_uri": uri, "experiment": "tracking-tests"}, **sections})


def steps_of(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_new_run_has_config_metrics_tags_and_artifacts(mlflow_server, tmp_path):
    cfg = make_cfg(mlflow_server, "basic", algorithm={"lr": 1e-3}, model={"hidden": [32, 32]})
    client = MlflowClient(mlflow_server)
    with RunTracker.start(cfg) as tracker:
        for step in range(5):
            tracker.log_metrics(
                {
                    "episode_return_mean": np.float32(step * 1.5),
                    "entropy_per_dim": np.array([0.1, 0.2, 0.3, 0.4]) * step,
                    "learner": {"entropy_coeff": 0.01},
                    "note": "not a number",
                },
                step=step,
            )
        tracker.set_tag("entropy.target", 0.5)
        client.set_tag(tracker.run_id, "edited.in.ui", "yes")  # live tuning: tags changed outside the run
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "weights.bin").write_bytes(b"\0" * 64)
        (tmp_path / "summary.txt").write_text("ok")
        tracker.log_artifact(tmp_path / "summary.txt")
        tracker.log_artifact(tmp_path / "ckpt", "checkpoints/final")
        tracker.log_dict({"a": 1}, "config/extra.yaml")
        tracker.log_text("hello", "notes.txt")
        assert tracker.flush()
        tags = tracker.get_tags()
        assert tags["entropy.target"] == "0.5" and tags["edited.in.ui"] == "yes"
        run_id = tracker.run_id
        assert tracker.artifact_uri.startswith("mlflow-artifacts:")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "basic"
    assert run.data.params == to_flat_params(cfg)
    assert from_flat_params(run.data.params) == cfg
    assert run.data.tags["env_id"] == cfg.env.id and run.data.tags["algorithm"] == "PPO"
    assert run.data.tags[VERSION_TAG]
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40  # the tests run from the git checkout
    assert steps_of(client, run_id, "episode_return_mean") == [0, 1, 2, 3, 4]
    assert steps_of(client, run_id, "entropy_per_dim/3") == [0, 1, 2, 3, 4]
    assert client.get_metric_history(run_id, "learner/entropy_coeff")[0].value == pytest.approx(0.01)
    assert "note" not in run.data.metrics
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"summary.txt", "checkpoints", "config", "notes.txt"}
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints/final")] == ["checkpoints/final/weights.bin"]
    downloaded = client.download_artifacts(run_id, "config/extra.yaml", str(tmp_path / "download"))
    assert open(downloaded).read() == "a: 1\n"


def test_experiments_open_in_the_model_training_view(mlflow_server):
    client = MlflowClient(mlflow_server)
    experiment = lambda name: {"tracking_uri": mlflow_server, "experiment": name}  # noqa: E731
    with RunTracker.start(make_cfg(mlflow_server, mlflow=experiment("kind-new"))):
        pass
    assert client.get_experiment_by_name("kind-new").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    # An experiment made before (by an older entropilot) gets the kind; one that says what it is keeps it.
    client.create_experiment("kind-old")
    client.create_experiment("kind-genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("kind-old", "kind-genai"):
        with RunTracker.start(make_cfg(mlflow_server, mlflow=experiment(name))):
            pass
    assert client.get_experiment_by_name("kind-old").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment_by_name("kind-genai").tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_tracking_uri_comes_from_the_environment(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = parse_config({"name": "from-env", "mlflow": {"experiment": "tracking-tests"}})
    tracker = RunTracker.start(cfg)
    tracker.close("KILLED")
    assert tracker.tracking_uri == mlflow_server
    assert MlflowClient(mlflow_server).get_run(tracker.run_id).info.status == "KILLED"


def test_resume_reopens_the_run_and_rejects_a_changed_config(mlflow_server):
    cfg = make_cfg(mlflow_server, "resume")
    client = MlflowClient(mlflow_server)
    first = RunTracker.start(cfg)
    for step in range(3):
        first.log_metrics({"loss": 1.0 / (step + 1)}, step)
    first.close()

    second = RunTracker.start(cfg, resume_run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    for step in range(3, 5):
        second.log_metrics({"loss": 1.0 / (step + 1)}, step)
    second.close()
    assert steps_of(client, first.run_id, "loss") == [0, 1, 2, 3, 4]
    assert client.get_run(first.run_id).info.status == "FINISHED"

    changed = make_cfg(mlflow_server, "resume", algorithm={"lr": 1e-3}, seed=7)
    with pytest.raises(ConfigMismatchError) as error:
        RunTracker.start(changed, resume_run_id=first.run_id)
    assert error.value.keys == ["algorithm.lr", "seed"]
    assert "algorithm.lr: run has '0.0003', config has '0.001'" in str(error.value)


def test_metrics_survive_a_server_outage(mlflow_server_process, caplog):
    server = mlflow_server_process
    caplog.set_level(logging.WARNING, logger="entropilot.platform")
    tracker = RunTracker.start(make_cfg(server.uri, "outage"))
    small = RunTracker.start(make_cfg(server.uri, "outage-small-buffer"), max_buffered_points=3)
    tracker.log_metrics({"reward": 0.0}, step=0)
    assert tracker.flush() and small.flush()

    with server.stopped():
        began = time.monotonic()
        logged_at = {}
        for step in range(1, 6):
            logged_at[step] = time.time() * 1000
            tracker.log_metrics({"reward": float(step)}, step=step)
            small.log_metrics({"reward": float(step)}, step=step)
            time.sleep(0.05)
        tracker.set_tag("phase", "during-outage")
        assert tracker.get_tags()["phase"] == "during-outage"  # unsent tags are visible locally
        assert not tracker.flush(timeout_s=1.0)
        assert time.monotonic() - began < 30
        restarted_at = time.time() * 1000

    tracker.log_metrics({"reward": 6.0}, step=6)
    assert tracker.flush(timeout_s=20)
    tracker.close()
    small.close()

    client = MlflowClient(server.uri)
    history = sorted(client.get_metric_history(tracker.run_id, "reward"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(7))
    assert [m.value for m in history] == [float(s) for s in range(7)]
    for m in history[1:6]:  # late metrics keep the time they were logged, not the time they arrived
        assert abs(m.timestamp - logged_at[m.step]) < 1000 and m.timestamp < restarted_at
    assert client.get_run(tracker.run_id).data.tags["phase"] == "during-outage"
    assert steps_of(client, small.run_id, "reward") == [3, 4, 5]  # a full buffer drops the oldest
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 2  # once per tracker, not once per call
    assert any("is back" in m and "dropped" in m for m in messages)
    assert any("is back" in m and "dropped" not in m for m in messages)


def test_only_network_and_server_errors_count_as_an_outage():
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    outages = [
        MlflowException("API request failed with exception ConnectionRefusedError"),  # MLflow's INTERNAL_ERROR
        MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),
        ConnectionRefusedError(111, "Connection refused"),
        requests.exceptions.ConnectionError("no route"),
        requests.exceptions.ReadTimeout("slow"),
    ]
    assert all(is_outage(exc) and not is_refusal(exc) for exc in outages)
    refused = MlflowException("bad tag key", error_code=INVALID_PARAMETER_VALUE)
    assert is_refusal(refused) and not is_outage(refused)
    for bug in (TypeError("expected str"), KeyError("run_id"), AttributeError("no such attribute")):
        assert not is_outage(bug) and not is_refusal(bug)


def test_a_programming_error_in_a_logging_call_is_raised_not_buffered(tmp_path, caplog):
    """Only an outage is waited out: a TypeError inside MLflow's call (an artifact path or a tag key that is not a
    str, a caller's bug) reaches the caller, whether the caller's thread or the background sender met it, and what
    caused it is not kept to fail again."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = RunTracker.start(make_cfg(uri, "bug"))
    note = tmp_path / "note.txt"
    note.write_text("logged")
    with pytest.raises(TypeError):
        tracker.log_artifact(note, artifact_path=5)  # uploaded in the caller's thread
    tracker.set_tag(5, "not a str key")  # sent by the background thread, or by the flush below if it comes first
    with pytest.raises(TypeError):
        tracker.flush()  # raises it if it sends the tag itself,
        tracker.flush()  # else the next call raises what stopped the background thread
    tracker.log_metrics({"reward": 1.0}, step=0)
    tracker.log_artifact(note)
    assert tracker.flush()
    tracker.close()
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["reward"] == 1.0
    assert not any("unreachable" in record.getMessage() for record in caplog.records)


def test_system_metrics_are_sampled_when_asked(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    cfg = make_cfg(mlflow_server, "system-metrics")
    cfg.mlflow.system_metrics = True
    tracker = RunTracker.start(cfg)
    time.sleep(2.0)
    tracker.close()
    metrics = MlflowClient(mlflow_server).get_run(tracker.run_id).data.metrics
    assert any(key.startswith("system/cpu") for key in metrics)


def test_entropy_init_draws_are_metrics_and_the_choice_tags(mlflow_server):
    draws = [SimpleNamespace(seed=10 + i, entropy=e, per_dim=(e / 2, e / 2)) for i, e in enumerate([0.2, 0.9, 0.5])]
    tracker = RunTracker.start(make_cfg(mlflow_server, "entropy-init"))
    tracker.log_entropy_init(SimpleNamespace(draws=draws, chosen=draws[1], threshold=1.0))
    tracker.close()
    client = MlflowClient(mlflow_server)
    history = sorted(client.get_metric_history(tracker.run_id, INIT_DRAW_ENTROPY), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.2), (1, 0.9), (2, 0.5)]
    assert steps_of(client, tracker.run_id, f"{INIT_DRAW_ENTROPY_PER_DIM}/1") == [0, 1, 2]
    tags = client.get_run(tracker.run_id).data.tags
    init = {key.removeprefix(ENTROPY_INIT_TAG_PREFIX): value for key, value in tags.items()}
    assert (init["chosen_draw"], init["chosen_seed"], init["cleared"]) == ("1", "11", "False")
    metrics = client.get_run(tracker.run_id).data.metrics
    assert (metrics[INIT_CHOSEN_ENTROPY], metrics[INIT_DRAWS], metrics[INIT_CLEARED]) == (
        0.9,
        3,
        0.0,
    )

    by_index = RunTracker.start(make_cfg(mlflow_server, "entropy-init-index"))
    by_index.log_entropy_init(SimpleNamespace(draws=draws, chosen=2))
    by_index.close()
    assert client.get_run(by_index.run_id).data.tags[ENTROPY_INIT_TAG_PREFIX + "chosen_seed"] == "12"


def test_plots_are_written_even_with_missing_keys(tmp_path):
    history = [
        {
            "env_steps": 2000 * (i + 1),
            "episode_return_mean": -20.0 + i,
            "success_rate": min(1.0, i / 10),
            "entropy": 2.0 - 0.1 * i,
            "entropy_target": 1.0,
            "entropy_coeff": 0.001 * i,
            **{f"entropy_per_dim/{d}": 0.5 - 0.02 * i + 0.1 * d for d in range(4)},
        }
        for i in range(15)
    ]
    sparse = [{"entropy": 1.0}, {"entropy": float("nan")}, {"success_rate": 0.5}]
    for name, rows in [("full", history), ("sparse", sparse), ("empty", [])]:
        for plot in (plot_entropy, plot_learning):
            path = tmp_path / f"{plot.__name__}-{name}.png"
            plot(rows, str(path))
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
