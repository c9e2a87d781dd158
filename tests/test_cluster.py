"""`entropilot submit` / `entropilot jobs` against a real two-node Ray cluster on 127.0.0.1 with token auth
(Ray 2.60's default): a short training lands env runners on both nodes and logs to a real MLflow server."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from entropilot.platform.config import parse_config
from entropilot.platform.jobs import ClusterError, project_root, tracking_uri_for_cluster
from entropilot.platform.names import ENV_RUNNER_NODES_TAG

pytestmark = pytest.mark.integration  # real Ray clusters of one and two nodes

VENV_BIN = str(Path(sys.executable).parent)
RAY = str(Path(VENV_BIN) / "ray")
HOVER = "configs/hover.yaml"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_range(size: int) -> int:
    """The first port of ``size`` consecutive free ports (the workers' port range of one node), below the kernel's
    ephemeral range, where `free_ports` (bind to port 0) takes the other ports from: the two must never overlap."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        start = secrets.randbelow(max(1, low - size - 20000)) + 20000
        if all(_bindable(port) for port in range(start, start + size)):
            return start
    raise RuntimeError("no free port range")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """A head and one worker node (`ray start --block`, two raylets) on 127.0.0.1, every port chosen free and a
    private temp dir, so it neither collides with nor is found by any other Ray on this machine.

    `ray stop` is not used to end it: it kills every Ray process on the machine, other people's included; each
    node's `ray start` runs in its own session and the whole session is killed instead."""

    def __init__(self, cpus_per_node: int = 1, nodes: int = 2, path_first: Path | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="ep-ray-", dir="/tmp")  # unix socket paths must stay < 108 chars
        self.token = secrets.token_hex(32)
        # What the cluster's processes (and so the submitted job) see: token auth on, our venv first on PATH
        # (unless `path_first` puts another `python` before it: a head started outside entropilot's environment).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
        first = f"{path_first}{os.pathsep}" if path_first else ""
        self.env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, PATH=first + VENV_BIN + os.pathsep + os.environ["PATH"]
        )
        self.gcs_port, self.dashboard_port, client_port = free_ports(3)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.processes: list[subprocess.Popen] = []
        try:
            self._start(
                [
                    "--head",
                    "--port",
                    str(self.gcs_port),
                    "--dashboard-port",
                    str(self.dashboard_port),
                    "--dashboard-host",
                    "127.0.0.1",
                    "--ray-client-server-port",
                    str(client_port),
                    "--include-dashboard",
                    "true",
                ],
                cpus_per_node,
                "head",
            )
            head = self.processes[0]
            self._wait_for_nodes(1, watch=[head])  # a worker started alongside a busy head times out registering
            for attempt in range(3 if nodes == 2 else 0):
                # Its own temp dir inside ours: nodes sharing one would share the runtime-env folder, and one
                # node's cleanup of the job's working dir pulls it from under the other's processes.
                worker = self._start(
                    ["--address", f"127.0.0.1:{self.gcs_port}"],
                    cpus_per_node,
                    f"worker{attempt}",
                    temp_dir=f"{self.temp_dir}/w{attempt}",
                )
                try:
                    self._wait_for_nodes(2, watch=[head, worker])
                    break
                except RuntimeError:
                    # `ray start` gives a joining node a fixed 30 s to register, too short on a loaded machine.
                    if worker.poll() is None or attempt == 2:
                        raise
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(worker.pid, signal.SIGKILL)  # its raylet may be up: it must not join late
        except BaseException:
            self.stop()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            raise

    def _start(self, role_args: list[str], cpus: int, name: str, temp_dir: str | None = None) -> subprocess.Popen:
        node_ports = free_ports(6)
        workers = free_port_range(40)
        command = [
            RAY,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            temp_dir or self.temp_dir,
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(200 * 2**20),
            "--disable-usage-stats",
            *role_args,
            "--node-manager-port",
            str(node_ports[0]),
            "--object-manager-port",
            str(node_ports[1]),
            "--dashboard-agent-listen-port",
            str(node_ports[2]),
            "--dashboard-agent-grpc-port",
            str(node_ports[3]),
            "--runtime-env-agent-port",
            str(node_ports[4]),
            "--metrics-export-port",
            str(node_ports[5]),
            "--min-worker-port",
            str(workers),
            "--max-worker-port",
            str(workers + 39),
        ]
        log = open(Path(self.temp_dir) / f"{name}.log", "wb")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def nodes(self) -> list[dict]:
        """The alive nodes, from Ray's state API (`ray list nodes`)."""
        out = subprocess.run(
            [RAY, "list", "nodes", "--address", self.address, "--format", "json", "--filter", "state=ALIVE"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            return json.loads(out.stdout) if out.returncode == 0 else []
        except json.JSONDecodeError:  # the dashboard is still starting
            return []

    def _wait_for_nodes(self, count: int, watch: list[subprocess.Popen], timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in watch:
                if process.poll() is not None:
                    raise RuntimeError(f"`ray start` exited with {process.returncode}:\n{self.log_tail()}")
            if len(self.nodes()) == count:
                return
            time.sleep(1)
        raise RuntimeError(f"{count} Ray nodes not up after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in Path(self.temp_dir).glob("*.log"))

    def own_processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: in the session of one of its `ray start` calls, or naming its temp
        dir."""
        sessions = {process.pid for process in self.processes}
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if os.getsid(proc.pid) in sessions or any(self.temp_dir in arg for arg in proc.info["cmdline"] or ()):
                    found.append(proc)
            except (psutil.Error, ProcessLookupError):
                continue
        return found

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            for process in self.processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
            psutil.wait_procs(self.own_processes(), timeout=wait_s)
            if not self.own_processes():
                break
        for process in self.processes:
            process.wait(10)
        # What `ray stop` also does: forget the cluster's address, so `ray.init()` with this temp dir starts anew.
        for address_file in Path(self.temp_dir).glob("**/ray_current_cluster"):
            address_file.unlink()


@pytest.fixture(scope="module")
def cluster():
    started = time.perf_counter()
    ray_cluster = LocalCluster()
    print(f"two-node cluster up in {time.perf_counter() - started:.1f} s")
    yield ray_cluster
    ray_cluster.stop()
    shutil.rmtree(ray_cluster.temp_dir, ignore_errors=True)


def entropilot(*args: str, env: dict, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "entropilot", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=project_root(),
    )


def client_env(cluster: LocalCluster, home: Path, token: str | None) -> dict:
    """A user's shell: no Ray or MLflow variables, an empty home (no ~/.ray/auth_token), the token if given."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def test_submitted_training_runs_on_both_nodes_and_logs_to_mlflow(mlflow_server, cluster, tmp_path):
    name = f"cluster-{secrets.token_hex(4)}"
    overrides = [
        f"name={name}",
        "seed=0",
        "env.kwargs.episode_seconds=2.0",
        "algorithm.train_batch_size=200",
        "algorithm.minibatch_size=100",
        "algorithm.num_epochs=1",
        "entropy.init.enabled=false",
        # One CPU per runner, one CPU per node: the two runners can only be placed one on each node.
        "resources.num_env_runners=2",
        "resources.envs_per_runner=1",
        "resources.num_cpus_per_env_runner=1",
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=test-cluster",
        "mlflow.registered_model=null",
        "mlflow.video=false",
        "mlflow.system_metrics=false",
        "stop.iterations=2",
        "stop.success_rate=null",
        "stop.success_lower_bound=null",
        "stop.max_crashes=null",
        "stop.time_s=null",
        "evaluation.interval=null",
        "checkpoint.interval=null",
        "checkpoint.keep_best=false",
    ]
    args = ["submit", HOVER, "--address", cluster.address, *(a for o in overrides for a in ("--set", o))]
    started = time.perf_counter()
    done = entropilot(*args, env=client_env(cluster, tmp_path, cluster.token))
    print(f"submit -> job finished in {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    job_id = out.split("submitted job ", 1)[1].split(":", 1)[0]
    assert f"{cluster.address}/#/jobs/{job_id}" in out
    assert "iter    2 |" in out and f"job {job_id}: SUCCEEDED" in out

    # The runners' nodes, as training recorded them, are the cluster's two nodes.
    runs = mlflow.MlflowClient(mlflow_server).search_runs(
        [mlflow.MlflowClient(mlflow_server).get_experiment_by_name("test-cluster").experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    runner_nodes = run.data.tags[ENV_RUNNER_NODES_TAG].split(",")
    assert len(runner_nodes) == 2
    assert set(runner_nodes) == {node["node_id"] for node in cluster.nodes()}
    assert "env runners on 2 node(s)" in out
    history = mlflow.MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "env_steps")
    assert [m.step for m in history] == [1, 2] and history[-1].value >= 400

    listed = entropilot("jobs", "list", "--address", cluster.address, env=client_env(cluster, tmp_path, cluster.token))
    assert listed.returncode == 0 and any(job_id in line and "SUCCEEDED" in line for line in listed.stdout.splitlines())
    logs = entropilot(
        "jobs",
        "logs",
        job_id,
        env={**client_env(cluster, tmp_path, cluster.token), "RAY_API_SERVER_ADDRESS": cluster.address},
    )
    assert logs.returncode == 0 and f"MLflow run {run.info.run_id}" in logs.stdout


def test_submit_without_or_with_a_wrong_token_says_what_to_do(cluster, tmp_path):
    missing = entropilot("jobs", "list", "--address", cluster.address, env=client_env(cluster, tmp_path, None))
    assert missing.returncode == 1
    assert "requires an auth token and none was found" in missing.stderr
    assert "RAY_AUTH_TOKEN" in missing.stderr and "ray get-auth-token" in missing.stderr
    wrong = entropilot(
        "submit", HOVER, "--address", cluster.address, env=client_env(cluster, tmp_path, secrets.token_hex(32))
    )
    assert wrong.returncode == 1 and "rejected the auth token from RAY_AUTH_TOKEN" in wrong.stderr
    unreadable = entropilot(
        "jobs",
        "list",
        "--address",
        cluster.address,
        env={**client_env(cluster, tmp_path, None), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")},
    )
    assert unreadable.returncode == 1
    assert (
        f"RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: {tmp_path / 'none'};" in unreadable.stderr
    )


def test_a_submitted_job_can_be_stopped(cluster, tmp_path):
    env = {**client_env(cluster, tmp_path, cluster.token), "RAY_API_SERVER_ADDRESS": cluster.address}
    submitted = entropilot(
        "submit",
        HOVER,
        "--no-follow",
        "--set",
        "stop.iterations=1000",
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    assert f"entropilot jobs logs {job_id} --follow" in submitted.stdout
    stopped = entropilot("jobs", "stop", job_id, env=env)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    followed = entropilot("jobs", "logs", job_id, "--follow", env=env)
    assert followed.returncode == 1 and f"job {job_id}: STOPPED" in followed.stdout
    missing = entropilot("jobs", "logs", "raysubmit_nosuchjob", env=env)
    assert missing.returncode == 1 and "Job raysubmit_nosuchjob does not exist" in missing.stderr


def test_a_bad_address_is_one_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    nothing = entropilot("jobs", "list", "--address", f"http://127.0.0.1:{free_ports(1)[0]}", env=env)
    assert nothing.returncode == 1 and "cannot reach a Ray dashboard at http://127.0.0.1:" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    unset = entropilot("jobs", "list", env=env)
    assert unset.returncode == 2 and "RAY_API_SERVER_ADDRESS" in unset.stderr


def test_a_store_on_this_machine_is_refused_for_a_remote_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = parse_config({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}})
    with pytest.raises(ClusterError, match="can't write to.*mlflow.tracking_uri"):
        tracking_uri_for_cluster(local, "http://10.0.0.7:8265")
    with pytest.raises(ClusterError, match="http://127.0.0.1:5000 is on this machine"):
        tracking_uri_for_cluster(
            parse_config({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}), "http://head.example:8265"
        )
    # A cluster on this machine writes the same file, found by its absolute path from the job's working dir.
    assert tracking_uri_for_cluster(local, "http://127.0.0.1:8265") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (
        tracking_uri_for_cluster(
            parse_config({"mlflow": {"tracking_uri": "http://mlflow:5000"}}), "http://head.example:8265"
        )
        == "http://mlflow:5000"
    )


FOREIGN_PYTHON = "/usr/bin/python3"  # the system's Python: no ray, mlflow or matplotlib


def _foreign_python_lacks_ray() -> bool:
    if not Path(FOREIGN_PYTHON).is_file():
        return False
    return subprocess.run([FOREIGN_PYTHON, "-c", "import ray"], capture_output=True, timeout=60).returncode != 0


@pytest.mark.skipif(not _foreign_python_lacks_ray(), reason=f"needs {FOREIGN_PYTHON} without ray")
def test_submit_to_a_head_whose_python_lacks_the_dependencies_says_what_to_install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(FOREIGN_PYTHON)  # what a job's entrypoint runs: `python` on the head's PATH
    foreign = LocalCluster(nodes=1, path_first=bin_dir)
    try:
        env = client_env(foreign, tmp_path, foreign.token)
        done = entropilot("submit", HOVER, "--address", foreign.address, "--set", "stop.iterations=1", env=env)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert (str(bin_dir) in errors[0] or FOREIGN_PYTHON in errors[0]) and "lacks" in errors[0]
        assert "matplotlib" in errors[0] and "mlflow" in errors[0] and "pip install" in errors[0]
        listed = entropilot("jobs", "list", "--address", foreign.address, env=env)
        jobs = listed.stdout.splitlines()
        assert listed.returncode == 0 and len(jobs) == 1, listed.stdout  # the check only: no training was submitted
        assert jobs[0].startswith("entropilot-python-check-") and "SUCCEEDED" in jobs[0]
    finally:
        foreign.stop()
        shutil.rmtree(foreign.temp_dir, ignore_errors=True)


def test_the_cluster_stops_without_leftovers(cluster):
    assert cluster.own_processes()
    cluster.stop()
    assert not cluster.own_processes()
    for port in (cluster.gcs_port, cluster.dashboard_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    # A later plain ray.init() with the cluster's temp dir does not attach to it: it starts a fresh instance.
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ray; ray.init(num_cpus=1, include_dashboard=False, "
            f"object_store_memory=10**8, _temp_dir={cluster.temp_dir!r}); "
            "print(ray.get_runtime_context().gcs_address, len(ray.nodes())); ray.shutdown()",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr
    address, nodes = fresh.stdout.split()[-2:]
    assert address != f"127.0.0.1:{cluster.gcs_port}" and nodes == "1"
