"""The bulk sampling path held to RLlib's own: MeanStdFilter's arithmetic over whole vector steps, and
`BulkEnvRunner` against the stock `SingleAgentEnvRunner` on the same env seeds, weights and action noise (the
episodes, their chunking across `sample()` calls, the metrics, and the loss inputs PPO's learner connector makes
of them). Runners and learner are built in this process, without Ray."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import rllib_settings
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.filter import MeanStdFilter as RunningMeanStd
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from entropilot.platform.algorithm import algorithm_config, make_env_creator
from entropilot.platform.bulk_filter import filter_rows
from entropilot.platform.bulk_policy import gaussian_mlp_step
from entropilot.platform.bulk_runner import BulkEnvRunner
from entropilot.platform.config import ConfigError, parse_config
from entropilot.rllib_internals import learner_connector_batch, module_forward

# Short hover episodes (24 steps at 48 Hz), so fragments hold finished, continued and freshly reset episodes.
SHORT = {"episode_seconds": 0.5, "success_seconds": 0.25}
HOVER = (make_env_creator("entropilot/Hover-v0"), SHORT)
# Runners and learner in this process, on the CPU.
LOCAL = {"resources.num_env_runners": 0, "resources.gpu": "off"}
# name -> (env, env_config, vector_env, free_log_std): the runners' vector env is Gymnasium's SyncVectorEnv, or for
# hover also the batched DroneVectorEnv (all drones in one PyBullet world). A free log std (training's Gaussian
# policy, here on the batched world as training runs it) takes the bulk sampler's written-out step (`bulk_policy`);
# the others call the module.
ENVS = {
    "hover": (*HOVER, "sync", False),
    "hover-batched-free-log-std": (*HOVER, "batched", True),
    "pendulum": ("Pendulum-v1", {"max_episode_steps": 40}, "sync", False),  # Box(-2, 2): RLlib unsquashes
    "cartpole": ("CartPole-v1", {}, "sync", False),  # Discrete: a categorical head
    # MultiDiscrete velocity commands (a multi-categorical head) over the velocity loop; no batched world.
    "hover-discrete": (make_env_creator("entropilot/HoverDiscrete-v0"), SHORT, "sync", False),
}


# One torch thread, as a Ray actor and training's local learner have (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


STATS = (
    "num_pushes",
    "num_pushes_delta",
    "mean_array",
    "mean_delta_array",
    "sum_sq_diff_array",
    "sum_sq_diff_delta_array",
)


def test_filter_rows_is_meanstdfilter_row_by_row():
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 100.0, 0.01, 1.0])
    offset = np.array([0.0, 5.0, -3.0, 1e3, 0.0])
    stock, bulk = RunningMeanStd(np.array([5])), RunningMeanStd(np.array([5]))
    for step in range(200):
        rows = (rng.normal(size=(8, 5)) * scale + offset).astype(np.float32)
        expected = np.stack([stock(row) for row in rows])
        got = filter_rows(bulk, rows)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        if step == 100:  # a merge elsewhere: both filters get the same new statistics (deltas cleared)
            state = stock.running_stats.to_state() | {"num_pushes_delta": 0}
            stock.running_stats = RunningStat.from_state(state)
            bulk.running_stats = RunningStat.from_state(state)
    for name in STATS:
        np.testing.assert_allclose(getattr(bulk.running_stats, name), getattr(stock.running_stats, name), rtol=1e-10)
    # Without updates: the current statistics, nothing pushed.
    before = bulk.running_stats.num_pushes
    expected = np.stack([stock(row, update=False) for row in rows])
    np.testing.assert_allclose(filter_rows(bulk, rows, update=False), expected, rtol=0, atol=1e-6)
    assert bulk.running_stats.num_pushes == before


def runner_pair(env: str | tuple, num_envs: int = 4) -> tuple:
    """(config, stock runner, bulk runner) of one env (a key of ENVS, or (env, env_config, vector_env,
    free_log_std)) with the same weights and env seeds."""
    creator, env_config, vector_env, free_log_std = ENVS[env] if isinstance(env, str) else env
    # free_log_std False (a state-dependent log std, as these tests were first written with) where the actions are
    # not a Box: RLlib has a free log std for a Gaussian head only, and the schema, whose env is Hover here, would
    # give one to the categorical envs too.
    settings = rllib_settings(
        {**LOCAL, "resources.envs_per_runner": num_envs, "seed": 7, "resources.vector_env": vector_env},
        env=creator,
        env_config=env_config,
        free_log_std=free_log_std,
    )
    config = algorithm_config(**settings)
    stock, bulk = SingleAgentEnvRunner(config=config), BulkEnvRunner(config=config)
    bulk.module.set_state(stock.module.get_state())
    return config, stock, bulk


def sample_both(stock, bulk, noise_seed: int, **sample_args) -> tuple[list, list]:
    """The same `sample()` call on both runners, each with the same torch noise stream."""
    torch.manual_seed(noise_seed)
    from_stock = stock.sample(**sample_args)
    torch.manual_seed(noise_seed)
    return from_stock, bulk.sample(**sample_args)


def assert_same_episodes(stock: list, bulk: list, ids: dict) -> None:
    """Chunk by chunk: bounds, lookback, data and model outputs; ``ids`` maps stock ids to bulk ids across calls
    (a continued episode keeps its id on both sides, a new one gets a new id on both)."""
    assert len(bulk) == len(stock)
    for s, b in zip(stock, bulk):
        assert ids.setdefault(s.id_, b.id_) == b.id_
        assert (b.t_started, b.t, b.is_terminated, b.is_truncated) == (
            s.t_started,
            s.t,
            s.is_terminated,
            s.is_truncated,
        )
        assert b.is_numpy and b.observation_space == s.observation_space
        for name in ("observations", "actions", "rewards"):
            mine, theirs = getattr(b, name), getattr(s, name)
            assert mine.lookback == theirs.lookback, name
            np.testing.assert_allclose(mine.data, theirs.data, rtol=1e-4, atol=1e-5, err_msg=name)
        assert b.extra_model_outputs.keys() == s.extra_model_outputs.keys()
        for key, theirs in s.extra_model_outputs.items():
            mine = b.extra_model_outputs[key]
            assert mine.lookback == theirs.lookback and mine.data.dtype == theirs.data.dtype, key
            np.testing.assert_allclose(mine.data, theirs.data, rtol=1e-4, atol=1e-5, err_msg=key)
        assert len(b.infos) == len(s.infos)
        if s.is_done and "is_success" in s.infos[-1]:
            assert b.infos[-1]["is_success"] == s.infos[-1]["is_success"]
    assert len(set(ids.values())) == len(ids)


def peek(metrics: dict) -> dict:
    return MetricsLogger.peek_results(metrics)


@pytest.mark.parametrize("env", sorted(ENVS))
@pytest.mark.parametrize("explore", [True, False])
def test_bulk_runner_samples_what_the_stock_runner_samples(env, explore):
    _, stock, bulk = runner_pair(env)
    ids: dict = {}
    finished = 0
    # Several calls: chunks continue across them (and across episode ends and autoresets).
    for call, steps in enumerate([40, 30, 110, 130]):
        from_stock, from_bulk = sample_both(stock, bulk, call, num_timesteps=steps, explore=explore)
        assert_same_episodes(from_stock, from_bulk, ids)
        finished += sum(episode.is_done for episode in from_bulk)
    assert finished >= 4 and len(ids) > finished  # episodes ended and new ones began
    s, b = peek(stock.get_metrics()), peek(bulk.get_metrics())
    for key in (
        "num_env_steps_sampled",
        "num_env_steps_sampled_lifetime",
        "num_episodes",
        "num_episodes_lifetime",
        "episode_len_mean",
        "episode_len_min",
        "episode_len_max",
    ):
        assert b[key] == s[key], key
    for key in ("episode_return_mean", "episode_return_min", "episode_return_max"):
        assert b[key] == pytest.approx(s[key], rel=1e-4), key
    filters = [r.get_state(components="env_to_module_connector")["env_to_module_connector"] for r in (stock, bulk)]
    stock_stats, bulk_stats = (f["MeanStdFilter"][None]["running_stats"][0] for f in filters)
    assert bulk_stats["num_pushes"] == stock_stats["num_pushes"]
    np.testing.assert_allclose(
        RunningStat.from_state(bulk_stats).std, RunningStat.from_state(stock_stats).std, rtol=1e-5
    )


class Countdown(gym.Env):
    """Episodes of 2 to `longest` steps (truncated; the length drawn at reset from the env's seeded stream),
    observation = steps taken: short episodes that end out of step across the envs of a vector."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, config=None):
        self.longest = (config or {}).get("longest", 4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps, self.length = 0, int(self.np_random.integers(2, self.longest + 1))
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.steps += 1
        return np.array([self.steps], np.float32), 1.0, False, self.steps >= self.length, {"steps": self.steps}


@pytest.mark.parametrize("num_envs", [1, 3])
def test_chunks_at_every_kind_of_fragment_boundary(num_envs):
    # Many short calls over short episodes: episodes ending on a fragment's last step (their env resets on the next
    # fragment's first step), an env resetting on a fragment's last step (its new episode has only its first
    # observation, carried over), one-step fragments, and chunks continued over several calls.
    _, stock, bulk = runner_pair((Countdown, {"longest": 4}, "sync", False), num_envs=num_envs)
    ids: dict = {}
    for call in range(40):
        from_stock, from_bulk = sample_both(stock, bulk, call, num_timesteps=1 + call % 4)
        assert_same_episodes(from_stock, from_bulk, ids)
    assert peek(bulk.get_metrics())["num_episodes_lifetime"] == peek(stock.get_metrics())["num_episodes_lifetime"] > 0


def test_random_actions_and_whole_episodes_match_the_stock_runner():
    _, stock, bulk = runner_pair("hover")
    ids: dict = {}
    stock.env.action_space.seed(3)
    bulk.env.action_space.seed(3)
    assert_same_episodes(*sample_both(stock, bulk, 0, num_timesteps=100, random_actions=True), ids)
    # num_episodes runs RLlib's own loop from reset envs; sampling by steps afterwards starts from reset envs too.
    from_stock, from_bulk = sample_both(stock, bulk, 1, num_episodes=5)
    assert len(from_bulk) >= 5 and all(episode.is_done for episode in from_bulk)
    assert_same_episodes(from_stock, from_bulk, {})
    assert_same_episodes(*sample_both(stock, bulk, 2, num_timesteps=100, force_reset=True), {})


@pytest.mark.parametrize("env", sorted(ENVS))
def test_ppo_loss_inputs_equal_on_both_paths(env):
    config, stock, bulk = runner_pair(env)
    learner = config.build_learner(spaces=stock.get_spaces())
    weights = learner.module[DEFAULT_MODULE_ID].get_state(inference_only=True)
    stock.module.set_state(weights)
    bulk.module.set_state(weights)
    dist_class = learner.module[DEFAULT_MODULE_ID].get_train_action_dist_cls()
    for call, steps in enumerate([150, 150]):
        batches = [
            learner_connector_batch(learner, episodes)[DEFAULT_MODULE_ID]
            for episodes in sample_both(stock, bulk, call, num_timesteps=steps)
        ]
        stock_batch, bulk_batch = batches
        assert bulk_batch.keys() == stock_batch.keys()
        for column in (
            Columns.OBS,
            Columns.ACTIONS,
            Columns.REWARDS,
            Columns.TERMINATEDS,
            Columns.TRUNCATEDS,
            Columns.ACTION_LOGP,
            Columns.ACTION_DIST_INPUTS,
            Columns.ADVANTAGES,
            Columns.VALUE_TARGETS,
            Columns.LOSS_MASK,
        ):
            np.testing.assert_allclose(
                _array(bulk_batch[column]), _array(stock_batch[column]), rtol=1e-4, atol=1e-5, err_msg=column
            )
        # The stored logp is the log-density of the stored action under the stored distribution inputs.
        for batch in batches:
            dist = dist_class.from_logits(torch.as_tensor(_array(batch[Columns.ACTION_DIST_INPUTS])))
            recomputed = dist.logp(torch.as_tensor(_array(batch[Columns.ACTIONS]))).numpy()
            mask = _array(batch[Columns.LOSS_MASK])
            np.testing.assert_allclose(recomputed[mask], _array(batch[Columns.ACTION_LOGP])[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_written_out_gaussian_step_is_the_modules_to_the_bit(activation):
    settings = rllib_settings({**LOCAL, "model.activation": activation, "model.hidden": [32, 16]})
    runner = BulkEnvRunner(config=algorithm_config(**settings))
    module = runner.module
    dist_class = module.get_exploration_action_dist_cls()
    observations = np.random.default_rng(0).normal(size=(8, module.observation_space.shape[0])).astype(np.float32)
    module.eval()
    for log_std in (-1.3, 25.0):  # 25: beyond the head's clamp (20), which the step must apply too
        with torch.no_grad():
            module.pi.log_std.fill_(log_std)
        torch.manual_seed(5)
        actions, outputs = runner._act(module_forward(module, True), dist_class, True, observations, 0)
        torch.manual_seed(5)
        step = gaussian_mlp_step(module, dist_class)
        assert step is not None
        got_actions, got_outputs = step(observations)
        assert got_actions.dtype == actions.dtype and np.array_equal(got_actions, actions)
        assert got_outputs.keys() == outputs.keys()
        for key, value in outputs.items():
            assert got_outputs[key].dtype == value.dtype and np.array_equal(got_outputs[key], value), key


@pytest.mark.parametrize("env", ["hover", "cartpole"])
def test_other_policies_call_the_module(env):
    # A state-dependent log std (hover here), a categorical head (cartpole): the runner calls the module for them.
    creator, env_config, vector_env, free_log_std = ENVS[env]
    settings = rllib_settings(
        {**LOCAL, "resources.vector_env": vector_env}, env=creator, env_config=env_config, free_log_std=free_log_std
    )
    module = BulkEnvRunner(config=algorithm_config(**settings)).module
    assert gaussian_mlp_step(module, module.get_exploration_action_dist_cls()) is None


def _array(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class _CountsSteps(RLlibCallback):
    def on_episode_step(self, **kwargs):
        pass


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"restart_failed_sub_environments": True}, "does not recreate failed sub-environments"),
        ({"callbacks_class": _CountsSteps}, "_CountsSteps.on_episode_step"),
    ],
)
def test_bulk_runner_refuses_what_it_does_not_reproduce(settings, message):
    config = algorithm_config(**rllib_settings({**LOCAL, "env.kwargs": SHORT}))
    config = config.copy(copy_frozen=False)
    if "callbacks_class" in settings:
        config.callbacks(settings["callbacks_class"])
    else:
        config.fault_tolerance(**settings)
    with pytest.raises(ValueError, match=message):
        BulkEnvRunner(config=config)


def test_bulk_sampler_and_batched_envs_are_single_agent():
    # What the schema refuses, algorithm_config refuses too (for a caller who changes its settings).
    with pytest.raises(ValueError, match="multi-agent env needs sampler='stock'"):
        algorithm_config(**rllib_settings(LOCAL, multi_agent=True, sampler="bulk"))
    with pytest.raises(ValueError, match="multi-agent env needs vector_env='sync'"):
        algorithm_config(**rllib_settings(LOCAL, multi_agent=True, vector_env="batched"))
    with pytest.raises(ValueError, match="sampler must be one of"):
        algorithm_config(**rllib_settings(LOCAL, sampler="fast"))
    with pytest.raises(ValueError, match="vector_env must be one of"):
        algorithm_config(**rllib_settings(LOCAL, vector_env="async"))
    for field, value in (("sampler", "bulk"), ("vector_env", "batched")):
        with pytest.raises(ConfigError, match=f"resources.{field}"):
            parse_config({"env": {"id": "entropilot/Swarm-v0"}, "resources": {field: value}})
    # The discrete-command task samples in bulk from single envs; it has no batched world.
    discrete = {"id": "entropilot/HoverDiscrete-v0"}
    assert parse_config({"env": discrete, "resources": {"sampler": "bulk"}}).resources.sampler == "bulk"
    message = (
        r"resources.vector_env: batched is for the envs with a batched world \['entropilot/Hover-v0', "
        r"'entropilot/Waypoint-v0'\]; entropilot/HoverDiscrete-v0 needs sync \(got 'batched'\)"
    )
    with pytest.raises(ConfigError, match=message):
        parse_config({"env": discrete, "resources": {"sampler": "bulk", "vector_env": "batched"}})
