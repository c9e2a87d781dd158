"""Shared test fixtures: a real MLflow tracking server on 127.0.0.1 (sqlite store, proxied artifacts), and a tiny
trained hover checkpoint with its exported ONNX policy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# The two test tiers. The unit tier (`-m "not integration"`) runs in about a minute without Ray or an MLflow server;
# the integration tier is everything that starts one (or several processes, or a wheel build). A test joins the
# integration tier by asking for one of these fixtures, or by the marker on itself or its module.
# (`sitl`: a real-time software vehicle on UDP, a few seconds of wall clock per flight.)
INTEGRATION_FIXTURES = {"ray_session", "mlflow_server", "mlflow_server_process", "checkpoint", "exported", "sitl"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


# One in-process Ray for a test module. address="local": a fresh instance, never a cluster that a `ray start`
# elsewhere on the machine left running (a plain ray.init() would attach to it).
RAY_TEST_INIT = {
    "address": "local",
    "num_cpus": 2,
    "include_dashboard": False,
    "object_store_memory": 10**9,
    "logging_level": "ERROR",
    "log_to_driver": False,
}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(**RAY_TEST_INIT)
    yield
    ray.shutdown()


def rllib_settings(overrides: Iterable[str] | Mapping[str, Any] = (), **settings) -> dict:
    """Keyword arguments of `algorithm.build_algorithm` / `algorithm_config` from the schema: its defaults with
    ``overrides`` (``path=value`` texts as `--set` takes them, or {path: value}), then ``settings`` replacing single
    arguments (an env the schema does not know, a knob it has not). The schema's env is Hover: a test on another env
    passes ``env`` and ``env_config``, and ``free_log_std=False`` where its actions are not a Box."""
    from entropilot.platform.algorithm import algorithm_settings
    from entropilot.platform.config import parse_config

    return {**algorithm_settings(parse_config({}, overrides)), **settings}


class MlflowServer:
    """`mlflow server` as a subprocess; `stop` and `start` keep the port and the store, so a test can take
    the server away and bring the same one back."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> None:  # ~10 s alone; a machine shared by many runs has taken 50
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.root / "server.log", "ab")
        # Own session: the server forks uvicorn and a job runner; stop() ends the whole group.
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout_s} s:\n{self._log_tail()}")

    def stop(self) -> None:
        if self._process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may outlive its leader for a moment; kill stragglers so the port is free for start().
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process = None

    @contextmanager
    def stopped(self):
        """The server is away inside the block and back (same port, same store) after it, even on failure."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory) -> MlflowServer:
    """The session's MLflow server, for tests that stop and restart it (`with server.stopped(): ...`)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), _free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process) -> str:
    """The tracking URI of the session's MLflow server (~10-15 s to start, once per session)."""
    return mlflow_server_process.uri


@contextmanager
def restored_mlflow_env():
    """Undo what starting a RunTracker changes in the process: MLflow's global tracking URI (which it also
    exports as MLFLOW_TRACKING_URI) and the fail-fast HTTP settings, so tests don't leak into each other."""
    import mlflow

    from entropilot.platform.tracking import FAIL_FAST_HTTP_ENV

    names = ["MLFLOW_TRACKING_URI", *FAIL_FAST_HTTP_ENV]
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def isolated_mlflow_env():
    with restored_mlflow_env():
        yield


EXPORT_PARITY_BATCH = 256


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, mlflow_server) -> Path:
    """One PPO iteration on a short hover task, tracked in the session's MLflow server (~10 s); shared by the export,
    registry and link tests. Ray is shut down again before the tests use it (they need only the files)."""
    import ray

    from entropilot.envs import HOVER_ID
    from entropilot.platform.config import parse_config
    from entropilot.platform.train import train

    root = tmp_path_factory.mktemp("export")
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**RAY_TEST_INIT)
    try:
        with restored_mlflow_env():
            cfg = parse_config(
                {
                    "name": "tiny-export",
                    "env": {"id": HOVER_ID, "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
                    "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
                    "entropy": {"init": {"enabled": False}},
                    "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
                    "mlflow": {"tracking_uri": mlflow_server, "experiment": "test-export"},
                    "stop": {"iterations": 1},
                    "evaluation": {"interval": None},
                    "checkpoint": {"interval": None, "dir": str(root / "runs")},
                }
            )
            path = train(cfg, echo=lambda line: None).checkpoint
    finally:
        if started_ray:
            ray.shutdown()
    return path


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """``checkpoint`` exported to a policy.onnx alone in its folder (an ``ExportResult``)."""
    from entropilot.deploy.export import export_policy

    return export_policy(checkpoint, tmp_path_factory.mktemp("onnx") / "policy.onnx", parity_batch=EXPORT_PARITY_BATCH)
