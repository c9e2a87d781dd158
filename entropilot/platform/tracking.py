"""The one place training talks to MLflow: `RunTracker` starts or resumes a run, logs the config, metrics, tags and
artifacts, and ends it; what it logs goes through `mlflow_sender.BufferedSender`, which keeps it through outages."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

import entropilot
from entropilot.errors import EntropilotError
from entropilot.platform.config import RESUMABLE_SECTION, ExperimentConfig, to_flat_params
from entropilot.platform.mlflow_sender import MAX_BUFFERED_POINTS, BufferedSender, is_outage, is_refusal, short_message
from entropilot.platform.names import (
    ENTROPY_INIT_TAG_PREFIX,
    GIT_DIRTY_TAG,
    INIT_CHOSEN_ENTROPY,
    INIT_CLEARED,
    INIT_DRAW_ENTROPY,
    INIT_DRAW_ENTROPY_PER_DIM,
    INIT_DRAW_SEED,
    INIT_DRAWS,
    VERSION_TAG,
)

__all__ = ["ConfigMismatchError", "RunTracker", "TrackingError", "fail_fast_http"]

logger = logging.getLogger(__name__)

# MLflow's own HTTP retries default to 7 with exponential backoff (~4 minutes before a call to a dead
# server fails, and a urllib3 warning per retry); the tracker is the retry layer, so each request fails
# fast. Set for the whole process (MLflow reads them per request), unless the user set them.
FAIL_FAST_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# How MLflow 3 records what an experiment is (its UI's own experiment-type setting writes this tag; values from
# MLflow 3.17.2's UI bundle). Its sidebar switch GenAI | Model training picks the view per browser, though.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


@contextlib.contextmanager
def fail_fast_http():
    """MLflow's HTTP calls give up within seconds instead of minutes of retries, for a one-off question (a registry
    pull, a run lookup) outside a tracker (a value the user set wins)."""
    added = [name for name in FAIL_FAST_HTTP_ENV if name not in os.environ]
    os.environ.update({name: FAIL_FAST_HTTP_ENV[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class TrackingError(EntropilotError, RuntimeError):
    """A run could not be started or re-opened (the only tracker errors that reach the caller)."""


class ConfigMismatchError(TrackingError, ValueError):
    """The config given for a resume differs from the params the run was started with."""

    def __init__(self, run_id: str, differences: dict[str, tuple[str | None, str | None]]):
        self.keys = sorted(differences)
        lines = [f"config differs from the params of run {run_id} (params are immutable; start a new run instead):"]
        for key in self.keys:
            stored, given = differences[key]
            lines.append(f"  - {key}: run has {_or_missing(stored)}, config has {_or_missing(given)}")
        super().__init__("\n".join(lines))


class RunTracker:
    """One MLflow run. Metrics, tags and artifacts are queued and sent by a background thread, so no logging call
    blocks on, or raises from, the tracking server (a programming error is raised). Use `start`, then `close` (or
    `with`)."""

    def __init__(self, client: MlflowClient, run, max_buffered_points: int):
        self._client = client
        self.tracking_uri: str = client.tracking_uri
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        self.experiment_id: str = run.info.experiment_id
        self._system_metrics = None
        self._sender = BufferedSender(
            client, self.run_id, dict(run.data.tags), max_buffered_points, on_recovery=self._restart_system_metrics
        )
        self._skipped_keys: set[str] = set()
        self._staging = Path(tempfile.mkdtemp(prefix="entropilot-mlflow-"))
        self._staged = itertools.count()
        self._closed = False

    # -- starting ---------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        cfg: ExperimentConfig,
        resume_run_id: str | None = None,
        *,
        max_buffered_points: int = MAX_BUFFERED_POINTS,
        parent_run_id: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> RunTracker:
        """Start a new run logging `cfg` as params, or re-open `resume_run_id` after checking its params equal
        `to_flat_params(cfg)` but for the stop criteria, which a resume may change (raises ConfigMismatchError naming
        the keys). Raises TrackingError if the
        tracking store cannot be reached: better to fail before training than to train untracked.

        `parent_run_id` makes the new run a child of that run (the MLflow UI nests it there, as a sweep's
        trials under the sweep); `extra_params` are logged beside the config's (a sweep's search space), `extra_tags`
        are a new run's first tags (its description, the live settings)."""
        for name, value in FAIL_FAST_HTTP_ENV.items():
            os.environ.setdefault(name, value)
        uri = cfg.mlflow.resolve_tracking_uri()
        mlflow.set_tracking_uri(uri)  # so other MLflow calls of this process (model logging) go to the same store
        client = MlflowClient(uri)
        params = {**to_flat_params(cfg), **(extra_params or {})}
        run = None
        try:
            if resume_run_id is None:
                tags = {
                    **_run_tags(cfg),
                    **(extra_tags or {}),
                    **({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}),
                }
                run = client.create_run(_experiment_id(client, cfg.mlflow.experiment), run_name=cfg.run_name, tags=tags)
                _log_params(client, run.info.run_id, params)
            else:
                run = client.get_run(resume_run_id)
                differences = {
                    key: values
                    for key, values in _param_differences(run.data.params, params).items()
                    if not key.startswith(RESUMABLE_SECTION + ".")
                }
                if differences:
                    raise ConfigMismatchError(resume_run_id, differences)
                client.update_run(resume_run_id, status="RUNNING")
        except MlflowException as exc:
            if run is not None and resume_run_id is None:
                # Created but without its config, so unusable: mark it (best effort, we are failing anyway).
                with contextlib.suppress(Exception):
                    client.set_terminated(run.info.run_id, "FAILED")
            what = "start a run" if resume_run_id is None else f"re-open run {resume_run_id}"
            raise TrackingError(f"cannot {what} at MLflow {uri}: {exc.message}") from exc
        tracker = cls(client, run, max_buffered_points)
        if cfg.mlflow.system_metrics:
            tracker._start_system_metrics(resume=resume_run_id is not None)
        return tracker

    # -- logging (never raises for tracking-server problems) ---------------------------------------

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Queue metrics for iteration `step` with the current time. Nested mappings become `a/b`, sequences
        `a/0`, `a/1`...; values float() cannot take (strings, None) are skipped with a warning per key."""
        timestamp = _now_ms()
        points = []
        for key, value in _flatten_metrics(metrics):
            number = _as_number(value)
            if number is None:
                if key not in self._skipped_keys:
                    self._skipped_keys.add(key)
                    logger.warning("metric %r skipped: %r is not a number", key, value)
                continue
            points.append(Metric(key, number, timestamp, int(step)))
        self._sender.add_metrics(points)

    def set_tag(self, key: str, value: Any) -> None:
        self._sender.set_tag(key, str(value))

    def get_tags(self) -> dict[str, str]:
        """The run's tags as the server has them (including edits made in the UI), with this tracker's
        unsent tags on top. While the server is away, the last tags read."""
        return self._sender.tags()

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or directory now; if the server is away, it is uploaded when it is back (so keep
        the file until `close`). Raises FileNotFoundError for a missing path (a caller bug)."""
        local_path = str(local_path)
        if not os.path.exists(local_path):
            raise FileNotFoundError(f"no such file or directory to log as artifact: {local_path}")
        self._sender.add_artifact(local_path, artifact_path)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Save `dictionary` as JSON, or YAML when `artifact_file` ends in .yaml/.yml, at `artifact_file`."""
        if artifact_file.endswith((".yaml", ".yml")):
            text = yaml.safe_dump(dict(dictionary), sort_keys=False)
        else:
            text = json.dumps(dictionary, indent=2, default=str)
        self.log_text(text, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        # Staged in a folder of our own that lives until close, so a queued upload still finds it.
        staged = self._staging / str(next(self._staged)) / Path(artifact_file).name
        staged.parent.mkdir(parents=True)
        staged.write_text(text)
        self.log_artifact(staged, os.path.dirname(artifact_file) or None)

    def log_entropy_init(self, result: Any) -> None:
        """Entropy-aware initialization: each draw's entropy as `entropy_init/draw_entropy` (and per action dim,
        and its seed) at step = draw index; the chosen draw as tags (mutable, so a resume can log them again) and as
        metrics `entropy_init/chosen_entropy`, `entropy_init/draws`, `entropy_init/cleared` (1/0) at step 0.

        `result` needs `draws` (each with `seed`, `entropy`, `per_dim`) and `chosen` (a draw or its index);
        `threshold` is logged if present."""
        draws = list(result.draws)
        chosen = result.chosen
        index = (
            chosen if isinstance(chosen, int) else next(i for i, d in enumerate(draws) if d is chosen or d == chosen)
        )
        for i, draw in enumerate(draws):
            self.log_metrics(
                {
                    INIT_DRAW_ENTROPY: draw.entropy,
                    INIT_DRAW_ENTROPY_PER_DIM: list(draw.per_dim),
                    INIT_DRAW_SEED: draw.seed,
                },
                step=i,
            )
        best = draws[index]
        tags = {"draws": len(draws), "chosen_draw": index, "chosen_seed": best.seed, "chosen_entropy": best.entropy}
        if getattr(result, "threshold", None) is not None:
            tags["threshold"] = result.threshold
            tags["cleared"] = best.entropy >= result.threshold
        for key, value in tags.items():
            self.set_tag(ENTROPY_INIT_TAG_PREFIX + key, value)
        # Also as metrics, which the runs table, the parallel-coordinates plot and the sweep summary can read.
        summary = {INIT_CHOSEN_ENTROPY: best.entropy, INIT_DRAWS: len(draws)}
        if "cleared" in tags:
            summary[INIT_CLEARED] = float(tags["cleared"])
        self.log_metrics(summary, step=0)

    # -- sending -----------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Try to send everything queued now, retrying for up to `timeout_s`. True when nothing is left."""
        return self._sender.flush(timeout_s)

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Send what is queued (waiting up to `timeout_s` for an absent server), then end the run with
        `status`. What still cannot be sent is reported as lost. Calling it again does nothing."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
        if self._closed:
            return
        self._closed = True
        try:
            sent = self._sender.stop(timeout_s)
        except Exception:
            self._end("FAILED", sent=not any(self._sender.pending()))  # a bug met while sending: the run still ends
            raise
        self._end(status, sent)
        self._sender.raise_failure()

    def _end(self, status: str, sent: bool) -> None:
        if self._system_metrics is not None:
            self._system_metrics.finish()
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            if not (is_outage(exc) or is_refusal(exc)):
                raise
            sent = False  # closing is the end of training: reported, not raised
            logger.warning("could not mark MLflow run %s as %s: %s", self.run_id, status, short_message(exc))
        if not sent:
            logger.warning(
                "MLflow %s unreachable at close: lost %d metric points, %d tags, %d artifacts of run %s",
                self.tracking_uri,
                *self._sender.pending(),
                self.run_id,
            )
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # -- internals ---------------------------------------------------------------------------------

    def _restart_system_metrics(self) -> None:
        # MLflow's monitor thread ends itself at its first failed request; start a new one once the server is back.
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._start_system_metrics(resume=True)

    def _start_system_metrics(self, resume: bool) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system_metrics = SystemMetricsMonitor(
                self.run_id, resume_logging=resume, tracking_uri=self.tracking_uri
            )
        except ImportError as exc:  # psutil missing
            logger.warning("system metrics off: %s", exc)
            return
        self._system_metrics.start()


# ------------------------------------------------------------------------------------------- helpers


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment `name`, created if missing; marked as model training unless it says what it is already."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by a parallel run of a sweep
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it in the UI or choose another name")
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def _run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags  # user, source name/type: as mlflow.start_run sets them

    tags = resolve_tags({VERSION_TAG: entropilot.__version__, "env_id": cfg.env.id, "algorithm": cfg.algorithm.name})
    commit, dirty = _git_state(Path(entropilot.__file__).parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags[GIT_DIRTY_TAG] = str(dirty).lower()
    return tags


def _git_state(where: Path) -> tuple[str | None, bool]:
    """The commit of the entropilot checkout and whether tracked files differ from it (None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit, bool(status.strip())


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])


def _param_differences(stored: Mapping[str, str], given: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    return {k: (stored.get(k), given.get(k)) for k in stored.keys() | given.keys() if stored.get(k) != given.get(k)}


def _flatten_metrics(value: Any, prefix: str = ""):
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _flatten_metrics(child, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) >= 1:
        for i, child in enumerate(value):
            yield from _flatten_metrics(child, f"{prefix}/{i}")
    else:
        yield prefix, value


def _as_number(value: Any) -> float | None:
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        return float(value)  # also numpy scalars and 0-d tensors
    except (TypeError, ValueError):
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _or_missing(value: str | None) -> str:
    return "(missing)" if value is None else repr(value)
