"""Entropy machinery against real Ray/RLlib on Pendulum-v1: the controlled PPO entropy coefficient in its modes,
entropy-aware initialization and paired initial weights, and checkpoint round trips (controller, SAC temperature,
obs filter)."""

import math
import sys

import numpy as np
import pytest
import ray
import torch
from conftest import RAY_TEST_INIT, rllib_settings
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.filter import MeanStdFilter, RunningStat

from entropilot.platform.algorithm import (
    SAMPLERS,
    build_algorithm,
    local_gpu_learner_or_cpu,
    observation_filter_stats,
    resolve_learner_resources,
)
from entropilot.policies import learner_metrics as lm
from entropilot.policies.entropy_init import entropy_aware_init, measure_draw, sample_action_dist_inputs, search_outcome
from entropilot.policies.initial_weights import InitFamily, draw_seed, push_weights_to_env_runners, reinitialize_policy

pytestmark = pytest.mark.integration  # every test here runs under the module's Ray

MODULE = "default_policy"
# What the learner logs per module (`policies.learner_metrics`), and RLlib's own `entropy` (last minibatch) beside it.
GAUSSIAN, EFFECTIVE, CATEGORICAL = (lm.entropy_metric(name) for name in ("gaussian", "effective", "categorical"))
BATCH = 256
# Pendulum-v1, with the settings these tests were measured with where the schema's defaults differ: one env per
# runner (a 256-step batch then holds whole 200-step episodes), a state-dependent log std, and no entropy controller
# unless a test sets one.
PPO = rllib_settings(
    {
        "model.hidden": [32, 32],
        "algorithm.train_batch_size": BATCH,
        "algorithm.minibatch_size": 128,
        "algorithm.num_epochs": 1,
        "resources.num_env_runners": 1,
        "resources.envs_per_runner": 1,
        "resources.num_cpus_per_env_runner": 0.5,
        "model.free_log_std": False,
        "entropy.control.enabled": False,
    },
    env="Pendulum-v1",
    env_config={},
)
# A minimum far above Pendulum's ~1.4 nats: the lower-bound controller must raise the coefficient every iteration.
CONTROL = {"measure": "gaussian", "target": 10.0, "initial_coef": 0.1, "coef_max": 10.0, "gain": 0.5}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    # Remote learners can't import this test module: ship the functions we send them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(**RAY_TEST_INIT)
    yield
    ray.shutdown()


def build(settings: dict, **changes) -> Algorithm:
    """`build_algorithm` of ``settings`` with ``changes`` replacing some of them."""
    return build_algorithm(**{**settings, **changes})


def on_learners(algo, fn):
    return [result.get() for result in algo.learner_group.foreach_learner(fn)]


def runner_policy_gap(algo):
    """Largest difference between what the env runners' policy outputs and the learner module's."""
    sample = sample_action_dist_inputs(algo, 50)
    obs = torch.as_tensor(sample.observations)
    forward = on_learners(
        algo, lambda lrn: lrn.module[MODULE].forward_inference({"obs": obs})["action_dist_inputs"].detach().numpy()
    )
    return np.abs(sample.action_dist_inputs - forward[0]).max()


def controller_state(learner):
    return learner.entropy_coeff_schedulers_per_module[MODULE].controller.state_dict()


def coefficient_used(previous, current, vf_loss_coeff):
    """Solve PPO's logged loss parts (last minibatch) for the entropy coefficient that loss used.

    total = policy_loss + vf_coeff * vf_loss - coef * entropy + kl_coeff * mean_kl, where the KL
    coefficient in force was the one logged after the previous update.
    """
    known = (
        current[lm.POLICY_LOSS]
        + vf_loss_coeff * current[lm.VF_LOSS]
        + previous[lm.CURR_KL_COEFF] * current[lm.MEAN_KL_LOSS]
    )
    return (known - current["total_loss"]) / current["entropy"]


@pytest.fixture(scope="module")
def controlled_ppo():
    algo = build(PPO, entropy_control=CONTROL)
    results = [algo.train()["learners"][MODULE] for _ in range(3)]
    yield algo, results
    algo.stop()


@pytest.fixture(scope="module")
def restored_ppo(controlled_ppo, tmp_path_factory):
    algo, _ = controlled_ppo
    path = algo.save_to_path(tmp_path_factory.mktemp("ppo") / "checkpoint")
    restored = Algorithm.from_checkpoint(path)
    yield path, restored
    restored.stop()


def test_controller_sets_the_coefficient_ppo_uses(controlled_ppo):
    algo, results = controlled_ppo
    coefs = [r[lm.CURR_ENTROPY_COEFF] for r in results]
    assert CONTROL["initial_coef"] < coefs[0] < coefs[1] < coefs[2]
    # The loss of each update used the coefficient the controller set after the previous one.
    for previous, current in zip(results, results[1:]):
        used = coefficient_used(previous, current, algo.config.vf_loss_coeff)
        assert used == pytest.approx(previous[lm.CURR_ENTROPY_COEFF], rel=1e-3)
    live = on_learners(algo, lambda lrn: lrn.entropy_coeff_schedulers_per_module[MODULE].get_current_value())
    assert live == [pytest.approx(coefs[-1])]
    # The controller was fed the logged (gaussian) entropy.
    assert on_learners(algo, controller_state)[0]["last_error"] == pytest.approx(
        CONTROL["target"] - results[-1][GAUSSIAN]
    )
    for r in results:
        assert r[lm.ENTROPY_TARGET] == CONTROL["target"]
        assert r[lm.dim_metric(GAUSSIAN, 0)] == pytest.approx(r[GAUSSIAN])
        assert r[lm.dim_metric(EFFECTIVE, 0)] == pytest.approx(r[EFFECTIVE])
        # Ours averages every minibatch of the update, PPO's `entropy` is the last minibatch's.
        assert r[GAUSSIAN] == pytest.approx(r["entropy"], abs=0.05)
        # Std ~1 around a mean ~0 in [-1, 1] units: about a third of the sampled actions lay outside and were
        # clipped by the env (RLlib keeps the unclipped sample in the batch).
        assert 0.15 < r[lm.CLIPPED_FRACTION] == r[lm.dim_metric(lm.CLIPPED_FRACTION, 0)] < 0.6
        assert r[EFFECTIVE] < r[GAUSSIAN]


def test_controller_state_survives_checkpoint(controlled_ppo, restored_ppo):
    algo, results = controlled_ppo
    _, restored = restored_ppo
    before = on_learners(algo, controller_state)
    assert before[0]["num_updates"] == len(results)
    assert on_learners(restored, controller_state) == before
    coefficient = on_learners(restored, lambda lrn: lrn.entropy_coeff_schedulers_per_module[MODULE].get_current_value())
    assert coefficient == [results[-1][lm.CURR_ENTROPY_COEFF]]


def test_observation_filter_stats_after_training_and_restore(controlled_ppo, restored_ppo):
    algo, _ = controlled_ppo
    path, restored = restored_ppo
    stats = observation_filter_stats(algo)
    assert stats.count >= 3 * BATCH
    assert stats.mean.shape == stats.std.shape == (3,) and np.all(stats.std > 0)
    assert stats.clip == 10.0
    for other in (observation_filter_stats(path), observation_filter_stats(restored)):
        np.testing.assert_array_equal(other.mean, stats.mean)
        np.testing.assert_array_equal(other.std, stats.std)
        assert (other.count, other.clip) == (stats.count, stats.clip)
    # `normalize` is RLlib's own filter arithmetic.
    rllib_filter = MeanStdFilter((3,), clip=stats.clip)
    state = algo.env_runner.get_state(components="env_to_module_connector")["env_to_module_connector"]
    (rllib_filter.running_stats,) = [RunningStat.from_state(s) for s in state["MeanStdFilter"][None]["running_stats"]]
    observations = np.random.default_rng(0).normal(0, 3, size=(16, 3))
    expected = np.stack([rllib_filter(o, update=False) for o in observations])
    np.testing.assert_allclose(stats.normalize(observations), expected, rtol=1e-6)


def test_no_filter_no_stats():
    algo = build(PPO, normalize_observations=False)
    try:
        assert observation_filter_stats(algo) is None
    finally:
        algo.stop()


def test_learners_share_the_averaged_entropy():
    """Two learners see different shards; all-reduced entropy keeps their controllers identical."""
    control = {**CONTROL, "measure": "effective"}
    # The module fixtures hold 1 of the 2 CPUs; a learner asking for a whole one would wait forever.
    algo = build(PPO, num_learners=2, num_cpus_per_learner=0.25, entropy_control=control)
    try:
        entropy_aware_init(algo, threshold=1e9, max_draws=2, rollout_steps=100)
        first, second = on_learners(algo, lambda lrn: lrn.module[MODULE].unwrapped().get_state())
        assert all(torch.equal(torch.as_tensor(first[k]), torch.as_tensor(second[k])) for k in first)
        for _ in range(2):
            result = algo.train()["learners"][MODULE]
        first, second = on_learners(algo, controller_state)
        assert first == second and first["num_updates"] == 2
        assert first["last_error"] == pytest.approx(control["target"] - result[EFFECTIVE])
    finally:
        algo.stop()


@pytest.fixture(scope="module", params=SAMPLERS)
def fresh_ppo(request):
    algo = build(PPO, sampler=request.param)
    yield algo
    algo.stop()


def test_entropy_init_keeps_best_of_all_draws_and_runners_use_it(fresh_ppo):
    algo = fresh_ppo
    result = entropy_aware_init(algo, threshold=1e9, weight_seed=1, max_draws=3, rollout_steps=200)
    assert [d.seed for d in result.draws] == [1000, 1001, 1002]
    assert len({d.entropy for d in result.draws}) == 3
    assert result.chosen == max(result.draws, key=lambda d: d.entropy) and not result.cleared
    assert all(len(d.per_dim) == 1 and d.per_dim[0] == pytest.approx(d.entropy) for d in result.draws)

    def expected_weights(learner):
        torch.manual_seed(result.chosen.seed)
        fresh = RLModuleSpec.from_module(learner.module[MODULE]).build().get_state()
        return all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(fresh[k]))
            for k, v in learner.module[MODULE].get_state().items()
        )

    assert on_learners(algo, expected_weights) == [True]
    # The env runners act with exactly these weights.
    assert runner_policy_gap(algo) < 1e-5

    # Same seeds, same env resets and action noise: the search is reproducible, so a threshold
    # between the best two draws stops exactly at the best one.
    ranked = sorted(result.draws, key=lambda d: d.entropy)
    threshold = (ranked[-1].entropy + ranked[-2].entropy) / 2
    cleared = entropy_aware_init(algo, threshold=threshold, weight_seed=1, max_draws=3, rollout_steps=200)
    assert cleared.cleared and cleared.chosen == result.chosen
    assert cleared.draws == result.draws[: result.draws.index(result.chosen) + 1]
    first = entropy_aware_init(algo, threshold=-math.inf, weight_seed=1, max_draws=3, rollout_steps=200)
    assert first.draws == result.draws[:1] and first.chosen == result.draws[0]


def test_entropy_init_leaves_no_trace_in_training(fresh_ppo):
    algo = fresh_ppo
    entropy_aware_init(algo, threshold=1e9, max_draws=2, rollout_steps=300)
    assert observation_filter_stats(algo).count == 0
    runners = algo.train()["env_runners"]
    # Only the training batch was counted, and its first episode started at a fresh reset.
    assert runners["num_env_steps_sampled_lifetime"] == BATCH
    assert runners["num_episodes_lifetime"] == BATCH // 200
    assert BATCH <= observation_filter_stats(algo).count <= BATCH + 2


def test_arms_are_paired_when_the_init_keeps_draw_0():
    """Init off (draw 0) and an init that keeps draw 0 after sampling train identically: same weights, same env
    seeds, and the init's sampling leaves no trace in any random stream."""

    def first_iteration(init):
        algo = build(PPO)
        try:
            init(algo)
            result = algo.train()["learners"][MODULE]
            weights = on_learners(algo, lambda lrn: lrn.module[MODULE].get_state())[0]
            return result, weights
        finally:
            algo.stop()

    plain, plain_weights = first_iteration(lambda algo: reinitialize_policy(algo, draw_seed(7, 0)))
    init, init_weights = first_iteration(
        lambda algo: entropy_aware_init(algo, threshold=-math.inf, weight_seed=7, rollout_steps=300)
    )
    for key in ("total_loss", GAUSSIAN, EFFECTIVE, lm.CLIPPED_FRACTION, lm.VF_LOSS):
        assert init[key] == plain[key], key
    assert all(torch.equal(torch.as_tensor(init_weights[k]), torch.as_tensor(v)) for k, v in plain_weights.items())


def test_a_threshold_sweep_moves_the_kept_entropy_and_the_acceptance_rate():
    """In an init family whose weights matter (a state-dependent log-std head, gain 8), the threshold decides what
    the init keeps: from draw 0 (every draw clears) to the best of the search (none clears), over 1 nat apart."""
    algo = build(PPO, free_log_std=False)
    family = InitFamily(output_gain=8.0, initial_std=0.3)
    try:
        searches = [
            [measure_draw(algo, draw_seed(seed, k), family, "effective", 200, 0) for k in range(5)] for seed in range(6)
        ]
        # The init itself, run with a threshold, keeps what `search_outcome` reads off the same draws.
        pooled = sorted(d.entropy for draws in searches for d in draws)
        median = pooled[len(pooled) // 2]
        live = entropy_aware_init(algo, threshold=median, weight_seed=2, max_draws=5, family=family, rollout_steps=200)
        assert live == search_outcome(searches[2], median)
        # Upside down (the study's worst-of-N arm): every draw is made and the lowest kept, whatever the threshold.
        worst = entropy_aware_init(
            algo, threshold=median, weight_seed=2, max_draws=5, family=family, rollout_steps=200, keep="lowest"
        )
        assert worst == search_outcome(searches[2], median, "lowest")
        assert len(worst.draws) == 5 and worst.chosen.entropy == min(d.entropy for d in searches[2])
    finally:
        algo.stop()

    def sweep(threshold):
        outcomes = [search_outcome(draws, threshold) for draws in searches]
        kept = float(np.mean([o.chosen.entropy for o in outcomes]))
        return kept, sum(d >= threshold for d in pooled) / len(pooled)

    (bottom, all_clear), (middle, half), (top, none_clear) = (sweep(t) for t in (pooled[0], median, pooled[-1] + 1))
    assert (all_clear, none_clear) == (1.0, 0.0) and 0.3 < half < 0.7
    assert bottom < middle < top and top - bottom >= 1.0
    assert bottom == pytest.approx(np.mean([draws[0].entropy for draws in searches]))  # the init off: draw 0


@pytest.mark.parametrize(
    "control",
    [
        {"mode": "fixed", "target": None, "initial_coef": 0.02},
        {"mode": "sigma_schedule", "sigma": [[0, 0.5], [2 * BATCH, 0.25]]},
    ],
    ids=["fixed", "sigma_schedule"],
)
def test_fixed_coefficient_and_sigma_schedule(control, tmp_path):
    algo = build(PPO, free_log_std=True, entropy_control=control)

    def learner_log_std():
        return on_learners(algo, lambda lrn: lrn.module[MODULE].unwrapped().pi.log_std.detach().tolist())[0]

    try:
        results = [algo.train()["learners"][MODULE] for _ in range(3)]
        if control["mode"] == "fixed":
            assert [r[lm.CURR_ENTROPY_COEFF] for r in results] == [0.02] * 3
            assert all(lm.ENTROPY_TARGET not in r for r in results)
            return
        # After iteration k the std is sigma(env steps so far): the next batch is sampled with it. Coefficient 0.
        assert [r[lm.SIGMA_TARGET] for r in results] == pytest.approx([0.375, 0.25, 0.25])
        assert [r[lm.CURR_ENTROPY_COEFF] for r in results] == [0.0] * 3
        assert learner_log_std() == pytest.approx([math.log(0.25)])
        assert np.allclose(sample_action_dist_inputs(algo, 20).action_dist_inputs[:, 1], math.log(0.25))
        # The first batch was sampled, and its update started, at sigma(0) = 0.5; PPO's gradient moved nothing.
        assert results[0][GAUSSIAN] == pytest.approx(0.5 * math.log(2 * math.pi * math.e) + math.log(0.5))
        # A checkpoint holds the std; restored into a running algorithm, training goes on along the schedule.
        older = algo.save_to_path(tmp_path / "older")
        on_learners(algo, lambda lrn: lrn.module[MODULE].unwrapped().pi.log_std.data.fill_(0.0))
        algo.restore_from_path(older)
        assert learner_log_std() == pytest.approx([math.log(0.25)])
        assert algo.train()["learners"][MODULE][GAUSSIAN] == pytest.approx(
            0.5 * math.log(2 * math.pi * math.e) + math.log(0.25)
        )
    finally:
        algo.stop()


def test_entropy_init_measures_the_same_through_both_samplers():
    """Same seeds, same weights, same action noise: the bulk runner's rollouts give the stock runner's entropies."""
    results = {}
    for sampler in SAMPLERS:
        algo = build(PPO, sampler=sampler)
        try:
            results[sampler] = entropy_aware_init(algo, threshold=1e9, weight_seed=3, max_draws=2, rollout_steps=300)
        finally:
            algo.stop()
    stock, bulk = (results[sampler].draws for sampler in SAMPLERS)
    assert [d.seed for d in bulk] == [d.seed for d in stock]
    assert [d.entropy for d in bulk] == pytest.approx([d.entropy for d in stock], abs=1e-4)


def test_restoring_an_older_checkpoint_into_a_running_algo(tmp_path):
    """RLlib 2.60: the learner takes the old weights, the remote runner (higher seq no) ignores them."""
    algo = build(PPO, lr=1e-2)
    try:
        algo.train()
        older = algo.save_to_path(tmp_path / "older")
        for _ in range(2):
            algo.train()
        algo.restore_from_path(older)
        assert runner_policy_gap(algo) > 1e-3
        push_weights_to_env_runners(algo)
        assert runner_policy_gap(algo) < 1e-5
    finally:
        algo.stop()


SAC = rllib_settings(
    {
        "algorithm.name": "SAC",
        "model.hidden": [32, 32],
        "algorithm.lr": 1e-2,
        "algorithm.train_batch_size": 32,
        "algorithm.learning_starts": 32,
        "resources.num_env_runners": 0,
        "resources.envs_per_runner": 1,  # as measured (the schema's default is 4)
    },
    env="Pendulum-v1",
    env_config={},
)


@pytest.mark.parametrize("stock", [True, False], ids=["stock-rllib", "resumable"])
def test_sac_temperature_after_restore(stock, tmp_path):
    algo = build(SAC, learner_class=SACTorchLearner if stock else None)
    restored = None
    try:
        algo.train()
        alpha = on_learners(algo, lambda lrn: lrn.curr_log_alpha[MODULE].exp().item())[0]
        assert abs(alpha - 1.0) > 1e-3  # the temperature has moved away from initial_alpha
        restored = Algorithm.from_checkpoint(algo.save_to_path(tmp_path / "checkpoint"))
        restored_alpha = on_learners(restored, lambda lrn: lrn.curr_log_alpha[MODULE].exp().item())[0]
        if stock:
            assert restored_alpha == pytest.approx(1.0)  # RLlib 2.60 restarts from initial_alpha
        else:
            assert restored_alpha == alpha
    finally:
        algo.stop()
        if restored is not None:
            restored.stop()


@pytest.mark.parametrize(
    "gpu, num_learners, available, expected",
    [
        ("auto", 0, 0, (0, 0)),
        ("auto", 2, 0, (2, 0)),
        ("off", 0, 4, (0, 0)),
        ("auto", 0, 1, (0, 1)),  # one GPU: the local learner (a single remote GPU learner hangs)
        ("on", 0, 2, (2, 1)),
        ("auto", 1, 2, (0, 1)),
        ("auto", 3, 2, (2, 1)),
    ],
)
def test_resolve_learner_resources(gpu, num_learners, available, expected):
    resolved = resolve_learner_resources(gpu, num_learners, available_gpus=available)
    assert (resolved["num_learners"], resolved["num_gpus_per_learner"]) == expected


def test_gpu_on_without_gpu_fails():
    with pytest.raises(RuntimeError, match="no GPU"):
        resolve_learner_resources("on", 0, available_gpus=0)


def test_a_single_gpu_learner_needs_the_gpu_in_this_process(caplog):
    one_local = resolve_learner_resources("auto", 0, available_gpus=1)
    assert local_gpu_learner_or_cpu(one_local, "auto", visible_gpus=1) == one_local
    with caplog.at_level("WARNING"):
        assert local_gpu_learner_or_cpu(one_local, "auto", visible_gpus=0) == {
            "num_learners": 0,
            "num_gpus_per_learner": 0,
        }
    assert "not on this node" in caplog.text
    with pytest.raises(RuntimeError, match="entrypointNumGpus"):
        local_gpu_learner_or_cpu(resolve_learner_resources("on", 0, available_gpus=1), "on", visible_gpus=0)
    remote = resolve_learner_resources("on", 0, available_gpus=2)  # remote learners get their GPUs from Ray
    assert local_gpu_learner_or_cpu(remote, "on", visible_gpus=0) == remote


CARTPOLE = {**PPO, "env": "CartPole-v1"}  # Discrete(2): a categorical head, at most ln 2 nats


def test_a_categorical_policy_goes_through_the_same_measure_and_controller():
    # The configured measure is the effective one; a categorical policy has one entropy, which the controller reads.
    control = {"measure": "effective", "target": math.log(2), "gain": 0.5}  # the default mode: lower_bound
    algo = build(CARTPOLE, entropy_control=control)
    try:
        results = [algo.train()["learners"][MODULE] for _ in range(2)]
        last_error = on_learners(algo, controller_state)[0]["last_error"]
    finally:
        algo.stop()
    for r in results:
        assert EFFECTIVE not in r and GAUSSIAN not in r and lm.CLIPPED_FRACTION not in r
        assert 0 < r[CATEGORICAL] == r[lm.dim_metric(CATEGORICAL, 0)] <= math.log(2)
        assert r[CATEGORICAL] == pytest.approx(r["entropy"], abs=0.05)  # PPO's own, last minibatch
        assert r[lm.ENTROPY_TARGET] == pytest.approx(math.log(2))
    assert last_error == pytest.approx(math.log(2) - results[-1][CATEGORICAL])
    assert results[-1][lm.CURR_ENTROPY_COEFF] > 0  # below the minimum: pushed up, never a penalty


def test_a_threshold_sweep_moves_a_categorical_policys_kept_entropy():
    """The init family's output gain spreads a categorical head's draws too, so the threshold decides what is kept."""
    algo = build(CARTPOLE)
    family = InitFamily(output_gain=8.0)
    try:
        searches = [
            [measure_draw(algo, draw_seed(seed, k), family, "effective", 200, 0) for k in range(5)] for seed in range(6)
        ]
    finally:
        algo.stop()
    pooled = sorted(d.entropy for draws in searches for d in draws)
    assert 0 <= pooled[0] and pooled[-1] <= math.log(2)
    median = pooled[len(pooled) // 2]
    kept = {
        threshold: float(np.mean([search_outcome(draws, threshold).chosen.entropy for draws in searches]))
        for threshold in (pooled[0], median, pooled[-1])
    }
    # Measured: draws 0.24-0.66 nats, kept 0.44 / 0.59 / 0.61 (a quarter of the ln 2 range).
    assert kept[pooled[0]] < kept[median] < kept[pooled[-1]] and kept[pooled[-1]] - kept[pooled[0]] >= 0.1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"entropy_control": {"mode": "sigma_schedule", "sigma": 0.5}}, "sigma_schedule sets a Gaussian's std"),
        ({"covariance_control": {"mode": "clip_cov", "per_dimension": True}}, "per_dimension scores a Gaussian's"),
    ],
)
def test_gaussian_only_learner_settings_refuse_a_categorical_policy(settings, message):
    with pytest.raises(ValueError, match=rf"{message}.*'default_policy' acts on Discrete\(2\)"):
        build(CARTPOLE, num_env_runners=0, **settings)
