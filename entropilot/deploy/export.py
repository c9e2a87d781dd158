"""Export a trained policy to one self-contained ONNX file: MeanStdFilter normalization, the RLModule's
policy network and the deterministic action in the graph (a Gaussian's mean, a squashed Gaussian's tanh(mean),
clipped; a categorical policy's argmax per sub-action); the contract in its metadata; parity against the
training-side greedy policy checked on real observations before it is kept. Over 450 lines: one sequence (source,
graph, metadata, parity, seal) kept together; the graph itself is in policy_graph.py.

The graph itself (the module to export and its capture by torch's exporter) is ``policy_graph``'s.
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
from entropilot.deploy.policy_graph import PolicyGraph, load_rl_module, opset, to_onnx

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

# Continuous: max |action difference|. Categorical: the indices must agree except where the two largest logits of
# a sub-action lie within this of each other (a tie to rounding, which either runtime may break either way).
PARITY_TOLERANCE = 1e-5
# Out-of-range probes added to the real observations: they drive the normalization into its clip.
_PROBE_SCALES = (-1e3, -30.0, 30.0, 1e3)


@dataclass
class ExportResult:
    path: Path
    sha256: str  # of the whole file, as written
    size_bytes: int
    # Max |onnxruntime action - torch greedy action| over the parity observations; a categorical policy: the share
    # of observations whose indices differ (only at logit ties, see PARITY_TOLERANCE).
    parity_error: float
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
    heading_frame = info.env_kwargs.get("observation_frame") == "heading"
    graph = PolicyGraph(module, stats, heading_frame=heading_frame).eval()

    env = make_env(info.env_id, **info.env_kwargs)
    try:
        settings = env.unwrapped.settings
        command = getattr(env.unwrapped, "inner_loop", None) is not None
        if tuple(env.unwrapped.observation_names) != OBSERVATION_NAMES or (
            graph.categorical_sizes is None if command else env.action_space.shape != (ACTION_SIZE,)
        ):
            raise ExportError(
                f"{info.env_id}: observation/action layout differs from entropilot.envs'; cannot describe it"
            )
        # Parity's reference: the greedy policy training evaluates with, on the restored module and filter.
        reference = _greedy_policy(module, stats)
        observations, reference_actions = _rollout(
            env, reference, parity_batch, seed=info.evaluation_seed, heading_frame=heading_frame
        )
    finally:
        env.close()

    model = to_onnx(graph, torch.as_tensor(observations[:2]))
    exporter = f"torch.onnx.export(dynamo=True) torch {torch.__version__}, opset {opset(model)}"
    # A command policy's inner loop emits the simulator's action in [-1, 1] (what a vehicle link receives).
    low, high = (
        ([-1.0] * ACTION_SIZE, [1.0] * ACTION_SIZE)
        if command
        else (
            env.action_space.low.astype(float).tolist(),
            env.action_space.high.astype(float).tolist(),
        )
    )
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
        "deterministic_action": graph.convention,
        "env_id": info.env_id,
        "env_kwargs": info.env_kwargs,
        "training_run_id": state.get("run_id"),
        "training_iteration": state.get("iteration"),
        # [first, last + 1) of the seeds training started its envs from and evaluated on: a readiness evaluation
        # keeps its held-out seeds apart from both.
        **({"seeds": info.seeds} if info.seeds else {}),
        "algorithm": info.algorithm,
        "entropilot_version": entropilot.__version__,
        "exporter": exporter,
    }
    if command:
        from entropilot.envs.discrete import command_contract

        metadata["command"] = command_contract(settings)
    del model.metadata_props[:]
    for key, value in encode_metadata(metadata).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "entropilot", entropilot.__version__
    signature = f"{OUTPUT_NAME}[batch, {ACTION_SIZE}]"
    if command:
        assert graph.categorical_sizes is not None  # a command env's policy is categorical (checked above)
        signature = f"{OUTPUT_NAME} int64[batch, {len(graph.categorical_sizes)}] (command indices)"
    model.doc_string = (
        f"entropilot policy for {info.env_id} ({settings.action_mode}, {settings.control_hz} Hz): "
        f"{INPUT_NAME}[batch, {len(OBSERVATION_NAMES)}] -> {signature}"
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
    seeds: dict[str, list[int]] | None = None  # {"training": [lo, hi), "evaluation": [lo, hi)} when the config says


def checkpoint_info(checkpoint: Path) -> CheckpointInfo:
    """Read from the validated config; if the config schema has moved on since the checkpoint was written
    (a renamed training option), from the raw YAML's env section, validated by the envs room."""
    import yaml

    from entropilot.envs import flight_kwargs, validate_env_kwargs
    from entropilot.platform.config import ConfigError, EvaluationConfig, ExperimentConfig, ResourcesConfig, load_config
    from entropilot.platform.train import CONFIG_FILE

    path = checkpoint / CONFIG_FILE
    try:
        cfg = load_config(path)
        r, e = cfg.resources, cfg.evaluation
        seeds = _seed_ranges(cfg.seed, r.num_env_runners, r.envs_per_runner, e.seed, e.episodes)
        return CheckpointInfo(cfg.env.id, flight_kwargs(cfg.env.kwargs), e.seed, cfg.algorithm.name, seeds)
    except FileNotFoundError:
        raise ExportError(f"{checkpoint}: no {CONFIG_FILE} beside the checkpoint") from None
    except ConfigError as err:
        raw = yaml.safe_load(path.read_text()) or {}
        env, raw_r, raw_e = raw.get("env") or {}, raw.get("resources") or {}, raw.get("evaluation") or {}
        try:
            resources, evaluation = ResourcesConfig(), EvaluationConfig()  # the defaults of what the file leaves out
            seed = int(raw.get("seed", ExperimentConfig.model_fields["seed"].default))
            evaluation_seed = int(raw_e.get("seed", evaluation.seed))
            seeds = _seed_ranges(
                seed,
                int(raw_r.get("num_env_runners", resources.num_env_runners)),
                int(raw_r.get("envs_per_runner", resources.envs_per_runner)),
                evaluation_seed,
                int(raw_e.get("episodes", evaluation.episodes)),
            )
            info = CheckpointInfo(
                env["id"],
                flight_kwargs(env.get("kwargs") or {}),
                evaluation_seed,
                str((raw.get("algorithm") or {}).get("name", "PPO")),
                seeds,
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


def _seed_ranges(
    seed: int, num_env_runners: int, envs_per_runner: int, evaluation_seed: int, evaluation_episodes: int
) -> dict[str, list[int]]:
    """[first, last + 1) of the seeds a run started its envs from and evaluated on (RLlib 2.60 seeds runner i's
    sub-env j with seed + i + j; the config's own overlap check says the same)."""
    return {
        "training": [seed, seed + num_env_runners + envs_per_runner],
        "evaluation": [evaluation_seed, evaluation_seed + evaluation_episodes],
    }


def _greedy_policy(module, stats):
    """``GreedyPolicy`` (platform/evaluation.py) on a restored module and filter: what training evaluates with,
    and the one the file must reproduce."""
    from entropilot.platform.evaluation import GreedyPolicy

    return GreedyPolicy(module, stats)


def _rollout(env, policy, steps: int, seed: int, heading_frame: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` real observations (float32) met while flying ``policy`` in ``env``, and its actions for them
    (float32, or a categorical policy's int64 indices), then the out-of-range probes. An env observing in the heading
    frame gets its probes turned into that frame, as it would emit them (a scaled observation is in no frame)."""
    met: list[np.ndarray] = []
    taken: list[np.ndarray] = []
    obs, _ = env.reset(seed=seed)
    episode = 0
    while len(met) < steps:
        action = np.asarray(policy(obs))
        action = action if action.dtype.kind in "iu" else action.astype(np.float32)
        met.append(np.asarray(obs, dtype=np.float32))
        taken.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    observations = np.stack(met)
    probes = np.concatenate([observations[:1] * s for s in _PROBE_SCALES])
    if heading_frame:
        from entropilot.envs.observation import to_heading_frame

        for probe in probes:
            to_heading_frame(probe)
    actions = np.stack(taken)
    probe_actions = np.stack([policy(o) for o in probes]).astype(actions.dtype)
    return np.concatenate([observations, probes]), np.concatenate([actions, probe_actions])


def _parity(path: Path, observations: np.ndarray, reference: np.ndarray, graph, tolerance: float) -> float:
    """Max |action difference| between the file run by the flight runtime and the greedy torch policy (categorical:
    the share of observations whose indices differ, see ``_categorical_parity``)."""
    from entropilot.deploy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(path)  # also proves the file passes the flight runtime's contract checks
    onnx_actions = policy.batch(observations)
    single = np.stack([policy(o) for o in observations[:8]])  # the one-sample path the vehicle uses
    with torch.no_grad():
        graph_actions = graph(torch.as_tensor(observations)).numpy()
    if graph.categorical_sizes is not None:
        return _categorical_parity(observations, reference, onnx_actions, single, graph, tolerance)
    error = float(max(np.abs(onnx_actions - reference).max(), np.abs(single - reference[:8]).max()))
    if not error <= tolerance:
        worst = int(np.abs(onnx_actions - reference).max(axis=1).argmax())
        raise ExportError(
            f"parity check failed: onnxruntime and the torch greedy policy differ by {error:.3g} > {tolerance:g} "
            f"(worst observation #{worst}; the torch export wrapper differs from the greedy policy by "
            f"{float(np.abs(graph_actions - reference).max()):.3g}); the file was not written"
        )
    return error


def _categorical_parity(observations, reference, onnx_actions, single, graph, tolerance: float) -> float:
    """The share of observations where onnxruntime's indices differ from the greedy torch policy's. A difference is
    allowed only in a sub-action whose two largest torch logits lie within ``tolerance``: a tie to rounding."""
    with torch.no_grad():
        logits = graph.logits(torch.as_tensor(observations)).double()
    gaps = []
    for part in logits.split(list(graph.categorical_sizes), dim=-1):
        top = part.topk(2, dim=-1).values
        gaps.append((top[:, 0] - top[:, 1]).numpy())
    ties = np.stack(gaps, axis=1) <= tolerance
    differs = onnx_actions != reference
    differs[:8] |= single != reference[:8]
    unexplained = differs & ~ties
    if unexplained.any():
        row, column = (int(v[0]) for v in np.nonzero(unexplained))
        raise ExportError(
            f"parity check failed: onnxruntime picks index {onnx_actions[row, column]} of sub-action {column} where "
            f"the torch greedy policy picks {reference[row, column]} (observation #{row}; "
            f"{int(unexplained.any(axis=1).sum())} observation(s) differ beyond logit ties); the file was not written"
        )
    return float(differs.any(axis=1).mean())


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
