"""Env-runner fault tolerance on real Ray with real PyBullet: a runner process killed with SIGKILL mid-training
is restarted, gets the current policy before it samples again, and training (also `entropilot train` into a
real MLflow server) goes on."""

import os
import signal
import sys

import mlflow
import numpy as np
import psutil
import pytest
import ray
from conftest import RAY_TEST_INIT, rllib_settings
from ray.exceptions import ActorUnavailableError
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray.rllib.utils.numpy import convert_to_numpy

from entropilot.platform.algorithm import build_algorithm
from entropilot.platform.config import parse_config
from entropilot.platform.train import train

RUNNERS = 2
TINY = {"episode_seconds": 2.0, "success_seconds": 1.0}
# Iterations (or pings) allowed for a killed runner to come back: Ray Core restarts the actor (new process,
# imports, env and module built) in seconds; meanwhile each iteration samples from the healthy runner and each
# ping of the restarting actor is refused after ~2 s.
MAX_ITERATIONS_TO_RECOVER = 60


@pytest.fixture(scope="module")
def ray_session():
    # The runner-side functions below travel by value: tests/ is not importable inside the runner actors.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(**RAY_TEST_INIT)
    yield
    ray.shutdown()


@pytest.fixture
def algo(ray_session):
    algo = build_algorithm(
        **rllib_settings(
            {
                "env.kwargs": TINY,
                "algorithm.train_batch_size": 200,
                "algorithm.minibatch_size": 100,
                "algorithm.num_epochs": 1,
                "resources.num_env_runners": RUNNERS,
                "resources.envs_per_runner": 1,
                "resources.num_cpus_per_env_runner": 0.5,
            }
        )
    )
    yield algo
    algo.stop()


def _runner_report(runner) -> dict:
    filter_state = runner.get_state(components="env_to_module_connector")["env_to_module_connector"]
    return {
        "index": runner.worker_index,
        "pid": os.getpid(),
        "seq_no": runner._weights_seq_no,
        "weights": convert_to_numpy(runner.module.get_state(inference_only=True)),
        "filter_count": filter_state["MeanStdFilter"][None]["running_stats"][0]["num_pushes"],
    }


def runners(algo) -> dict[int, dict]:
    """What each healthy remote runner holds now, by runner index."""
    return {r["index"]: r for r in algo.env_runner_group.foreach_env_runner(_runner_report, local_env_runner=False)}


def learner_weights(algo) -> tuple[int, dict]:
    state = algo.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True)[
        COMPONENT_LEARNER
    ]
    weights = state[COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
    return state[WEIGHTS_SEQ_NO], convert_to_numpy(weights)


def assert_runners_hold_the_learners_policy(algo) -> None:
    seq_no, weights = learner_weights(algo)
    now = runners(algo)
    assert sorted(now) == list(range(1, RUNNERS + 1))
    for runner in now.values():
        assert runner["seq_no"] == seq_no > 0
        assert runner["weights"].keys() == weights.keys()
        for name, value in weights.items():
            np.testing.assert_array_equal(runner["weights"][name], value, err_msg=f"runner {runner['index']}: {name}")
    # The observation filter is merged and broadcast every iteration: a restored runner holds the merged one too.
    assert len({runner["filter_count"] for runner in now.values()}) == 1


def kill(pid: int) -> None:
    """SIGKILL, as a crash or the OOM killer would, and wait until the process is gone."""
    process = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_until_ray_restarted(algo, index: int) -> None:
    """Ping runner `index` straight through its actor handle, not through RLlib, so RLlib sees no failure."""
    actor = algo.env_runner_group._worker_manager._actors[index]
    for _ in range(MAX_ITERATIONS_TO_RECOVER):
        try:
            ray.get(actor.ping.remote())
            return
        except ActorUnavailableError:  # "the actor is restarting": answered within ~2 s
            continue
    pytest.fail(f"Ray Core did not restart runner {index}")


def test_a_killed_runner_is_restarted_synced_and_sampled_from_again(algo):
    steps = [algo.train()["env_runners"]["num_env_steps_sampled_lifetime"]]
    before = runners(algo)

    # A runner killed while the driver is between calls: the next call to it fails, RLlib takes it out of
    # service, samples from the other one, and brings it back once Ray Core has restarted it.
    kill(before[1]["pid"])
    healthy = []
    for _ in range(MAX_ITERATIONS_TO_RECOVER):
        result = algo.train()
        steps.append(result["env_runners"]["num_env_steps_sampled_lifetime"])
        healthy.append(result["fault_tolerance"]["num_healthy_workers"])
        if healthy[-1] == RUNNERS:
            break
    assert healthy[0] == RUNNERS - 1 and healthy[-1] == RUNNERS  # it was out, and it is back
    assert result["fault_tolerance"]["num_remote_worker_restarts"] == 1
    assert all(later > earlier for earlier, later in zip(steps, steps[1:]))  # every iteration sampled
    after = runners(algo)
    assert after[1]["pid"] != before[1]["pid"] and after[2]["pid"] == before[2]["pid"]
    assert_runners_hold_the_learners_policy(algo)

    # A runner that Ray Core has already restarted when the next call reaches it: no call fails, so plain RLlib
    # would let it sample with its freshly built policy (weights_seq_no 0). Ours restores it first.
    kill(after[2]["pid"])
    wait_until_ray_restarted(algo, 2)
    assert runners(algo)[2]["seq_no"] == 0  # back, unsynced
    assert algo.restore_env_runners(algo.env_runner_group) == [2]
    assert_runners_hold_the_learners_policy(algo)
    result = algo.train()
    assert result["fault_tolerance"]["num_healthy_workers"] == RUNNERS
    assert result["fault_tolerance"]["num_remote_worker_restarts"] == 2
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] > steps[-1]


def _my_env_runner_pids() -> list[int]:
    """PIDs of the env-runner actors of this process's own Ray (raylet and workers are its descendants)."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "EnvRunner" in " ".join(process.cmdline()):  # SingleAgentEnvRunner or our BulkEnvRunner
                pids.append(process.pid)
        except psutil.Error:  # exited (or a zombie of an earlier test's runner) since children() listed it
            continue
    return pids


@pytest.mark.parametrize("path", [("stock", "sync"), ("bulk", "batched")], ids="/".join)
def test_entropilot_train_survives_a_killed_runner(path, tmp_path, mlflow_server, isolated_mlflow_env, ray_session):
    iterations = 6
    cfg = parse_config(
        {
            "name": "fault-tolerance",
            "env": {"id": "entropilot/Hover-v0", "kwargs": TINY},
            "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
            "entropy": {"init": {"enabled": False}},
            "resources": {
                "num_env_runners": RUNNERS,
                "envs_per_runner": 1,
                "num_cpus_per_env_runner": 0.5,
                "sampler": path[0],
                "vector_env": path[1],
            },
            "mlflow": {
                "tracking_uri": mlflow_server,
                "experiment": "test-fault-tolerance",
                "registered_model": None,
                "video": False,
                "system_metrics": False,
            },
            "stop": {"iterations": iterations},
            "evaluation": {"interval": None},
            "checkpoint": {"interval": None, "dir": str(tmp_path / "runs")},
        }
    )
    killed = []
    earlier = set(_my_env_runner_pids())  # a process of an earlier test's runners may still be exiting

    def echo(line: str) -> None:  # called once per iteration, between iterations
        if line.startswith("iter") and not killed:
            pids = sorted(set(_my_env_runner_pids()) - earlier)
            assert len(pids) == RUNNERS
            kill(pids[0])
            killed.append(pids[0])

    result = train(cfg, echo=echo)
    assert killed and result.iterations == iterations

    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    env_steps = client.get_metric_history(result.run_id, "env_steps")
    assert [m.step for m in env_steps] == list(range(1, iterations + 1))
    values = [m.value for m in env_steps]
    assert all(later > earlier for earlier, later in zip(values, values[1:]))
    healthy = [m.value for m in client.get_metric_history(result.run_id, "env_runners_healthy")]
    assert healthy[0] == RUNNERS and healthy[1] == RUNNERS - 1  # the kill after iteration 1 shows in iteration 2
    assert len(client.get_metric_history(result.run_id, "env_runner_restarts")) == iterations
