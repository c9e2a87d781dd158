"""The bulk sampler's exploring policy step for RLlib's default PPO policy (an MLP actor with a free log std): the
module's layers called one after another and the Gaussian draw written out.

Why: on a vector step of 8 drones the module's forward (its encoder and head dicts, each layer's `__call__`
hooks) and `TorchDiagGaussian` (a `torch.distributions.Normal` built, checked and broadcast per step, the tiled log
std) cost ~230 µs; the same arithmetic op by op costs ~100 µs, on a step whose physics is ~170 µs. The numbers are
the module's and the distribution's to the bit, drawing from torch's global generator as they do, so a seeded run
samples the same actions on either path (tests/test_bulk_sampling.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian

from entropilot import rllib_internals as internals

# torch.distributions.Normal.log_prob's constant, written as it writes it.
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class GaussianMLPStep:
    """Actions, their log-probabilities and the distribution inputs for one vector step's observations, as the
    module's `forward_exploration` and a `TorchDiagGaussian` sample make them. Built per rollout: it reads the
    weights and the log std as they are then."""

    def __init__(self, layers: list[torch.nn.Module], log_std: torch.Tensor):
        with torch.inference_mode():
            # `forward`, not `__call__`: the hooks machinery costs more than a 64-wide layer's arithmetic.
            self._forwards = [layer.forward for layer in layers]
            scale = log_std.exp()  # TorchDiagGaussian.from_logits
            self._scale = scale
            self._two_var = 2 * scale**2  # Normal.log_prob: var = scale ** 2, then / (2 * var)
            self._log_scale = scale.log()
            self._log_std = log_std.detach().numpy()

    def __call__(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.inference_mode():
            mean = torch.from_numpy(observations)
            for forward in self._forwards:
                mean = forward(mean)
            actions = torch.normal(mean, self._scale.expand_as(mean))
            logp = (-((actions - mean) ** 2) / self._two_var - self._log_scale - _LOG_SQRT_2PI).sum(-1)
        mean_rows = mean.numpy()
        width = mean_rows.shape[1]
        dist_inputs = np.empty((len(mean_rows), 2 * width), np.float32)
        dist_inputs[:, :width] = mean_rows
        dist_inputs[:, width:] = self._log_std  # broadcast by the assignment: np.broadcast_to costs ~10 µs a call
        return actions.numpy(), {Columns.ACTION_DIST_INPUTS: dist_inputs, Columns.ACTION_LOGP: logp.numpy()}


def gaussian_mlp_step(module, dist_class) -> GaussianMLPStep | None:
    """The written-out step for `module` exploring with `dist_class`, or None where the module is not RLlib's MLP
    actor with a free log std, the distribution not its diagonal Gaussian, or the weights not on the CPU (the
    runner then calls the module)."""
    actor = internals.free_log_std_actor(module)
    if actor is None or dist_class is not TorchDiagGaussian:
        return None
    layers, log_std = actor
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for layer in layers for p in layer.parameters()):
        return None
    return GaussianMLPStep(layers, log_std)
