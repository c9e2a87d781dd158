"""The policy's initial weights: the torch seed of each draw, the init family (output-layer gain, initial
std), and rebuilding a running algorithm's policy from them on every learner and env runner."""

import math
from dataclasses import dataclass

import gymnasium as gym
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

# Draw k of weight seed w uses torch seed 1000 * w + k (entropy-aware init makes at most 1000 draws), so no two
# (weight seed, draw) pairs share a seed.
DRAWS_PER_WEIGHT_SEED = 1000


def draw_seed(weight_seed: int, draw: int = 0) -> int:
    """The torch seed of draw `draw` of `weight_seed`. Draw 0 is what a run without entropy-aware init starts
    from, so two runs with the same weight seed start from the same weights whenever the init keeps draw 0."""
    if not 0 <= draw < DRAWS_PER_WEIGHT_SEED:
        raise ValueError(f"draw must be in [0, {DRAWS_PER_WEIGHT_SEED}); got {draw}")
    if weight_seed < 0:
        raise ValueError(f"weight_seed must be >= 0; got {weight_seed}")
    return DRAWS_PER_WEIGHT_SEED * weight_seed + draw


@dataclass(frozen=True)
class InitFamily:
    """How a drawn policy head starts, on top of RLlib's own initialization (torch's default per layer).

    `output_gain` multiplies the policy head's last layer (weights and bias) as drawn: 0.01 is the
    "small last layer" (every draw's mean is ~0: the draws hardly differ), 1 is RLlib's default, larger
    gains spread the draws' means over the action box, so some draws saturate and the entropy-aware
    init has something to reject. With a state-dependent log-std head (`free_log_std: false`) the gain
    also spreads the draws' stds. `initial_std` (None: as drawn; RLlib's free log std starts at 0, std 1)
    sets the Gaussian's std at init, in the policy's action units: the free log-std parameter, or the
    bias of a state-dependent log-std head (its weights keep the gain).
    """

    output_gain: float = 1.0
    initial_std: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.output_gain) and self.output_gain > 0):
            raise ValueError(f"output_gain must be a finite number > 0; got {self.output_gain}")
        if self.initial_std is not None and not (math.isfinite(self.initial_std) and self.initial_std > 0):
            raise ValueError(f"initial_std must be a finite number > 0 or None; got {self.initial_std}")

    def apply(self, module) -> None:
        """Scale and set `module`'s policy head in place (RLlib's default PPO module: `module.pi`)."""
        head = module.pi
        last = [layer for layer in head.modules() if isinstance(layer, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(self.output_gain)
            if last.bias is not None:
                last.bias.mul_(self.output_gain)
            if self.initial_std is None:
                return
            if not isinstance(module.action_space, gym.spaces.Box):
                raise ValueError(f"initial_std needs a Gaussian policy (Box actions); got {module.action_space}")
            log_std = math.log(self.initial_std)
            if isinstance(getattr(head, "log_std", None), torch.nn.Parameter):
                head.log_std.fill_(log_std)
            else:
                # RLlib's Gaussian inputs are [mean, log_std] halves of the last layer's output.
                last.bias[last.bias.shape[0] // 2 :].fill_(log_std)


# RLlib's own initialization, unchanged.
DEFAULT_FAMILY = InitFamily()


def reinitialize_policy(algo, seed: int, family: InitFamily = DEFAULT_FAMILY) -> None:
    """Rebuild every RLModule on every learner from its own spec under torch seed `seed`, shape it with
    `family`, then push the weights to all env runners.

    All learners get the same weights. The build runs on a forked torch RNG, so the learners' random
    stream afterwards (minibatch order...) does not depend on which seed or how many draws were made.
    """

    def _reinit(learner):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module_id in sorted(learner.module.keys()):
                module = learner.module[module_id].unwrapped()
                fresh = RLModuleSpec.from_module(module).build()
                family.apply(fresh)
                module.set_state(fresh.get_state())

    algo.learner_group.foreach_learner(_reinit)
    push_weights_to_env_runners(algo)


def push_weights_to_env_runners(algo) -> None:
    """Copy the learners' weights to every env runner (and the local one), whatever seq numbers they hold.

    RLlib's own sync sends the learner's `weights_seq_no`, and a runner ignores weights whose seq
    number is not above its own. That drops weights changed outside `train()`, e.g. after
    `restore_from_path` of an older checkpoint into a running algorithm. Sent without a seq number,
    the state is always taken and the runner keeps its own seq number, so later syncs work as usual.
    """
    weights = algo.learner_group.get_state(components="learner/rl_module", inference_only=True)
    module_state = {"rl_module": weights["learner"]["rl_module"]}
    algo.env_runner_group.foreach_env_runner(lambda runner: runner.set_state(module_state))
