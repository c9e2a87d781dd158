"""The tensor minibatches (`rllib_internals.TensorMinibatchesMixin`) are RLlib's: the same rows in the same order, and
a whole multi-epoch PPO update ends in the same weights and metrics as with RLlib's iterator; the written-out module
forward (`rllib_internals.LeanForwardMixin`) updates as the module's own `forward_train`, to the bit."""

import copy

import numpy as np
import pytest
import torch
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import ALL_MODULES, NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator

from entropilot import rllib_internals as internals
from entropilot.envs import make_env
from entropilot.platform.algorithm import algorithm_config, algorithm_settings
from entropilot.platform.config.loading import parse_config
from entropilot.policies.lean_gradients import with_rllib_gradients
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner
from entropilot.rllib_internals import (
    ppo_mlp_train_forward,
    tensor_minibatches,
    with_rllib_forward,
    with_rllib_minibatches,
)

MODULE = "default_policy"


# One torch thread, as a Ray actor and training's local learner have (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_batch(rows: int, obs_size: int = 3) -> MultiAgentBatch:
    generator = torch.Generator().manual_seed(rows)
    loss_mask = torch.ones(rows, dtype=torch.bool)
    loss_mask[::37] = False  # the extra timestep RLlib appends to each episode chunk
    data = {
        "obs": torch.randn(rows, obs_size, generator=generator),
        "actions": torch.randn(rows, 4, generator=generator),
        "action_logp": torch.randn(rows, generator=generator) - 1.0,
        "action_dist_inputs": torch.randn(rows, 8, generator=generator) * 0.3,
        "advantages": torch.randn(rows, generator=generator),
        "value_targets": torch.randn(rows, generator=generator),
        "loss_mask": loss_mask,
        "weights_seq_no": torch.zeros(rows, dtype=torch.int64),
    }
    return MultiAgentBatch({MODULE: SampleBatch(data)}, env_steps=rows)


@pytest.mark.parametrize(
    "rows, minibatch_size, num_epochs, num_total",
    [(203, 32, 3, 0), (128, 32, 2, 0), (50, 64, 3, 0), (203, 32, 1, 0), (203, 32, 3, 25)],
    ids=["wraps", "ends-on-the-last-row", "minibatch-over-batch", "one-epoch", "num_total_minibatches"],
)
def test_minibatches_are_rllibs_row_for_row(rows, minibatch_size, num_epochs, num_total):
    settings = dict(num_epochs=num_epochs, minibatch_size=minibatch_size, num_total_minibatches=num_total)
    np.random.seed(7)
    theirs = [
        dict(mb.policy_batches[MODULE])
        for mb in MiniBatchCyclicIterator(train_batch(rows), shuffle_batch_per_epoch=True, **settings)
    ]
    their_rng = np.random.get_state()[1]
    np.random.seed(7)
    ours = [dict(mb.policy_batches[MODULE]) for mb in tensor_minibatches(train_batch(rows), shuffle=True, **settings)]
    assert (np.random.get_state()[1] == their_rng).all()  # the same draws, so what samples next is unchanged too
    assert len(ours) == len(theirs)
    for index, (mine, reference) in enumerate(zip(ours, theirs)):
        last = index == len(theirs) - 1
        # Off-policyness is logged with window 1: only the last minibatch's weights_seq_no is ever read.
        assert set(mine) == set(reference) - (set() if last else {"weights_seq_no"})
        for key in mine:
            assert torch.equal(mine[key], reference[key]), (index, key)


def hover_learner(learner_class):
    cfg = parse_config({"resources": {"gpu": "off"}}, [])  # hover's defaults: PPO, entropy control on
    config = algorithm_config(**algorithm_settings(cfg), learner_class=learner_class)
    return config.build_learner(env=make_env("entropilot/Hover-v0"))


def updates(learner, batch: MultiAgentBatch) -> list[dict]:
    """Three updates (the entropy controller's coefficient moves between them), 3 epochs of 64-row minibatches over
    a 500-row batch (wrapping around its end), shuffled from numpy's seed 0 as RLlib does."""
    np.random.seed(0)
    results = []
    for step in range(3):
        results.append(
            learner.update(
                batch=copy.deepcopy(batch),
                timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 500 * (step + 1)},
                num_epochs=3,
                minibatch_size=64,
                shuffle_batch_per_epoch=True,
            )
        )
    return results


def numbers(results: list[dict]) -> dict:
    """The reported numbers (losses, entropy measures, coefficient, off-policyness, module and env steps trained),
    without timers, throughputs and what was not logged in that update (NaN)."""
    out = {}
    for step, result in enumerate(results):
        for scope in (MODULE, ALL_MODULES):
            for key, stats in result[scope].items():
                value = stats.peek() if hasattr(stats, "peek") else stats
                if isinstance(value, int | float | np.number | torch.Tensor) and "throughput" not in key:
                    if not np.isnan(float(value)):
                        out[(step, scope, key)] = float(value)
    return out


def test_a_multi_epoch_ppo_update_equals_rllibs_iteration(monkeypatch):
    lean = hover_learner(EntropyControlledPPOLearner)
    stock = hover_learner(with_rllib_minibatches(EntropyControlledPPOLearner))
    stock_gradients = hover_learner(with_rllib_minibatches(with_rllib_gradients(EntropyControlledPPOLearner)))
    for learner in (stock, stock_gradients):
        learner.module[MODULE].set_state(lean.module[MODULE].get_state())
    batch = train_batch(500, lean.module[MODULE].observation_space.shape[0])
    calls = []
    monkeypatch.setattr(internals, "tensor_minibatches", lambda *a, **k: calls.append(1) or tensor_minibatches(*a, **k))
    ours, theirs, all_rllib = (numbers(updates(learner, batch)) for learner in (lean, stock, stock_gradients))
    assert len(calls) == 3  # the lean learner took the tensor path on each update, the others RLlib's iterator
    # The same minibatch steps in the same order with the same gradient step: bit for bit.
    for key, value in lean.module[MODULE].state_dict().items():
        assert torch.equal(value, stock.module[MODULE].state_dict()[key]), key
    assert ours == theirs
    assert {"policy_loss", "vf_loss", "entropy", "total_loss", "entropy_effective", "curr_entropy_coeff"} <= {
        key for _, _, key in ours
    }
    assert ours[(2, MODULE, "diff_num_grad_updates_vs_sampler_policy")] == 3.0  # 3rd update; the batch was sampled at 0
    assert ours[(0, MODULE, "num_module_steps_trained")] == 24 * 64  # ceil(3 epochs * 500 rows / 64) minibatches
    # And RLlib's stock gradient step too, within float tolerance (tests/test_lean_gradients.py).
    for key, value in stock_gradients.module[MODULE].state_dict().items():
        torch.testing.assert_close(lean.module[MODULE].state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert ours.keys() == all_rllib.keys()
    for key, value in all_rllib.items():
        assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_the_written_out_forward_updates_as_the_modules_own(monkeypatch):
    lean = hover_learner(EntropyControlledPPOLearner)
    stock = hover_learner(with_rllib_forward(EntropyControlledPPOLearner))
    stock.module[MODULE].set_state(lean.module[MODULE].get_state())
    batch = train_batch(500, lean.module[MODULE].observation_space.shape[0])
    built = []
    monkeypatch.setattr(
        internals, "ppo_mlp_train_forward", lambda module: built.append(1) or ppo_mlp_train_forward(module)
    )
    ours = numbers(updates(lean, batch))
    assert len(built) == 3 * 24  # the lean learner took the written-out forward on every minibatch step
    theirs = numbers(updates(stock, batch))
    assert len(built) == 3 * 24  # and RLlib's module forward there
    for key, value in lean.module[MODULE].state_dict().items():
        assert torch.equal(value, stock.module[MODULE].state_dict()[key]), key
    assert ours == theirs


def test_the_written_out_forward_is_the_modules_forward_train():
    module = hover_learner(EntropyControlledPPOLearner).module[MODULE].unwrapped()
    batch = {"obs": torch.randn(33, module.observation_space.shape[0], generator=torch.Generator().manual_seed(1))}
    ours, theirs = ppo_mlp_train_forward(module)(batch), module.forward_train(batch)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    assert ppo_mlp_train_forward(torch.nn.Linear(2, 2)) is None  # anything else takes RLlib's path
