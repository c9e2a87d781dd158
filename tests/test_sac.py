"""SAC honest: the config's SAC settings reach RLlib (read back from the built algorithm, its learner and its replay
buffer), and SAC on hover runs through `entropilot train`, exports its squashed Gaussian as tanh(mean) and flies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import ray
from click.testing import CliRunner
from conftest import RAY_TEST_INIT, restored_mlflow_env
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME, NUM_MODULE_STEPS_TRAINED_LIFETIME

from entropilot.cli import main as cli
from entropilot.deploy.contract import SQUASHED_DETERMINISTIC_ACTION
from entropilot.deploy.export import export_policy
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.envs import HOVER_ID, make_env
from entropilot.platform.config import load_config, parse_config
from entropilot.platform.evaluation import GreedyPolicy
from entropilot.platform.train import MODULE_ID, build_from_config, train

pytestmark = pytest.mark.integration

SETTINGS = {
    "tau": 0.02,
    "initial_alpha": 0.3,
    "target_entropy": -2.5,
    "replay_capacity": 5000,
    "learning_starts": 300,
    "updates_per_env_step": 0.5,
}
TINY = {
    "env": {"id": HOVER_ID, "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
    "algorithm": {"name": "SAC", "train_batch_size": 64, **SETTINGS},
    "model": {"hidden": [32, 32]},
    "entropy": {"init": {"enabled": False}, "collapse": {"floor": None}},
    "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
}


@pytest.fixture(scope="module", autouse=True)
def ray_module():
    ray.init(**RAY_TEST_INIT)
    yield
    ray.shutdown()


def on_learner(algo, fn):
    return [result.get() for result in algo.learner_group.foreach_learner(fn)][0]


def test_the_sac_settings_reach_rllib():
    algo = build_from_config(parse_config(TINY))
    try:
        c = algo.config
        assert (c.tau, c.initial_alpha, c.target_entropy) == (0.02, 0.3, -2.5)
        assert c.replay_buffer_config["capacity"] == 5000 and c.num_steps_sampled_before_learning_starts == 300
        assert algo.transitions.capacity == 5000  # the buffer that was built
        assert c.training_intensity == 0.5 * 64  # replayed transitions per env step: RLlib's form of 0.5 updates
        alpha, target, tau = on_learner(
            algo,
            lambda learner: (
                learner.curr_log_alpha[MODULE_ID].exp().item(),
                float(learner.target_entropy[MODULE_ID]),
                learner.config.get_config_for_module(MODULE_ID).tau,
            ),
        )
        assert alpha == pytest.approx(0.3) and target == -2.5 and tau == 0.02
    finally:
        algo.stop()
    auto = build_from_config(parse_config({**TINY, "algorithm": {"name": "SAC", "train_batch_size": 64}}))
    try:  # "auto": RLlib's -(action dims); the config's defaults (RLlib's own buffer would hold 1e6 steps)
        assert on_learner(auto, lambda learner: float(learner.target_entropy[MODULE_ID])) == -4.0
        assert auto.transitions.capacity == 100_000
    finally:
        auto.stop()


def learner_weights(algo) -> dict:
    return on_learner(algo, lambda learner: learner.module[MODULE_ID].get_state(inference_only=True))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_the_training_step_replays_at_its_ratio_and_a_restored_run_refills_first(tmp_path):
    """`FaultTolerantSAC.training_step`: updates_per_env_step updates per env step once learning_starts transitions
    are in, the runner flying the learner's newest weights; the buffer is not in the checkpoint, so a restored run
    samples learning_starts env steps again before its next update."""
    algo = build_from_config(parse_config(TINY))  # one env: each training step samples one env step
    try:
        while (result := algo.train())["env_runners"][NUM_ENV_STEPS_SAMPLED_LIFETIME] < 340:
            pass
        env_steps = result["env_runners"][NUM_ENV_STEPS_SAMPLED_LIFETIME]
        updates = result["learners"][MODULE_ID][NUM_MODULE_STEPS_TRAINED_LIFETIME] / 64
        assert updates == pytest.approx((env_steps - 299) * 0.5, abs=1)  # from the step that filled 300
        runner_weights = algo.env_runner.module.get_state(inference_only=True)
        assert_same_weights(runner_weights, learner_weights(algo))
        checkpoint = algo.save_to_path(tmp_path / "checkpoint")
    finally:
        algo.stop()
    restored = build_from_config(parse_config(TINY))
    try:
        restored.restore_from_path(checkpoint)
        saved = learner_weights(restored)
        assert restored.transitions.size == 0
        for _ in range(299):
            restored.training_step()
        assert_same_weights(learner_weights(restored), saved)  # 299 transitions: no update yet
        restored.training_step()
        restored.training_step()  # 300 and 301 transitions: 2 x 0.5 updates
        assert restored.transitions.size == 301
        assert learner_weights(restored).keys() == saved.keys()
        assert any(
            not np.array_equal(np.asarray(value), np.asarray(saved[name]))
            for name, value in learner_weights(restored).items()
        )
    finally:
        restored.stop()


def test_hover_sac_trains_exports_as_tanh_of_the_mean_and_flies(tmp_path, mlflow_server):
    """The pipeline, not success: a few SAC iterations of configs/hover_sac.yaml through train, export and fly."""
    cfg = load_config(
        "configs/hover_sac.yaml",
        [
            f"mlflow.tracking_uri={mlflow_server}",
            "mlflow.experiment=test-sac",
            "stop={iterations: 3}",
            "algorithm.train_batch_size=64",
            "algorithm.learning_starts=100",  # ~100 env steps an iteration: the 2nd and 3rd update
            "evaluation.interval=3",
            "evaluation.episodes=2",
            "checkpoint.interval=null",
            f"checkpoint.dir={tmp_path / 'runs'}",
            "resources.envs_per_runner=1",
            "resources.num_cpus_per_env_runner=0.5",
        ],
    )
    lines: list[str] = []
    with restored_mlflow_env():
        result = train(cfg, echo=lines.append)
    assert not [line for line in lines if "live settings" in line]  # SAC has no live entropy settings to refuse
    last = result.history[-1]
    assert result.iterations == 3 and "success_rate" in last
    assert cfg.algorithm.target_entropy == "auto" and last["entropy_target"] == -4.0  # -(action dims)
    assert last["entropy_coeff"] > 0  # SAC's temperature alpha
    assert math.isfinite(last["entropy"])  # -E[log pi]

    exported = export_policy(result.checkpoint, tmp_path / "sac.onnx", parity_batch=64)
    assert exported.metadata["deterministic_action"] == SQUASHED_DETERMINISTIC_ACTION
    assert exported.metadata["algorithm"] == "SAC" and exported.parity_error <= 1e-5
    # The file's action is tanh of the Gaussian's mean, as the greedy policy training evaluates with.
    from entropilot.deploy.export import load_rl_module
    from entropilot.platform.algorithm import observation_filter_stats

    module = load_rl_module(result.checkpoint, MODULE_ID)
    greedy = GreedyPolicy(module, observation_filter_stats(result.checkpoint))
    env = make_env(HOVER_ID, **cfg.env.kwargs)
    obs, _ = env.reset(seed=0)
    policy = OnnxPolicy(exported.path)
    np.testing.assert_allclose(policy(obs), greedy(obs), atol=1e-5)
    assert greedy.squashed

    flown = CliRunner().invoke(cli, ["fly", str(exported.path), "--episodes", "1"])
    assert flown.exit_code in (0, 1), flown.output  # 1: the 3-iteration policy did not succeed
    assert f"Flying 1 episode(s) of {HOVER_ID}" in flown.output and "final state disarmed" in flown.output
