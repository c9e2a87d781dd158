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

from entropilot.deploy.c_toolchain import find_host_compiler

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
        # Without MLflow's job runner (GenAI judges, trace roll-ups: nothing entropilot uses): its consumer
        # processes import MLflow beside uvicorn at every start, which doubled each start (~10 s -> 20-24 s on
        # 2 busy cores), and poll in the background through the whole session.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # Own session: the server forks uvicorn; stop() ends the whole group.
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
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

# For the tests that compile generated C with the host compiler.
needs_cc = pytest.mark.skipif(find_host_compiler() is None, reason="no host C compiler (cc, gcc or clang)")


def train_tiny_hover(root: Path, tracking_uri: str, name: str, experiment: str, **env_kwargs) -> Path:
    """One PPO iteration on a short hover task (``env_kwargs`` over it), run ``name`` tracked at ``tracking_uri`` in
    ``experiment`` (~5 s); its checkpoint under ``root``. It samples and learns in this process, without Ray (unless
    Ray is up already), and MLflow's process-wide settings are put back afterwards."""
    from entropilot.envs import HOVER_ID
    from entropilot.platform.config import parse_config
    from entropilot.platform.train import train

    with restored_mlflow_env():
        cfg = parse_config(
            {
                "name": name,
                "env": {"id": HOVER_ID, "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0, **env_kwargs}},
                "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
                "entropy": {"init": {"enabled": False}},
                # Sampling in the driver: a checkpoint to export needs no runner actor, whose start
                # (~3.5 s on a busy 2-core box) was most of a tiny run's time.
                "resources": {"num_env_runners": 0, "envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
                "mlflow": {"tracking_uri": tracking_uri, "experiment": experiment},
                "stop": {"iterations": 1},
                "evaluation": {"interval": None},
                "checkpoint": {"interval": None, "dir": str(root / "runs")},
            }
        )
        return train(cfg, echo=lambda line: None).checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, mlflow_server) -> Path:
    """One PPO iteration on a short hover task, tracked in the session's MLflow server (~5 s); shared by the export,
    registry and link tests (they need only the files)."""
    return train_tiny_hover(tmp_path_factory.mktemp("export"), mlflow_server, "tiny-export", "test-export")


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """``checkpoint`` exported to a policy.onnx alone in its folder (an ``ExportResult``)."""
    from entropilot.deploy.export import export_policy

    return export_policy(checkpoint, tmp_path_factory.mktemp("onnx") / "policy.onnx", parity_batch=EXPORT_PARITY_BATCH)


def sealed_policy_file(path, nodes, constants, *, output_type=None, output_size: int = 4, **metadata) -> Path:
    """A graph (``nodes`` from ``observation`` to ``action``, ``constants`` {name: array} as initializers) written as
    export writes a file: export's metadata (``metadata`` adds or replaces entries) and its seal. Made without torch,
    flown by onnxruntime like any export."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from entropilot.deploy.contract import (
        DETERMINISTIC_ACTION,
        FRAME_CONVENTION,
        INPUT_NAME,
        OUTPUT_NAME,
        SCHEMA_VERSION,
        encode_metadata,
        seal,
    )
    from entropilot.envs import HOVER_ID, OBSERVATION_GROUPS, OBSERVATION_NAMES

    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", len(OBSERVATION_NAMES)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, output_type or TensorProto.FLOAT, ["batch", output_size])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    values = {
        "schema_version": SCHEMA_VERSION,
        "observation_names": list(OBSERVATION_NAMES),
        "observation_groups": [{"group": g, "names": list(n), "meaning": m} for g, n, m in OBSERVATION_GROUPS],
        "normalization": None,
        "action_mode": "ctbr",
        "action_meaning": ["test"] * 4,
        "action_low": [-1.0] * 4,
        "action_high": [1.0] * 4,
        "control_hz": 48,
        "physics_hz": 240,
        "frame_convention": FRAME_CONVENTION,
        "deterministic_action": DETERMINISTIC_ACTION,
        "env_id": HOVER_ID,
        "env_kwargs": {},
        "training_run_id": None,
        "training_iteration": 0,
        "algorithm": "none",
        "entropilot_version": "test",
        "exporter": "tests/conftest.py",
        **metadata,
    }
    for key, value in encode_metadata(values).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    Path(path).write_bytes(seal(model.SerializeToString()))
    return Path(path)


def write_linear_policy(path, *, action_mode: str = "ctbr", k_z: float = 0.5, k_level: float = 0.0, **metadata) -> Path:
    """A linear 'policy' (``sealed_policy_file``): hover thrust minus k_z * (altitude error + vertical speed), and with
    ``k_level`` body rates that level the vehicle (from the rotation's bottom row)."""
    import numpy as np
    from onnx import helper

    from entropilot.deploy.contract import INPUT_NAME, OUTPUT_NAME
    from entropilot.envs import OBSERVATION_NAMES

    hover = -1.0 / 9.0 if action_mode == "ctbr" else None  # 2 / thrust_to_weight(2.25) - 1
    weights = np.zeros((len(OBSERVATION_NAMES), 4), dtype=np.float32)
    weights[OBSERVATION_NAMES.index("pos_err_z"), 0] = -k_z
    weights[OBSERVATION_NAMES.index("vel_z"), 0] = -k_z
    weights[OBSERVATION_NAMES.index("r32"), 1] = -k_level  # roll rate against the tilt about body x
    weights[OBSERVATION_NAMES.index("r31"), 2] = k_level  # pitch rate against the tilt about body y
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "W"], ["wx"]),
        helper.make_node("Add", ["wx", "b"], ["y"]),
        helper.make_node("Clip", ["y", "lo", "hi"], [OUTPUT_NAME]),
    ]
    constants = {
        "W": weights,
        "b": np.array([hover, 0.0, 0.0, 0.0], dtype=np.float32),
        "lo": np.float32(-1.0),
        "hi": np.float32(1.0),
    }
    return sealed_policy_file(path, nodes, constants, action_mode=action_mode, **metadata)


@pytest.fixture
def one_torch_thread():
    """One torch thread, as a Ray env-runner actor and training's local learner have (`build_algorithm`): a thread
    pool makes each tiny forward and minibatch step wait on a busy 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
