"""SAC's flat replay (`platform/replay.py`) held to RLlib's: the transitions it keeps are the rows SAC's learner
connector makes of the same episodes (continued chunks, crashes and time limits included), and RLlib's SAC learner
updates from those columns alone; the lean SAC gradient step (one backward pass, fused Adam) updates as RLlib's does.
Runner and learners are built in this process, without Ray."""

import numpy as np
import pytest
import torch
from conftest import rllib_settings
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from entropilot.platform.algorithm import algorithm_config, make_env_creator
from entropilot.platform.replay import TRANSITION_COLUMNS, TransitionBuffer, episode_transitions
from entropilot.policies import learner_metrics
from entropilot.policies.sac_learner import ResumableSACLearner, with_rllib_sac_gradients
from entropilot.rllib_internals import learner_connector_batch

# Short hover episodes (24 steps at 48 Hz) and a tight tilt limit: two sample calls hold continued chunks, time-limit
# ends and crashes of the untrained policy.
ENV_CONFIG = {"episode_seconds": 0.5, "success_seconds": 0.25, "max_tilt_deg": 30.0}
SAC = {
    "algorithm.name": "SAC",
    "algorithm.train_batch_size": 32,
    "model.hidden": [16, 16],
    "entropy.init.enabled": False,
    "entropy.collapse.floor": None,
    "resources.num_env_runners": 0,
    "resources.envs_per_runner": 2,
    "resources.gpu": "off",
}


# One torch thread, as a Ray actor and training's local learner have (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sac_config(**settings):
    return algorithm_config(
        **rllib_settings(SAC, env=make_env_creator("entropilot/Hover-v0"), env_config=ENV_CONFIG, seed=3, **settings)
    )


@pytest.fixture(scope="module")
def runner_and_learner():
    config = sac_config()
    runner = SingleAgentEnvRunner(config=config)
    learner = config.build_learner(spaces=runner.get_spaces())
    return runner, learner


def test_transitions_are_the_rows_of_rllibs_sac_learner_connector(runner_and_learner):
    runner, learner = runner_and_learner
    ends = {"terminated": 0, "truncated": 0, "continued": 0}
    for _ in range(2):
        episodes = runner.sample(num_timesteps=80, random_actions=False)
        theirs = learner_connector_batch(learner, episodes)[DEFAULT_MODULE_ID]
        ours = [episode_transitions(episode) for episode in episodes]
        for column in TRANSITION_COLUMNS:
            np.testing.assert_array_equal(
                np.concatenate([rows[column] for rows in ours]),
                np.asarray(theirs[column], dtype=ours[0][column].dtype),
                err_msg=column,
            )
        ends["terminated"] += sum(episode.is_terminated for episode in episodes)
        ends["truncated"] += sum(episode.is_truncated for episode in episodes)
        ends["continued"] += sum(episode.t_started > 0 for episode in episodes)
    assert all(ends.values()), ends  # every kind of chunk end was compared


def test_rllibs_sac_learner_updates_from_the_flat_columns_alone(runner_and_learner):
    runner, learner = runner_and_learner
    buffer = TransitionBuffer(capacity=500, seed=0)
    assert buffer.add_episodes(runner.sample(num_timesteps=100, random_actions=False)) >= 100
    module = learner.module[DEFAULT_MODULE_ID]
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    log_alpha = learner.curr_log_alpha[DEFAULT_MODULE_ID].item()
    batch = buffer.train_batch(32, DEFAULT_MODULE_ID)
    assert set(batch.policy_batches[DEFAULT_MODULE_ID].keys()) == {*TRANSITION_COLUMNS, "weights", "n_step"}
    result = learner.update(batch=batch, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 100})[DEFAULT_MODULE_ID]
    moved = {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    # Actor, both critics (one step each) and the targets (Polyak) all moved; so did the temperature.
    for part in ("pi", "qf", "qf_twin", "target_qf", "target_qf_twin"):
        assert any(name.startswith(f"{part}.") or name.startswith(f"{part}_encoder.") for name in moved), part
    assert learner.curr_log_alpha[DEFAULT_MODULE_ID].item() != log_alpha
    for metric in (learner_metrics.SAC_LOGPS, learner_metrics.SAC_ALPHA, learner_metrics.SAC_TARGET_ENTROPY):
        assert np.isfinite(float(result[metric].peek())), metric


def test_the_buffer_keeps_the_newest_rows_and_draws_only_from_those():
    buffer = TransitionBuffer(capacity=5, seed=1)

    def rows(first: int, count: int) -> dict:
        values = np.arange(first, first + count, dtype=np.float32)
        return {
            Columns.OBS: values[:, None].repeat(3, axis=1),
            Columns.ACTIONS: values[:, None].repeat(4, axis=1),
            Columns.REWARDS: values,
            Columns.NEXT_OBS: values[:, None].repeat(3, axis=1) + 1,
            Columns.TERMINATEDS: values % 2 == 0,
        }

    buffer.add(rows(0, 3))
    assert buffer.size == 3 and set(buffer.sample(200)[Columns.REWARDS]) == {0, 1, 2}
    buffer.add(rows(3, 4))  # wraps: 0 and 1 are overwritten
    assert buffer.size == 5 and set(buffer.sample(400)[Columns.REWARDS]) == {2, 3, 4, 5, 6}
    buffer.add(rows(7, 12))  # more than it holds: the newest 5
    sample = buffer.sample(400)
    assert set(sample[Columns.REWARDS]) == {14, 15, 16, 17, 18}
    # A row stays one transition across columns.
    np.testing.assert_array_equal(sample[Columns.NEXT_OBS][:, 0], sample[Columns.REWARDS] + 1)
    np.testing.assert_array_equal(sample[Columns.TERMINATEDS], sample[Columns.REWARDS] % 2 == 0)
    np.testing.assert_array_equal(sample["weights"], 1.0)
    np.testing.assert_array_equal(sample["n_step"], 1.0)


def test_the_lean_sac_gradient_step_updates_as_rllibs(runner_and_learner):
    runner, _ = runner_and_learner
    buffer = TransitionBuffer(capacity=500, seed=0)
    buffer.add_episodes(runner.sample(num_timesteps=100, random_actions=False))
    lean, stock = (
        sac_config(learner_class=learner_class).build_learner(spaces=runner.get_spaces())
        for learner_class in (ResumableSACLearner, with_rllib_sac_gradients(ResumableSACLearner))
    )
    for optimizer in ("qf", "qf_twin", "policy", "alpha"):
        fused = [learner_.get_optimizer(DEFAULT_MODULE_ID, optimizer).defaults["fused"] for learner_ in (lean, stock)]
        assert fused == [True, None], optimizer
    stock.set_state(lean.get_state())
    initial = {key: value.clone() for key, value in lean.module[DEFAULT_MODULE_ID].state_dict().items()}
    batches = [buffer.train_batch(32, DEFAULT_MODULE_ID) for _ in range(3)]
    for learner_ in (lean, stock):
        torch.manual_seed(5)  # the same reparameterized action noise
        for step, batch in enumerate(batches):
            learner_.update(batch=batch, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 100 + step})
    ours, theirs = (learner_.module[DEFAULT_MODULE_ID].state_dict() for learner_ in (lean, stock))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(lean.curr_log_alpha[DEFAULT_MODULE_ID], stock.curr_log_alpha[DEFAULT_MODULE_ID])
    assert sum(not torch.equal(ours[key], initial[key]) for key in ours) > len(ours) // 2  # it learned
