"""A run that samples and learns in this process (the laptop default) trains without Ray: no Ray process starts,
from the build through checkpoints and a resume into the same MLflow run."""

import mlflow
import pytest
import ray
import ray._private.auto_init_hook as auto_init
from test_train import tiny_settings

from entropilot.platform.algorithm import observation_filter_stats
from entropilot.platform.config import parse_config
from entropilot.platform.train import STATE_FILE, needs_ray, prepare_resume, train


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Any Ray call that would start Ray raises instead ("Ray has not been started yet")."""
    assert not ray.is_initialized(), "Ray is up: this module must run without it"
    monkeypatch.setattr(auto_init, "enable_auto_connect", False)
    yield
    assert not ray.is_initialized()


def test_a_run_in_this_process_trains_and_resumes_without_ray(
    tmp_path, mlflow_server, isolated_mlflow_env, ray_must_not_start
):
    settings = tiny_settings(tmp_path, mlflow_server, iterations=2, path=("bulk", "batched"))
    settings["resources"]["num_env_runners"] = 0
    cfg = parse_config(settings)
    assert not needs_ray(cfg)
    first = train(cfg, echo=lambda line: None)
    assert first.iterations == 2 and (first.checkpoint / STATE_FILE).is_file()
    assert observation_filter_stats(first.checkpoint).count >= 2 * 200

    cfg, checkpoint, overrides = prepare_resume(str(first.checkpoint.parent), ["stop.iterations=3"])
    resumed = train(cfg, resume=checkpoint, echo=lambda line: None, resumed_with=overrides)
    assert resumed.run_id == first.run_id and resumed.iterations == 3
    client = mlflow.MlflowClient(mlflow_server)
    assert [m.step for m in client.get_metric_history(first.run_id, "entropy")] == [1, 2, 3]
    env_steps = [m.value for m in client.get_metric_history(first.run_id, "env_steps")]
    assert env_steps == sorted(env_steps) and env_steps[2] > env_steps[1]
    assert client.get_run(first.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "resources, ray_address, needed",
    [
        ({"num_env_runners": 0}, None, False),
        ({"num_env_runners": 1}, None, True),  # a runner actor
        ({"num_env_runners": 0}, "ray://head:10001", True),  # a cluster to join
        ({"num_env_runners": 0, "ray_address": "127.0.0.1:6379"}, None, True),
    ],
)
def test_ray_starts_only_for_actors_or_a_cluster(tmp_path, monkeypatch, resources, ray_address, needed):
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    settings = tiny_settings(tmp_path, "sqlite:///unused.db", iterations=1)
    settings["resources"].update(resources)
    assert needs_ray(parse_config(settings)) is needed
