"""`ppo_loss` is PPO's loss: by hand on a three-row minibatch, and as RLlib's own loss over whole multi-epoch updates of
the hover learner (the same weights within float tolerance, the same reported statistics)."""

import math

import pytest
import torch
from test_lean_learner_iteration import MODULE, numbers, train_batch, updates

from entropilot.envs import make_env
from entropilot.platform.algorithm import algorithm_config, algorithm_settings
from entropilot.platform.config.loading import parse_config
from entropilot.policies.ppo_learner import EntropyControlledPPOLearner, with_rllib_loss
from entropilot.policies.ppo_loss import ppo_loss


def test_ppo_loss_by_hand():
    # Row 0: ratio e^0.5 = 1.65 > 1.2 with A = 2 > 0, so the clipped 1.2 * 2 counts. Row 1: ratio e^-0.5 = 0.61
    # < 0.8 with A = -1 < 0, so the clipped 0.8 * -1 counts. Row 2 is masked out and would dominate every term.
    terms = dict(
        logp=torch.tensor([0.5, -0.5, 9.0]),
        logp_old=torch.zeros(3),
        advantages=torch.tensor([2.0, -1.0, 100.0]),
        entropy=torch.tensor([1.0, 3.0, 50.0]),
        values=torch.tensor([1.0, 0.0, 20.0]),
        value_targets=torch.tensor([4.0, 1.0, 0.0]),
        mask=torch.tensor([True, True, False]),
        clip_param=0.2,
        vf_clip_param=5.0,
        vf_loss_coeff=0.5,
        entropy_coeff=0.1,
        kl=torch.tensor([0.3, 0.1, 7.0]),
        kl_coeff=2.0,
    )
    loss = ppo_loss(**terms)
    surrogate = (1.2 * 2.0 + 0.8 * -1.0) / 2  # 0.8
    vf = (min(9.0, 5.0) + 1.0) / 2  # errors 9 and 1, the first clipped at 5
    assert loss.policy.item() == pytest.approx(-surrogate)
    assert loss.vf.item() == pytest.approx(vf)
    assert loss.vf_unclipped.item() == pytest.approx(5.0)
    assert loss.entropy.item() == pytest.approx(2.0)
    assert loss.kl.item() == pytest.approx(0.2)
    assert loss.total.item() == pytest.approx(-surrogate + 0.5 * vf - 0.1 * 2.0 + 2.0 * 0.2)

    # At clip 0.45 row 0 (ratio 1.65 > 1.45, A > 0) stays clipped and carries no gradient; row 1 (ratio 0.61 > 0.55)
    # is not, and carries d(-A r / 2)/d logp = -A r / 2; the masked row carries none.
    logp = terms["logp"].clone().requires_grad_()
    ppo_loss(**{**terms, "logp": logp, "clip_param": 0.45, "kl": None}).total.backward()
    assert logp.grad.tolist() == pytest.approx([0.0, math.exp(-0.5) / 2, 0.0])

    # A covariance method's term replaces the surrogate in the total only; no critic makes the value terms 0.
    replaced = ppo_loss(**{**terms, "policy_term": torch.tensor(3.0), "values": None})
    assert replaced.policy.item() == pytest.approx(-surrogate)
    assert replaced.vf.item() == 0.0
    assert replaced.total.item() == pytest.approx(3.0 - 0.1 * 2.0 + 2.0 * 0.2)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"algorithm": {"kl_coeff": 0.0, "vf_clip": None}}],
    ids=["kl-and-value-clip", "hover-recipe"],
)
def test_updates_match_rllibs_loss(overrides):
    cfg = parse_config({"resources": {"gpu": "off"}, **overrides}, [])
    lean, stock = (
        algorithm_config(**algorithm_settings(cfg), learner_class=learner_class).build_learner(
            env=make_env("entropilot/Hover-v0")
        )
        for learner_class in (EntropyControlledPPOLearner, with_rllib_loss(EntropyControlledPPOLearner))
    )
    stock.module[MODULE].set_state(lean.module[MODULE].get_state())
    batch = train_batch(500, lean.module[MODULE].observation_space.shape[0])
    ours, theirs = (numbers(updates(learner, batch)) for learner in (lean, stock))
    for key, value in stock.module[MODULE].state_dict().items():
        torch.testing.assert_close(lean.module[MODULE].state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert ours.keys() == theirs.keys()
    assert {"policy_loss", "vf_loss", "vf_loss_unclipped", "vf_explained_var", "entropy", "mean_kl_loss"} <= {
        key for _, _, key in ours
    }
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
