"""Export a trained policy to one self-contained ONNX file: MeanStdFilter normalization, the RLModule's
policy network and the deterministic action (Gaussian mean, clipped) in the graph; the contract in its
metadata; parity against the training-side greedy policy checked on real observations before it is kept.

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``) on a strict
``torch.export`` program: the TorchScript one (``dynamo=False``) bakes the example's batch size into
RLlib's free-log-std head when it traces ``forward_inference`` (``len(mean)`` becomes a constant), so
its file fails on any other batch size although the batch axis is declared dynamic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropilot.deploy.contract import (
    ACTION_SIZE,
    BATCH_DIM,
    DETERMINISTIC_ACTION,
    FRAME_CONVENTION,
    INPUT_NAME,
    OUTPUT_NAME,
    SCHEMA_VERSION,
    SHA256_TAG,
    encode_metadata,
    seal,
    sha256_hex,
)
from entropilot.deploy.export_inputs import ExportError, check_output, resolve_checkpoint

__all__ = [
    "CheckpointInfo",
    "ExportError",
    "ExportResult",
    "PARITY_TOLERANCE",
    "PolicyGraph",
    "check_output",
    "checkpoint_info",
    "export_policy",
    "load_rl_module",
    "log_to_mlflow",
    "resolve_checkpoint",
]

PARITY_TOLERANCE = 1e-5
RL_MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module"
# Out-of-range probes added to the real observations: they drive the normalization into its clip.
_PROBE_SCALES = (-1e3, -30.0, 30.0, 1e3)


@dataclass
class ExportResult:
    path: Path
    sha256: str  # of the whole file, as written
    size_bytes: int
    parity_error: float  # max |onnxruntime action - torch greedy action| over the parity observations
    parity_samples: int  # real observations (rolled out in the training env) + out-of-range probes
    checkpoint: Path
    training_run_id: str | None
    exporter: str
    metadata: dict[str, Any] = field(repr=False)


def export_policy(
    source: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    parity_batch: int = 256,
    tolerance: float = PARITY_TOLERANCE,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``source`` (a checkpoint folder, a run folder holding ``iter_*`` checkpoints, or an MLflow run id
    whose ``entropilot.checkpoint_dir`` tag names one) to ``output_path``.

    The output is checked first (`check_output`: writable, and an existing file is replaced only if it is an
    entropilot export, or with ``overwrite``). The file is kept only if onnxruntime's actions match the torch greedy
    policy's (the one training evaluates with) within ``tolerance`` on ``parity_batch`` observations rolled out in
    the training env with that policy, plus a few out-of-range probes; otherwise ``ExportError`` and no file.
    """
    if parity_batch < 1:
        raise ValueError(f"parity_batch must be >= 1; got {parity_batch}")
    output = check_output(output_path, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        checkpoint = resolve_checkpoint(source, stack)
        with _quiet():
            return _export(checkpoint, output, parity_batch, tolerance)


# ---------------------------------------------------------------------------------------------- export


def _export(checkpoint: Path, output: Path, parity_batch: int, tolerance: float) -> ExportResult:
    import onnx

    import entropilot
    from entropilot.envs import OBSERVATION_GROUPS, OBSERVATION_NAMES, make_env
    from entropilot.platform.algorithm import observation_filter_stats
    from entropilot.platform.train import MODULE_ID, STATE_FILE

    info = checkpoint_info(checkpoint)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    module = load_rl_module(checkpoint, MODULE_ID)
    stats = observation_filter_stats(checkpoint)
    graph = PolicyGraph(module, stats).eval()

    env = make_env(info.env_id, **info.env_kwargs)
    try:
        settings = env.unwrapped.settings
        if tuple(env.unwrapped.observation_names) != OBSERVATION_NAMES or env.action_space.shape != (ACTION_SIZE,):
            raise ExportError(
                f"{info.env_id}: observation/action layout differs from entropilot.envs'; cannot describe it"
            )
        # Parity's reference: the greedy policy training evaluates with, on the restored module and filter.
        reference = _greedy_policy(module, stats)
        observations, reference_actions = _rollout(env, reference, parity_batch, seed=info.evaluation_seed)
    finally:
        env.close()

    model = _to_onnx(graph, torch.as_tensor(observations[:2]))
    exporter = f"torch.onnx.export(dynamo=True) torch {torch.__version__}, opset {_opset(model)}"
    low, high = env.action_space.low.astype(float).tolist(), env.action_space.high.astype(float).tolist()
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "observation_names": list(OBSERVATION_NAMES),
        "observation_groups": [{"group": g, "names": list(n), "meaning": m} for g, n, m in OBSERVATION_GROUPS],
        "normalization": _normalization(stats),
        "action_mode": settings.action_mode,
        "action_meaning": _action_meaning(settings),
        "action_low": low,
        "action_high": high,
        "control_hz": settings.control_hz,
        "physics_hz": settings.physics_hz,
        # What a vehicle link needs to fly the task without the simulator package (entropilot.deploy.fly).
        "target": list(settings.target),
        "episode_seconds": settings.episode_seconds,
        "frame_convention": FRAME_CONVENTION,
        "deterministic_action": DETERMINISTIC_ACTION,
        "env_id": info.env_id,
        "env_kwargs": info.env_kwargs,
        "training_run_id": state.get("run_id"),
        "training_iteration": state.get("iteration"),
        "algorithm": info.algorithm,
        "entropilot_version": entropilot.__version__,
        "exporter": exporter,
    }
    del model.metadata_props[:]
    for key, value in encode_metadata(metadata).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "entropilot", entropilot.__version__
    model.doc_string = (
        f"entropilot policy for {info.env_id} ({settings.action_mode}, {settings.control_hz} Hz): "
        f"{INPUT_NAME}[batch, {len(OBSERVATION_NAMES)}] -> {OUTPUT_NAME}[batch, {ACTION_SIZE}]"
    )
    onnx.checker.check_model(model, full_check=True)
    data = seal(model.SerializeToString())

    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        staged.write_bytes(data)
        error = _parity(staged, observations, reference_actions, graph, tolerance)
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return ExportResult(
        output,
        sha256_hex(data),
        len(data),
        error,
        len(observations),
        checkpoint,
        state.get("run_id"),
        exporter,
        metadata,
    )


@dataclass(frozen=True)
class CheckpointInfo:
    """What export needs from a checkpoint's ``config.yaml``: the env it trained on, where held-out seeds start."""

    env_id: str
    env_kwargs: dict[str, Any]
    evaluation_seed: int
    algorithm: str


def checkpoint_info(checkpoint: Path) -> CheckpointInfo:
    """Read from the validated config; if the config schema has moved on since the checkpoint was written
    (a renamed training option), from the raw YAML's env section, validated by the envs room."""
    import yaml

    from entropilot.envs import validate_env_kwargs
    from entropilot.platform.config import ConfigError, EvaluationConfig, load_config
    from entropilot.platform.train import CONFIG_FILE

    path = checkpoint / CONFIG_FILE
    try:
        cfg = load_config(path)
        return CheckpointInfo(cfg.env.id, dict(cfg.env.kwargs), cfg.evaluation.seed, cfg.algorithm.name)
    except FileNotFoundError:
        raise ExportError(f"{checkpoint}: no {CONFIG_FILE} beside the checkpoint") from None
    except ConfigError as err:
        raw = yaml.safe_load(path.read_text()) or {}
        env = raw.get("env") or {}
        try:
            info = CheckpointInfo(
                env["id"],
                dict(env.get("kwargs") or {}),
                int((raw.get("evaluation") or {}).get("seed", EvaluationConfig().seed)),
                str((raw.get("algorithm") or {}).get("name", "PPO")),
            )
            validate_env_kwargs(info.env_id, info.env_kwargs)
        except (KeyError, TypeError, ValueError) as env_err:
            raise ExportError(
                f"{path}: cannot tell the env the policy trained on ({env_err}); config errors:\n{err}"
            ) from None
        logging.getLogger(__name__).warning(
            "%s no longer validates as a whole (%s); exporting with its env section",
            path,
            "; ".join(problem.describe() for problem in err.problems),
        )
        return info


def load_rl_module(checkpoint: Path, module_id: str):
    """The trained RLModule from an Algorithm checkpoint, without Ray running (the learner's copy: the newest
    weights)."""
    from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = checkpoint / RL_MODULE_SUBDIR / module_id
    if not path.is_dir():
        raise ExportError(
            f"{checkpoint}: no RLModule at {path.relative_to(checkpoint)} (is it an RLlib Algorithm checkpoint?)"
        )
    # pyarrow's filesystem lookup needs an absolute path.
    module = RLModule.from_checkpoint(str(path.resolve()))
    module.eval()
    dist = module.get_inference_action_dist_cls()
    if not (isinstance(dist, type) and issubclass(dist, TorchDiagGaussian)):
        raise ExportError(
            f"{checkpoint}: the policy's action distribution is {getattr(dist, '__name__', dist)}; "
            f"export supports the diagonal Gaussian (PPO) only, flown as its mean"
        )
    return module


class PolicyGraph(torch.nn.Module):
    """obs [N, n] float32 -> clip((obs - mean) / (std + eps), -clip, clip) -> the RLModule's policy network -> the
    Gaussian mean -> clip to [-1, 1]: what ``GreedyPolicy`` computes, as one torch module to export.

    The network runs as ``forward_inference`` does; for PPO's usual module (separate actor encoder, free log
    std head) only the actor path is taken, because the free-log-std head concatenates a tiled log std
    that is sliced off again (5 ONNX nodes, ~25 % of the file's latency, for nothing). Parity with
    ``forward_inference`` is checked on every export either way.
    """

    def __init__(self, module, stats):
        from ray.rllib.core.models.torch.heads import TorchFreeLogStdMLPHead

        super().__init__()
        self.module = module
        self.normalize = stats is not None
        if self.normalize:
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(stats.mean, dtype=np.float32)))
            self.register_buffer("obs_scale", torch.as_tensor(np.asarray(stats.std + stats.epsilon, dtype=np.float32)))
            self.clip = None if stats.clip is None else float(stats.clip)
        encoder = getattr(module, "encoder", None)
        self.actor_path = (
            isinstance(getattr(module, "pi", None), TorchFreeLogStdMLPHead)
            and getattr(encoder, "actor_encoder", None) is not None
        )

    def forward(self, obs):
        from ray.rllib.core.columns import Columns
        from ray.rllib.core.models.base import ENCODER_OUT

        x = obs
        if self.normalize:
            x = (obs - self.obs_mean) / self.obs_scale
            if self.clip is not None:
                x = torch.clamp(x, -self.clip, self.clip)
        if self.actor_path:
            mean = self.module.pi.net(self.module.encoder.actor_encoder({Columns.OBS: x})[ENCODER_OUT])
        else:
            mean = self.module.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS][:, :ACTION_SIZE]
        return torch.clamp(mean, -1.0, 1.0)


def _greedy_policy(module, stats):
    """``GreedyPolicy`` (platform/evaluation.py) on a restored module and filter: what training evaluates with,
    and the one the file must reproduce."""
    from entropilot.platform.evaluation import GreedyPolicy

    return GreedyPolicy(module, stats)


def _rollout(env, policy, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` real observations (float32) met while flying ``policy`` in ``env``, and its actions for them."""
    observations, actions = [], []
    obs, _ = env.reset(seed=seed)
    episode = 0
    while len(observations) < steps:
        action = np.asarray(policy(obs), dtype=np.float32)
        observations.append(np.asarray(obs, dtype=np.float32))
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    observations = np.stack(observations)
    probes = np.concatenate([observations[:1] * s for s in _PROBE_SCALES])
    probe_actions = np.stack([policy(o) for o in probes]).astype(np.float32)
    return np.concatenate([observations, probes]), np.concatenate([np.stack(actions), probe_actions])


def _parity(path: Path, observations: np.ndarray, reference: np.ndarray, graph, tolerance: float) -> float:
    """Max |action difference| between the file run by the flight runtime and the greedy torch policy."""
    from entropilot.deploy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(path)  # also proves the file passes the flight runtime's contract checks
    onnx_actions = policy.batch(observations)
    single = np.stack([policy(o) for o in observations[:8]])  # the one-sample path the vehicle uses
    with torch.no_grad():
        graph_actions = graph(torch.as_tensor(observations)).numpy()
    error = float(max(np.abs(onnx_actions - reference).max(), np.abs(single - reference[:8]).max()))
    if not error <= tolerance:
        worst = int(np.abs(onnx_actions - reference).max(axis=1).argmax())
        raise ExportError(
            f"parity check failed: onnxruntime and the torch greedy policy differ by {error:.3g} > {tolerance:g} "
            f"(worst observation #{worst}; the torch export wrapper differs from the greedy policy by "
            f"{float(np.abs(graph_actions - reference).max()):.3g}); the file was not written"
        )
    return error


def _to_onnx(graph: torch.nn.Module, example: torch.Tensor):
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
    _check_graph(model)
    return model


def _check_graph(model) -> None:
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


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _normalization(stats) -> dict[str, Any]:
    if stats is None:
        return {"kind": "none"}
    return {
        "kind": "RLlib MeanStdFilter, in the graph: clip((obs - mean) / (std + epsilon), -clip, clip)",
        "mean": [float(v) for v in stats.mean],
        "std": [float(v) for v in stats.std],
        "epsilon": float(stats.epsilon),
        "clip": None if stats.clip is None else float(stats.clip),
        "count": int(stats.count),
    }


def _action_meaning(settings) -> list[str]:
    max_rotor = settings.airframe.max_thrust_per_motor
    if settings.action_mode == "ctbr":
        rate = settings.max_body_rate
        return [
            f"collective thrust = (a0 + 1) / 2 * {4 * max_rotor:.6g} N (0 to all four rotors at maximum)",
            f"roll rate command about body x = a1 * {rate:g} rad/s",
            f"pitch rate command about body y = a2 * {rate:g} rad/s",
            f"yaw rate command about body z = a3 * {rate:g} rad/s",
        ]
    rotors = ("front-right", "back-right", "back-left", "front-left")
    return [f"rotor {i} ({name}) thrust = (a{i} + 1) / 2 * {max_rotor:.6g} N" for i, name in enumerate(rotors)]


@contextlib.contextmanager
def _quiet():
    """Keep the exporter's and RLlib's chatter (deprecations, 'torchvision is not installed') off the console."""
    import ray.rllib  # noqa: F401  (it sets its loggers' levels on import: import it first)

    loggers = [
        logging.getLogger(name)
        for name in (
            "torch.onnx",
            "torch._dynamo",
            "torch.export",
            "ray.rllib",
            "ray._common.deprecation",
            "onnxscript",
        )
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------- MLflow


def log_to_mlflow(
    result: ExportResult,
    run_id: str | None = None,
    *,
    name: str = "policy",
    registered_model: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Log the exported file to an MLflow run (default: its training run) as an ONNX model named ``name``;
    optionally register it as ``registered_model`` and point ``alias`` (e.g. ``production``) at that version.

    The file's SHA-256 goes on the run and the model version as tag ``entropilot.onnx_sha256``; the logged
    copy is checked to be byte-identical (MLflow's ONNX flavour would split tensors into external data
    by default: ``save_as_external_data=False``). Uses the current tracking URI (MLFLOW_TRACKING_URI).
    """
    import mlflow
    import onnx

    run_id = run_id or result.training_run_id
    if not run_id:
        raise ValueError("no MLflow run: the checkpoint names no training run; pass run_id")
    if alias and not registered_model:
        raise ValueError("alias needs registered_model")
    client = mlflow.MlflowClient()
    model = onnx.load(str(result.path))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            model,
            name=name,
            registered_model_name=registered_model,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            metadata={SHA256_TAG: result.sha256},
            tags={SHA256_TAG: result.sha256},
        )
        mlflow.set_tag(SHA256_TAG, result.sha256)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp))
        logged = sha256_hex((local / "model.onnx").read_bytes())
    if logged != result.sha256:
        raise ExportError(f"MLflow stored a different file (SHA-256 {logged}, exported {result.sha256})")
    out = {"run_id": run_id, "model_uri": info.model_uri, "sha256": result.sha256}
    if registered_model:
        version = info.registered_model_version
        client.set_model_version_tag(registered_model, str(version), SHA256_TAG, result.sha256)
        out.update(registered_model=registered_model, version=int(version))
        if alias:
            client.set_registered_model_alias(registered_model, alias, str(version))
            out["alias_uri"] = f"models:/{registered_model}@{alias}"
    return out
