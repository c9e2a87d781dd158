"""`entropilot train` on the multi-agent swarm: one policy shared by all drones, real Ray, real PyBullet,
a real MLflow server; plus the pieces it rests on (pooled filter statistics, swarm evaluation)."""

import mlflow
import numpy as np
from ray.rllib.utils.filter import RunningStat

from entropilot.envs import SWARM_ID, make_env
from entropilot.envs.evaluate import run_swarm_episodes, summarize
from entropilot.platform.algorithm import SHARED_POLICY_ID, pool_running_stats
from entropilot.platform.config import parse_config
from entropilot.platform.names import ENTROPY_INIT_TAG
from entropilot.platform.train import STATE_FILE, train

SWARM_KWARGS = {"num_drones": 3, "episode_seconds": 2.0, "success_seconds": 1.0}


def tiny_swarm_config(tmp_path, uri):
    return parse_config(
        {
            "name": "tiny-swarm",
            "env": {"id": SWARM_ID, "kwargs": SWARM_KWARGS},
            "algorithm": {"train_batch_size": 150, "minibatch_size": 150, "num_epochs": 1},
            "model": {"hidden": [32, 32]},
            # init on: train must skip it for the multi-agent env (and say so), not fail.
            # A minimum above a std-1 policy's ~4.35 effective nats: the lower bound raises the coefficient.
            "entropy": {"init": {"enabled": True}, "control": {"target": 5.0, "coef": 0.01}},
            "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
            "mlflow": {"tracking_uri": uri, "experiment": "test-swarm", "video": True, "system_metrics": False},
            "stop": {"iterations": 2},
            "evaluation": {"interval": 2, "episodes": 1},
            "checkpoint": {"interval": 2, "dir": str(tmp_path / "runs")},
        }
    )


def test_swarm_trains_one_shared_policy_into_mlflow(tmp_path, mlflow_server, isolated_mlflow_env, ray_session):
    lines = []
    result = train(tiny_swarm_config(tmp_path, mlflow_server), echo=lines.append)

    assert result.iterations == 2 and (result.checkpoint / STATE_FILE).is_file()
    # One RLModule, the shared one, in the checkpoint; no per-drone modules.
    modules = result.checkpoint / "learner_group" / "learner" / "rl_module"
    assert sorted(p.name for p in modules.iterdir() if p.is_dir()) == [SHARED_POLICY_ID]
    assert any("entropy-aware init skipped" in line for line in lines)

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[ENTROPY_INIT_TAG].startswith("skipped")
    # The learner metrics of the shared module arrive: entropy, its parts and the controlled coefficient.
    entropy = client.get_metric_history(result.run_id, "entropy")
    assert [m.step for m in entropy] == [1, 2] and all(np.isfinite(m.value) for m in entropy)
    assert [m.step for m in client.get_metric_history(result.run_id, "entropy_per_dim/0")] == [1, 2]
    coefficients = [m.value for m in client.get_metric_history(result.run_id, "entropy_coeff")]
    assert len(coefficients) == 2 and coefficients[0] != coefficients[1]  # per-module control acts on "shared_policy"
    # Evaluation: 1 episode x 3 drones, success_rate is the fraction of drones that succeeded.
    (success,) = client.get_metric_history(result.run_id, "success_rate")
    assert success.step == 2 and success.value in (0.0, 1 / 3, 2 / 3, 1.0)
    assert result.success_rate == success.value
    env_steps = [m.value for m in client.get_metric_history(result.run_id, "env_steps")]
    assert len(env_steps) == 2 and env_steps[1] > env_steps[0] > 0
    assert {"plots", "checkpoint", "video"} <= {a.path for a in client.list_artifacts(result.run_id)}


def test_run_swarm_episodes_reports_every_drone():
    env = make_env(SWARM_ID, **SWARM_KWARGS)
    try:
        results = run_swarm_episodes(env, lambda obs: np.zeros(4, dtype=np.float32), episodes=2, seed=5)
    finally:
        env.close()
    assert [(r.seed, r.agent) for r in results] == [(s, f"drone_{i}") for s in (5, 6) for i in range(3)]
    for r in results:
        assert r.length >= 1 and r.positions.shape == (r.length + 1, 3) and r.targets.shape == (r.length + 1, 3)
        assert r.crash is not None or r.length == env.settings.max_episode_steps
    assert summarize(results)["success_rate"] == np.mean([r.success for r in results])


def test_pooled_filter_statistics_equal_those_of_all_samples():
    rng = np.random.default_rng(0)
    samples = [
        rng.normal(loc, scale, size=(n, 3)) for loc, scale, n in ((0.0, 1.0, 50), (1.0, 2.0, 80), (-0.5, 0.3, 7))
    ]
    stats = []
    for agent_samples in samples:
        stat = RunningStat(shape=(3,))
        for x in agent_samples:
            stat.push(x)
        stats.append(stat)
    count, mean, std = pool_running_stats(stats)
    union = np.concatenate(samples)
    assert count == len(union)
    np.testing.assert_allclose(mean, union.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, union.std(0, ddof=1), rtol=1e-5)
