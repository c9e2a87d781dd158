"""Shared test fixtures: a real MLflow tracking server on 127.0.0.1 (sqlite store, proxied artifacts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest


class MlflowServer:
    """`mlflow server` as a subprocess; `stop` and `start` keep the port and the store, so a test can take
    the server away and bring the same one back."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow_cli), "server",
            "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
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
