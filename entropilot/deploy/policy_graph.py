"""The trained policy as one torch module to export (MeanStdFilter normalization, the RLModule's policy network, the
deterministic action: a Gaussian's mean, a squashed Gaussian's tanh(mean), clipped; a categorical policy's argmax per
sub-action), and its capture as an ONNX ModelProto.

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) on a strict
``torch.export`` program: the TorchScript one (``dynamo=False``) bakes the example's batch size into
RLlib's free-log-std head when it traces ``forward_inference`` (``len(mean)`` becomes a constant), so
its file fails on any other batch size although the batch axis is declared dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from entropilot.deploy.contract import (
    ACTION_SIZE,
    BATCH_DIM,
    CATEGORICAL_DETERMINISTIC_ACTION,
    DETERMINISTIC_ACTION,
    INPUT_NAME,
    OUTPUT_NAME,
    SQUASHED_DETERMINISTIC_ACTION,
)
from entropilot.deploy.export_inputs import ExportError
from entropilot.vehicle.layout import HEADING_NORM_MIN

__all__ = [
    "PolicyGraph",
    "RL_MODULE_SUBDIR",
    "check_graph",
    "deterministic_convention",
    "load_rl_module",
    "opset",
    "to_heading_frame",
    "to_onnx",
]

RL_MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module"


def load_rl_module(checkpoint: Path, module_id: str):
    """The trained RLModule from an Algorithm checkpoint, without Ray running (the learner's copy: the newest
    weights)."""
    from ray.rllib.core.rl_module.rl_module import RLModule
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

    path = checkpoint / RL_MODULE_SUBDIR / module_id
    if not path.is_dir():
        raise ExportError(
            f"{checkpoint}: no RLModule at {path.relative_to(checkpoint)} (is it an RLlib Algorithm checkpoint?)"
        )
    # pyarrow's filesystem lookup needs an absolute path.
    module = RLModule.from_checkpoint(str(path.resolve()))
    if not isinstance(module, TorchRLModule):
        raise ExportError(f"{checkpoint}: the RLModule is a {type(module).__name__}; export takes a torch one")
    module.eval()
    if deterministic_convention(module) is None:
        dist = module.get_inference_action_dist_cls()
        raise ExportError(
            f"{checkpoint}: the policy's action distribution is {getattr(dist, '__name__', dist)}; export supports "
            "the diagonal Gaussian (PPO, flown as its mean), the squashed Gaussian (SAC, as tanh of its mean) and "
            "the categorical on Discrete/MultiDiscrete actions (as its argmax)"
        )
    return module


def deterministic_convention(module) -> str | None:
    """How ``module``'s deterministic action is made (a contract convention), or None if export cannot make it."""
    from ray.rllib.core.distribution.torch.torch_distribution import (
        TorchCategorical,
        TorchDiagGaussian,
        TorchMultiCategorical,
        TorchSquashedGaussian,
    )

    dist = module.get_inference_action_dist_cls()  # MultiCategorical: a subclass RLlib binds the input lengths in
    if not isinstance(dist, type):
        return None
    if issubclass(dist, (TorchCategorical, TorchMultiCategorical)):
        return CATEGORICAL_DETERMINISTIC_ACTION
    if issubclass(dist, TorchSquashedGaussian):
        return SQUASHED_DETERMINISTIC_ACTION
    if issubclass(dist, TorchDiagGaussian):
        return DETERMINISTIC_ACTION
    return None


class PolicyGraph(torch.nn.Module):
    """obs [N, n] float32 -> clip((obs - mean) / (std + eps), -clip, clip) -> the RLModule's policy network -> the
    Gaussian mean (a squashed Gaussian: its tanh) -> clip to [-1, 1]; a categorical policy: -> the index of each
    sub-action's largest logit, int64 [N, sub-actions]. What ``GreedyPolicy`` computes, as one torch module to
    export.

    The network runs as ``forward_inference`` does; for PPO's usual module (separate actor encoder, free log
    std head) only the actor path is taken, because the free-log-std head concatenates a tiled log std
    that is sliced off again (5 ONNX nodes, ~25 % of the file's latency, for nothing). Parity with
    ``forward_inference`` is checked on every export either way.
    """

    def __init__(self, module, stats, heading_frame: bool = False):
        from entropilot.policies.entropy_range import categorical_sizes
        from entropilot.rllib_internals import free_log_std_actor

        super().__init__()
        self.module = module
        self.convention = deterministic_convention(module)
        self.categorical_sizes = categorical_sizes(module.action_space)
        self.heading_frame = heading_frame
        self.normalize = stats is not None
        if self.normalize:
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(stats.mean, dtype=np.float32)))
            self.register_buffer("obs_scale", torch.as_tensor(np.asarray(stats.std + stats.epsilon, dtype=np.float32)))
            self.clip = None if stats.clip is None else float(stats.clip)
        actor = free_log_std_actor(module)
        self.actor_layers = None if actor is None else actor[0]  # the module's own layers, not registered twice

    def forward(self, obs):
        if self.categorical_sizes is not None:
            parts = self.logits(obs).split(list(self.categorical_sizes), dim=-1)
            return torch.stack([part.argmax(dim=-1) for part in parts], dim=-1)
        if self.actor_layers is not None:
            mean = self._normalized(obs)
            for layer in self.actor_layers:
                mean = layer(mean)
        else:
            mean = self.logits(obs)[:, :ACTION_SIZE]
        if self.convention == SQUASHED_DETERMINISTIC_ACTION:
            mean = torch.tanh(mean)
        return torch.clamp(mean, -1.0, 1.0)

    def logits(self, obs):
        """The policy network's action-distribution inputs for ``obs`` (RLlib's ``forward_inference``)."""
        from ray.rllib.core.columns import Columns

        return self.module.forward_inference({Columns.OBS: self._normalized(obs)})[Columns.ACTION_DIST_INPUTS]

    def _normalized(self, obs):
        if self.heading_frame:
            obs = to_heading_frame(obs)
        if not self.normalize:
            return obs
        x = (obs - self.obs_mean) / self.obs_scale
        return x if self.clip is None else torch.clamp(x, -self.clip, self.clip)


def to_heading_frame(obs):
    """``entropilot.envs.observation.to_heading_frame`` on a batch of layout observations, as graph operations: the
    policy of an env with ``observation_frame: heading`` takes the world-frame observation every link builds, and
    one already in the heading frame passes unchanged (heading 0 turns nothing)."""
    r11, r21 = obs[:, 3:4], obs[:, 6:7]
    norm = torch.clamp(torch.sqrt(r11 * r11 + r21 * r21), min=HEADING_NORM_MIN)
    c, s = r11 / norm, r21 / norm

    def turn(x, y):
        return c * x + s * y, c * y - s * x

    ex, ey = turn(obs[:, 0:1], obs[:, 1:2])
    row1, row2 = turn(obs[:, 3:6], obs[:, 6:9])
    vx, vy = turn(obs[:, 12:13], obs[:, 13:14])
    r21_zero = r21 * 0.0  # as the env writes it: exactly 0 (rounding here would pass the filter's epsilon scale)
    return torch.cat([ex, ey, obs[:, 2:3], row1, r21_zero, row2[:, 1:], obs[:, 9:12], vx, vy, obs[:, 14:]], dim=-1)


def to_onnx(graph: torch.nn.Module, example: torch.Tensor):
    """The graph as an ONNX ModelProto with a symbolic batch axis named BATCH_DIM, weights inside.

    torch.export runs first, explicitly and strict: RLlib's free-log-std head tiles its log std with
    ``len(mean)``, which non-strict tracing specializes to the example's batch size. Left to itself,
    torch.onnx.export tries non-strict, then falls back (printing ❌), and with a named Dim it came
    out with a fixed batch of 2.
    """
    with torch.no_grad():
        try:
            program = torch.export.export(
                graph, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), strict=True
            )
        except Exception as err:
            raise ExportError(f"torch.export could not capture the policy with a dynamic batch axis: {err}") from err
        onnx_program = torch.onnx.export(
            program,
            (example,),
            None,
            dynamo=True,
            external_data=False,
            optimize=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    assert onnx_program is not None  # typed Optional by torch: only dynamo=False returns None
    model = onnx_program.model_proto
    # The exporter annotates nodes with stack traces and source paths: drop them, so the file (and its
    # SHA-256) depends on the policy alone, not on where or from which source line it was exported.
    graph_proto = model.graph
    for item in (
        *graph_proto.node,
        *graph_proto.input,
        *graph_proto.output,
        *graph_proto.value_info,
        *graph_proto.initializer,
    ):
        del item.metadata_props[:]
    for node in graph_proto.node:
        node.ClearField("doc_string")
    del graph_proto.metadata_props[:]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if batch:
        for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == batch:
                    dim.dim_param = BATCH_DIM
    check_graph(model)
    return model


def check_graph(model) -> None:
    for tensor in model.graph.initializer:
        if tensor.data_location == tensor.EXTERNAL or tensor.external_data:
            raise ExportError(
                f"exporter left initializer {tensor.name!r} in external data; expected one self-contained file"
            )
    dims = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    ]
    if (
        [v.name for v in model.graph.input] != [INPUT_NAME]
        or [v.name for v in model.graph.output] != [OUTPUT_NAME]
        or dims[0][0] != BATCH_DIM
        or dims[1][0] != BATCH_DIM
    ):
        raise ExportError(
            f"exported graph signature is {[v.name for v in model.graph.input]} -> "
            f"{[v.name for v in model.graph.output]} with dims {dims}; expected a symbolic '{BATCH_DIM}' axis"
        )


def opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
