"""What a run tracker logs, on its way to MLflow: metric points, tags and artifacts queued and sent by a background
thread in MLflow's batch sizes, never blocking training. Only an outage of the server (or its store) is waited out:
what was queued is kept and sent when it is back; data the server refuses is dropped with a warning; any other error
is a programming error and is raised to the caller."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import requests
import urllib3
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

logger = logging.getLogger(__name__)

MAX_BUFFERED_POINTS = 100_000
# Retry spacing while the server is away: doubles from the first to the last value.
RETRY_DELAYS_S = (1.0, 30.0)
# What a lost connection looks like below MLflow (it wraps most of them as its own INTERNAL_ERROR, see `is_outage`):
# the socket's, requests' and urllib3's connection and timeout errors.
_CONNECTION_ERRORS = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    urllib3.exceptions.HTTPError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the tracking server or its store is away or failing on its side, which may pass: an MLflow
    error with a 5xx or 429 code (MLflow 3.17 reports a refused connection as INTERNAL_ERROR and a locked sqlite store
    as TEMPORARILY_UNAVAILABLE), an artifact upload's HTTP 5xx or 429, or a connection or timeout error."""
    if isinstance(exc, MlflowException):
        return _server_side(exc.get_http_status_code())
    if isinstance(exc, requests.exceptions.HTTPError):
        return exc.response is not None and _server_side(exc.response.status_code)
    return isinstance(exc, _CONNECTION_ERRORS)


def is_refusal(exc: BaseException) -> bool:
    """Whether `exc` is the server answering no (a 4xx): the data is at fault, sending it again would not help."""
    return isinstance(exc, (MlflowException, requests.exceptions.HTTPError)) and not is_outage(exc)


class BufferedSender:
    """Sends a run's metric points, tags and artifacts to MLflow, oldest first, from a background thread (artifacts from
    the caller's thread while the server answers). During an outage everything is kept (metric points up to
    `max_points`, the oldest dropped first) and retried with backoff; `on_recovery` is called when the server is back.
    An error that is neither an outage nor a refusal is raised by the next call of the caller's thread."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        tags: dict[str, str],
        max_points: int = MAX_BUFFERED_POINTS,
        on_recovery: Callable[[], None] | None = None,
    ):
        self._client = client
        self._run_id = run_id
        self._max_points = max_points
        self._on_recovery = on_recovery
        self._lock = threading.Lock()  # guards the queues, the tag cache and the outage state
        self._send_lock = threading.Lock()  # one sender at a time, so nothing is sent twice
        self._metrics: deque[Metric] = deque()
        self._tags: dict[str, str] = {}
        self._artifacts: deque[tuple[str, str | None]] = deque()
        self._tag_cache = dict(tags)  # the run's tags as last read or sent
        self._dropped = 0  # metric points dropped (oldest first) because the buffer was full
        self._dropped_reported = 0  # drops are reported when the server is back
        self._outage_since: float | None = None
        self._failure: Exception | None = None  # what stopped the background thread, for the caller's thread to raise
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="entropilot-mlflow-flusher", daemon=True)
        self._flusher.start()

    @property
    def tracking_uri(self) -> str:
        return self._client.tracking_uri

    def add_metrics(self, points: Iterable[Metric]) -> None:
        self.raise_failure()
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

    def set_tag(self, key: str, value: str) -> None:
        self.raise_failure()
        with self._lock:
            self._tags[key] = value
        self._wake_if_online()

    def tags(self) -> dict[str, str]:
        """The run's tags as the server has them, with the unsent ones on top; during an outage, the last read."""
        if self._outage_since is None:
            try:
                self._refresh_tags()
            except Exception as exc:
                if is_outage(exc):
                    self._note_outage(exc)
                elif is_refusal(exc):
                    logger.warning("MLflow error while reading tags, ignored: %s", short_message(exc))
                else:
                    raise
        with self._lock:
            return {**self._tag_cache, **self._tags}

    def add_artifact(self, local_path: str, artifact_path: str | None) -> None:
        """Upload now if the server answers (in the caller's thread: once this returns, the file may be deleted),
        else when it is back."""
        self.raise_failure()
        with self._lock:
            self._artifacts.append((local_path, artifact_path))
        if self._outage_since is None:
            self._send_pending()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Try to send everything queued now, retrying for up to `timeout_s`. True when nothing is left."""
        self.raise_failure()
        return self._flush(timeout_s)

    def stop(self, timeout_s: float) -> bool:
        """End the background thread and send what is queued, waiting up to `timeout_s` for an absent server. True when
        nothing is left. (A failure of the background thread stays for `raise_failure`.)"""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        self._flusher.join(timeout=timeout_s)
        return self._flush(max(0.0, deadline - time.monotonic()))

    def raise_failure(self) -> None:
        """Raise, in the caller's thread, the error that stopped the background thread (once)."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def pending(self) -> tuple[int, int, int]:
        """(metric points, tags, artifacts) not sent yet."""
        with self._lock:
            return len(self._metrics), len(self._tags), len(self._artifacts)

    # -- internals ---------------------------------------------------------------------------------

    def _flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._send_pending():
            if time.monotonic() + RETRY_DELAYS_S[0] > deadline:
                return False
            time.sleep(RETRY_DELAYS_S[0])
        return True

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
                return  # stop() does the final flush itself
            try:
                sent = self._send_pending()
            except Exception as exc:  # noqa: BLE001 - not an outage: a bug, for the caller's thread (raise_failure)
                self._failure = exc
                return
            delay = RETRY_DELAYS_S[0] if sent else min(2 * delay, RETRY_DELAYS_S[1])

    def _send_pending(self) -> bool:
        """Send queued metrics and tags (in MLflow's batch sizes), then artifacts, oldest first. Returns False at the
        first outage; raises what is neither an outage nor a refusal."""
        with self._send_lock:
            try:
                if self._outage_since is not None:
                    self._probe()
                while self._send_batch():
                    pass
                while self._send_artifact():
                    pass
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._note_outage(exc)
                return False
            self._note_back()
            return True

    def _send_batch(self) -> bool:
        with self._lock:
            metrics = list(itertools.islice(self._metrics, MAX_METRICS_PER_BATCH))
            tags = dict(itertools.islice(self._tags.items(), MAX_PARAMS_TAGS_PER_BATCH))
            dropped_before = self._dropped
        if not metrics and not tags:
            return False
        try:
            self._client.log_batch(self._run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception as exc:
            if is_outage(exc):
                raise  # kept: sent when the server is back
            self._take_off_queue(metrics, tags, dropped_before)  # refused, or broke the call: never sent
            if not is_refusal(exc):
                raise
            logger.warning(
                "MLflow rejected %d metric points and %d tags: %s", len(metrics), len(tags), short_message(exc)
            )
            return True
        self._take_off_queue(metrics, tags, dropped_before)
        return True

    def _take_off_queue(self, metrics: list[Metric], tags: dict[str, str], dropped_before: int) -> None:
        with self._lock:
            # Overflow drops happen at the left end too: those already gone need no removal.
            for _ in range(max(0, len(metrics) - (self._dropped - dropped_before))):
                self._metrics.popleft()
            for key, value in tags.items():
                self._tag_cache[key] = value
                if self._tags.get(key) == value:  # unless set again while sending
                    del self._tags[key]

    def _send_artifact(self) -> bool:
        with self._lock:
            if not self._artifacts:
                return False
            local_path, artifact_path = self._artifacts[0]
        try:
            if os.path.isdir(local_path):
                self._client.log_artifacts(self._run_id, local_path, artifact_path)
            elif os.path.exists(local_path):
                self._client.log_artifact(self._run_id, local_path, artifact_path)
            else:
                logger.warning("artifact %s was deleted before MLflow was back; not uploaded", local_path)
        except Exception as exc:
            if is_outage(exc):
                raise  # kept: uploaded when the server is back
            with self._lock:
                self._artifacts.popleft()
            if not is_refusal(exc):
                raise
            logger.warning("MLflow rejected artifact %s: %s", local_path, short_message(exc))
            return True
        with self._lock:
            self._artifacts.popleft()
        return True

    def _probe(self) -> None:
        """Reach the server during an outage, so recovery is noticed even with nothing queued."""
        try:
            self._refresh_tags()
        except Exception as exc:
            if not is_refusal(exc):
                raise  # any answer from the server, even a refusal, means it is back

    def _refresh_tags(self) -> None:
        tags = self._client.get_run(self._run_id).data.tags
        with self._lock:
            self._tag_cache = dict(tags)

    def _note_outage(self, exc: Exception) -> None:
        """Record an outage, warning once per outage."""
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

    def _note_back(self) -> None:
        with self._lock:
            since, self._outage_since = self._outage_since, None
            dropped, self._dropped_reported = self._dropped - self._dropped_reported, self._dropped
        if since is None:
            return
        lost = f"; {dropped} metric points were dropped (buffer full)" if dropped else ""
        logger.warning(
            "MLflow %s is back after %.0f s: buffered data sent%s", self.tracking_uri, time.monotonic() - since, lost
        )
        if self._on_recovery is not None:
            self._on_recovery()


def _server_side(status: int) -> bool:
    return status >= 500 or status == 429


def short_message(exc: BaseException, limit: int = 200) -> str:
    """An error's message on one line, at most `limit` characters."""
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
    return f"{type(exc).__name__}: {short_message(exc)}"
