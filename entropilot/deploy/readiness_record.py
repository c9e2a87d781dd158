"""Where a flight-readiness report goes: its files, the policy file itself (metadata, re-sealed) and MLflow (the
training run, the registered model version); and the two ways a report is made: ``evaluate_source`` (what
`entropilot evaluate` does with any policy source) and ``register_if_ready`` (`entropilot export --register`).

The hashes stay honest in this order: export writes and seals the file (SHA-256 A); the evaluation flies exactly
those bytes and records A and the network's ``policy_sha256`` P (the file's hash without its metadata) in the report;
stamping writes the report into the file's metadata and seals it again (SHA-256 B; P unchanged, checked); only then is
it registered, so the SHA-256 the registry records is B, the bytes a vehicle gets. Anyone can check that a report
belongs to a file: its P is the file's P."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropilot.deploy.contract import (
    PREFIX,
    READINESS_KEY,
    SEAL_KEY,
    SEAL_PLACEHOLDER,
    is_sealed_export,
    policy_sha256,
    seal,
    sha256_hex,
)
from entropilot.deploy.gate import enforce, verdict_line
from entropilot.deploy.readiness import Echo, evaluate_policy
from entropilot.deploy.readiness_config import ReadinessConfig, ReadinessError, check_conditions
from entropilot.deploy.readiness_report import table, write_files
from entropilot.inputs import InputError

TAG_PREFIX = "entropilot.readiness."
FORCED_TAG = TAG_PREFIX + "forced"


@dataclass
class Evaluated:
    report: dict[str, Any]
    path: Path  # the policy file flown
    sha256: str  # of that file now (after stamping, if it was stamped)
    files: list[Path]  # readiness.md, .json, .png
    stamped: bool
    registered: tuple[str, int] | None = None  # (name, version) of a models:/ source


def stamp_report(path: str | os.PathLike, report: dict[str, Any]) -> str:
    """Write ``report`` into the policy file's metadata (``entropilot.readiness``, replacing an older report) and seal
    it again; the file is replaced atomically. Returns its new SHA-256. The network does not change: its
    ``policy_sha256`` before and after must be the report's."""
    import onnx

    path = Path(path)
    data = path.read_bytes()
    expected = report["policy"]["policy_sha256"]
    if policy_sha256(data) != expected:
        raise ReadinessError(f"{path}: not the network the report was made for (policy_sha256 {expected[:12]}...)")
    model = onnx.load_model_from_string(data)
    kept = [p for p in model.metadata_props if p.key != PREFIX + READINESS_KEY]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=SEAL_PLACEHOLDER if prop.key == SEAL_KEY else prop.value)
    model.metadata_props.add(key=PREFIX + READINESS_KEY, value=json.dumps(report))  # in its order: conditions
    stamped = seal(model.SerializeToString())
    if policy_sha256(stamped) != expected:
        raise ReadinessError(f"{path}: writing the report changed the network's bytes; the file was left as it was")
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        staged.write_bytes(stamped)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return sha256_hex(stamped)


def mlflow_tags(report: dict[str, Any]) -> dict[str, str]:
    """The tags a report puts on the training run and the registered model version."""
    cells = [
        f"{name} {c['policy']['successes']}/{c['policy']['episodes']} ({c['policy']['crashes']} crashes; "
        f"PID {c['pid']['successes']}/{c['pid']['episodes']})"
        for name, c in report["conditions"].items()
    ]
    return {
        TAG_PREFIX + "verdict": "pass" if report["gate"]["passed"] else "fail",
        TAG_PREFIX + "summary": verdict_line(report)[:4000],
        TAG_PREFIX + "conditions": "; ".join(cells)[:4000],
        TAG_PREFIX + "policy_sha256": report["policy"]["policy_sha256"],
    }


def log_report(
    report: dict[str, Any],
    files: list[Path],
    *,
    tracking_uri: str | None = None,
    model_version: tuple[str, int] | None = None,
    forced: str | None = None,
    echo: Echo = print,
) -> bool:
    """Log the report to the policy's training run (files under ``readiness/``, one metric per condition and number at
    the policy's training iteration, the ``mlflow_tags``) and tag the registered ``model_version`` (name, version) the
    same way; ``forced``: why the gate was overridden (tag ``entropilot.readiness.forced``). A store or run that is not
    there is said, not raised: the report files are written already. Returns whether it logged."""
    from entropilot.inputs import missing_store
    from entropilot.platform.config import DEFAULT_TRACKING_URI
    from entropilot.platform.tracking import fail_fast_http

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    run_id = report["policy"]["training_run_id"]
    problem = missing_store(uri)
    if problem:
        echo(f"MLflow: not logged ({problem})")
        return False
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    tags = mlflow_tags(report) | ({FORCED_TAG: forced} if forced else {})
    with fail_fast_http():
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            if model_version is not None:
                for key, value in tags.items():
                    client.set_model_version_tag(model_version[0], str(model_version[1]), key, value)
            if not run_id:
                echo("MLflow: the policy names no training run; the report is not logged to one")
                return model_version is not None
            client.get_run(run_id)
            for path in files:
                client.log_artifact(run_id, str(path), "readiness")
            now, step = int(time.time() * 1000), int(report["policy"].get("training_iteration") or 0)
            metrics = [
                Metric(f"readiness/{name}/{who}_{key}", float(value), now, step)
                for name, c in report["conditions"].items()
                for who in ("policy", "pid")
                for key, value in (
                    ("success_rate", c[who]["success_rate"]),
                    ("success_lower_bound", c[who]["success_interval"][0]),
                    ("crashes", c[who]["crashes"]),
                    ("final_distance_p50", c[who]["final_distance_m"]["p50"]),
                )
            ]
            client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        except MlflowException as err:
            echo(f"MLflow at {uri}: not logged ({str(err).splitlines()[0][:300]})")
            return False
    where = f"run {run_id}" + (f" and {model_version[0]} version {model_version[1]}" if model_version else "")
    echo(f"MLflow: report logged to {where} at {uri}")
    return True


def evaluate_source(
    source: str,
    config: ReadinessConfig,
    *,
    out_dir: str | os.PathLike,
    stamp: bool = False,
    workers: int = 1,
    tracking_uri: str | None = None,
    cache_dir: str | None = None,
    log_mlflow: bool = True,
    echo: Echo = print,
) -> Evaluated:
    """`entropilot evaluate SOURCE`: a policy file, a registered model (``models:/...``, pulled and verified; its
    report goes to the version's tags, the registered bytes are not changed) or a checkpoint, run folder or MLflow run
    id (exported to ``out_dir/policy.onnx`` first, then stamped); fly it through ``config``, print the table, write
    the files, stamp the file if asked, log to MLflow. A source that names nothing flyable, and a checkpoint whose env
    a condition cannot build, are refused before anything is pulled or exported."""
    from entropilot.deploy.registry import is_model_uri, parse_model_uri

    registered = None
    with contextlib.ExitStack() as stack:
        if is_model_uri(source):
            parse_model_uri(source)
            if stamp:
                raise ReadinessError(
                    f"{source}: a registered file is never changed (its SHA-256 is recorded); its report goes to the "
                    f"model version's tags. Drop --stamp"
                )
            from entropilot.deploy.fly import pull_registered

            pulled = pull_registered(source, tracking_uri=tracking_uri, cache_dir=cache_dir, echo=echo)
            path, registered = pulled.path, (pulled.name, pulled.version)
        elif Path(source).is_file():
            path = Path(source)
        elif source.endswith(".onnx"):
            raise InputError("SOURCE", source, "no such file (give an exported .onnx, a checkpoint, run folder or id)")
        else:
            from entropilot.deploy.export_inputs import resolve_checkpoint

            checkpoint = resolve_checkpoint(source, stack)
            check_trained_env(config, checkpoint)
            output = Path(out_dir) / "policy.onnx"
            if output.exists() and not is_sealed_export(output):
                raise InputError(
                    "--output-dir", out_dir, "holds a policy.onnx entropilot did not write; choose another folder"
                )
            from entropilot.deploy.export import export_policy

            result = export_policy(checkpoint, output)
            path, stamp = result.path, True
            echo(f"exported {source} ({result.checkpoint}) to {path}")
    report = evaluate_policy(path, config, source=source, workers=workers, echo=echo)
    return _record(report, path, out_dir, stamp, registered, tracking_uri, log_mlflow, echo)


def check_trained_env(config: ReadinessConfig, checkpoint: Path) -> None:
    """Before a checkpoint is exported to be flown through ``config`` (the export costs torch and a parity rollout):
    every condition must build the env it trained on. A config that no longer loads is left to the export to judge."""
    from entropilot.platform.checkpoints import CONFIG_FILE
    from entropilot.platform.config import ConfigError, load_config

    try:
        cfg = load_config(checkpoint / CONFIG_FILE)
    except (ConfigError, OSError):
        return
    check_conditions(config, cfg.env.id, dict(cfg.env.kwargs))


def register_if_ready(
    result,
    config: ReadinessConfig,
    *,
    registered_model: str,
    alias: str | None,
    out_dir: str | os.PathLike,
    force: bool = False,
    workers: int = 1,
    tracking_uri: str | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """`entropilot export ... --register NAME`: evaluate the freshly exported file (an ``ExportResult``), stamp the
    report into it, and register it only if it clears the gate (``force``: register anyway, recorded in the tag
    ``entropilot.readiness.forced`` on the run and the version). GateRefused when it does not; the stamped file and the
    report files stay. Returns ``log_to_mlflow``'s summary."""
    from entropilot.deploy.export import log_to_mlflow

    report = evaluate_policy(result.path, config, source=str(result.path), workers=workers, echo=echo)
    evaluated = _record(report, result.path, out_dir, True, None, tracking_uri, False, echo)
    problems = [] if report["gate"]["passed"] else list(report["gate"]["reasons"])
    enforce(report, problems, force=force, what=f"register {result.path} as {registered_model}", echo=echo)
    stamped = dataclasses.replace(result, sha256=evaluated.sha256, size_bytes=result.path.stat().st_size)
    logged = log_to_mlflow(stamped, registered_model=registered_model, alias=alias)
    forced = f"registered with --force: {'; '.join(problems)}" if problems else None
    log_report(
        report,
        evaluated.files,
        tracking_uri=tracking_uri,
        model_version=(registered_model, logged["version"]),
        forced=forced,
        echo=echo,
    )
    return logged


def _record(report, path: Path, out_dir, stamp: bool, registered, tracking_uri, log_mlflow: bool, echo) -> Evaluated:
    echo(table(report))
    files = write_files(report, out_dir)
    echo(f"report: {', '.join(str(f) for f in files)} ({report['seconds']:.0f} s of flights)")
    sha = report["policy"]["sha256"]
    if stamp:
        sha = stamp_report(path, report)
        echo(f"report written into {path}: sealed again, sha256 {sha} (network {report['policy']['policy_sha256']})")
    if log_mlflow:
        log_report(report, files, tracking_uri=tracking_uri, model_version=registered, echo=echo)
    return Evaluated(report, path, sha, files, stamp, registered)
