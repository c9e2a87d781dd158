"""The one place training talks to MLflow: `RunTracker` starts or resumes a run, logs the config, metrics,
tags and artifacts, and keeps what it logs through tracking-server outages (buffered, sent when it is back)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

import entropilot
from entropilot.errors import EntropilotError
from entropilot.platform.config import RESUMABLE_SECTION, ExperimentConfig, to_flat_params
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
MAX_BUFFERED_POINTS = 100_000
# Retry spacing while the server is away: doubles from the first to the last value.
RETRY_DELAYS_S = (1.0, 30.0)
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
    """One MLflow run. Metrics, tags and artifacts are queued and sent by a background thread, so no
    logging call blocks on, or raises from, the tracking server. Use `start`, then `close` (or `with`)."""

    def __init__(self, client: MlflowClient, run, max_buffered_points: int):
        self._client = client
        self.tracking_uri: str = client.tracking_uri
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        self.experiment_id: str = run.info.experiment_id
        self._max_points = max_buffered_points
        self._lock = threading.Lock()  # guards the queues, the tag cache and the outage state
        self._send_lock = threading.Lock()  # one sender at a time, so nothing is sent twice
        self._metrics: deque[Metric] = deque()
        self._tags: dict[str, str] = {}
        self._artifacts: deque[tuple[str, str | None]] = deque()
        self._tag_cache: dict[str, str] = dict(run.data.tags)
        self._dropped = 0  # metric points dropped (oldest first) because the buffer was full
        self._dropped_reported = 0  # drops are reported when the server is back
        self._outage_since: float | None = None
        self._skipped_keys: set[str] = set()
        self._staging = Path(tempfile.mkdtemp(prefix="entropilot-mlflow-"))
        self._staged = itertools.count()
        self._system_metrics = None
        self._closed = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="entropilot-mlflow-flusher", daemon=True)
        self._flusher.start()

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
        with self._lock:
            self._metrics.extend(points)
            overflow = len(self._metrics) - self._max_points
            for _ in range(max(0, overflow)):
                self._metrics.popleft()
            if overflow > 0:
                if self._dropped == self._dropped_reported:  # the first drop since the last report
                    logger.warning(
                        "MLflow buffer full (%d metric points): dropping the oldest until %s is back",
                        self._max_points,
                        self.tracking_uri,
                    )
                self._dropped += overflow
        self._wake_if_online()

    def set_tag(self, key: str, value: Any) -> None:
        with self._lock:
            self._tags[key] = str(value)
        self._wake_if_online()

    def get_tags(self) -> dict[str, str]:
        """The run's tags as the server has them (including edits made in the UI), with this tracker's
        unsent tags on top. While the server is away, the last tags read."""
        if self._outage_since is None:
            try:
                self._refresh_tags()
            except Exception as exc:  # noqa: BLE001 - reading tags must not stop training either
                self._note_failure(exc, "reading tags")
        with self._lock:
            return {**self._tag_cache, **self._tags}

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or directory now; if the server is away, it is uploaded when it is back (so keep
        the file until `close`). Raises FileNotFoundError for a missing path (a caller bug)."""
        local_path = str(local_path)
        if not os.path.exists(local_path):
            raise FileNotFoundError(f"no such file or directory to log as artifact: {local_path}")
        with self._lock:
            self._artifacts.append((local_path, artifact_path))
        if self._outage_since is None:
            self._send_pending()  # in the caller's thread: once this returns, an uploaded file may be deleted

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
        deadline = time.monotonic() + timeout_s
        while not self._send_pending():
            if time.monotonic() + RETRY_DELAYS_S[0] > deadline:
                return False
            time.sleep(RETRY_DELAYS_S[0])
        return True

    def close(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Send what is queued (waiting up to `timeout_s` for an absent server), then end the run with
        `status`. What still cannot be sent is reported as lost. Calling it again does nothing."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        self._flusher.join(timeout=timeout_s)
        sent = self.flush(max(0.0, deadline - time.monotonic()))
        if self._system_metrics is not None:
            self._system_metrics.finish()
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001 - closing is the end of training; report, don't raise
            sent = False
            logger.warning("could not mark MLflow run %s as %s: %s", self.run_id, status, _short(exc))
        if not sent:
            with self._lock:
                lost = (len(self._metrics), len(self._tags), len(self._artifacts))
            logger.warning(
                "MLflow %s unreachable at close: lost %d metric points, %d tags, %d artifacts of run %s",
                self.tracking_uri,
                *lost,
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

    def _wake_if_online(self) -> None:
        # During an outage the flusher keeps its own backoff, so a fast training loop does not hammer a
        # server that is coming back up.
        if self._outage_since is None:
            self._wake.set()

    def _flush_loop(self) -> None:
        delay = RETRY_DELAYS_S[0]
        while not self._stopping.is_set():
            self._wake.wait(delay if self._outage_since is not None else RETRY_DELAYS_S[1])
            self._wake.clear()
            if self._stopping.is_set():
                return  # close() does the final flush itself
            delay = RETRY_DELAYS_S[0] if self._send_pending() else min(2 * delay, RETRY_DELAYS_S[1])

    def _send_pending(self) -> bool:
        """Send queued metrics and tags (in MLflow's batch sizes), then artifacts, oldest first. Returns False
        at the first failure that may pass (server away, 5xx); data the server rejects (4xx) is dropped."""
        with self._send_lock:
            try:
                if self._outage_since is not None:
                    self._probe()
                while self._send_batch():
                    pass
                while self._send_artifact():
                    pass
            except Exception as exc:  # noqa: BLE001 - only transient errors get here; training goes on
                self._note_failure(exc, "sending")
                return False
            self._note_success()
            return True

    def _send_batch(self) -> bool:
        with self._lock:
            metrics = list(itertools.islice(self._metrics, MAX_METRICS_PER_BATCH))
            tags = dict(itertools.islice(self._tags.items(), MAX_PARAMS_TAGS_PER_BATCH))
            dropped_before = self._dropped
        if not metrics and not tags:
            return False
        try:
            self._client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception as exc:
            if _is_transient(exc):
                raise
            logger.warning("MLflow rejected %d metric points and %d tags: %s", len(metrics), len(tags), _short(exc))
        with self._lock:
            # Overflow drops happen at the left end too: those already gone need no removal.
            for _ in range(max(0, len(metrics) - (self._dropped - dropped_before))):
                self._metrics.popleft()
            for key, value in tags.items():
                self._tag_cache[key] = value
                if self._tags.get(key) == value:  # unless set again while sending
                    del self._tags[key]
        return True

    def _send_artifact(self) -> bool:
        with self._lock:
            if not self._artifacts:
                return False
            local_path, artifact_path = self._artifacts[0]
        try:
            if os.path.isdir(local_path):
                self._client.log_artifacts(self.run_id, local_path, artifact_path)
            elif os.path.exists(local_path):
                self._client.log_artifact(self.run_id, local_path, artifact_path)
            else:
                logger.warning("artifact %s was deleted before MLflow was back; not uploaded", local_path)
        except Exception as exc:
            if _is_transient(exc):
                raise
            logger.warning("MLflow rejected artifact %s: %s", local_path, _short(exc))
        with self._lock:
            self._artifacts.popleft()
        return True

    def _probe(self) -> None:
        """Reach the server during an outage, so recovery is noticed even with nothing queued."""
        try:
            self._refresh_tags()
        except Exception as exc:
            if _is_transient(exc):
                raise  # any answer from the server, even a refusal, means it is back

    def _refresh_tags(self) -> None:
        tags = self._client.get_run(self.run_id).data.tags
        with self._lock:
            self._tag_cache = dict(tags)

    def _note_failure(self, exc: Exception, doing: str) -> None:
        """Record an outage (warning once per outage) if `exc` may pass; otherwise just report it."""
        if not _is_transient(exc):
            logger.warning("MLflow error while %s, ignored: %s", doing, _short(exc))
            return
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
        if first:
            logger.warning(
                "MLflow %s unreachable (%s): training continues; metrics, tags and artifacts are kept "
                "(up to %d metric points) and sent when it is back",
                self.tracking_uri,
                _root_cause(exc),
                self._max_points,
            )

    def _note_success(self) -> None:
        with self._lock:
            since, self._outage_since = self._outage_since, None
            dropped, self._dropped_reported = self._dropped - self._dropped_reported, self._dropped
        if since is None:
            return
        lost = f"; {dropped} metric points were dropped (buffer full)" if dropped else ""
        logger.warning(
            "MLflow %s is back after %.0f s: buffered data sent%s", self.tracking_uri, time.monotonic() - since, lost
        )
        if self._system_metrics is not None:
            # MLflow's monitor thread ends itself at its first failed request; start a new one.
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


def _is_transient(exc: Exception) -> bool:
    # MLflow wraps connection failures as INTERNAL_ERROR (500); a 4xx means the data itself is refused.
    if isinstance(exc, MlflowException):
        code = exc.get_http_status_code()
        return code >= 500 or code == 429
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = exc.message if isinstance(exc, MlflowException) else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_cause(exc: BaseException) -> str:
    # MLflow wraps a refused connection in three layers of requests/urllib3 text; the innermost says it.
    for _ in range(10):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return f"{type(exc).__name__}: {_short(exc)}"


def _or_missing(value: str | None) -> str:
    return "(missing)" if value is None else repr(value)
