"""Training on a Ray cluster through Ray's Job Submission API: submit `entropilot train` with this project as the
job's working dir, follow, list and stop jobs; finds the cluster's auth token and turns Ray's connection and
authentication failures into one message that says what to do."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import entropilot
from entropilot.errors import EntropilotError
from entropilot.inputs import http_url
from entropilot.platform.config import ExperimentConfig

# Never uploaded: environments, outputs, local stores, exported policies (the job writes its own to MLflow).
UPLOAD_EXCLUDES = [
    ".venv/",
    "venv/",
    ".git/",
    "runs/",
    "out/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "*.onnx",
    "*.onnx.data",
    "__pycache__/",
    ".pytest_cache/",
    "*.egg-info/",
]
# Files above this size are left out too (Ray warns at 10 MiB and refuses packages over 512 MiB).
MAX_UPLOAD_FILE_BYTES = 10 * 1024 * 1024
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# What a job's `python` has, asked by `Cluster.check_python` (one line, so the job list stays readable; standard
# library only, any Python 3.8+): its path, version and the installed version of each distribution in NAMES.
PYTHON_PROBE = (
    "import json, sys, importlib.metadata as m; "
    "d = {(x.metadata['Name'] or '').lower().replace('_', '-'): x.version for x in m.distributions()}; "
    "print('ENTROPILOT-PYTHON', json.dumps({'executable': sys.executable, "
    "'python': '%d.%d.%d' % sys.version_info[:3], 'versions': {n: d.get(n) for n in NAMES}}))"
)
PROBE_TIMEOUT_S = 120.0
DASHBOARD_EXAMPLE = "http://HEAD:8265 (the head's dashboard)"
TOKEN_HELP = (
    "set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in "
    "~/.ray/auth_token; on the head node `ray get-auth-token` prints it"
)


class ClusterError(EntropilotError, RuntimeError):
    """The cluster could not be reached, refused us, or the submission would not work there."""


@dataclass
class Submission:
    job_id: str
    dashboard_url: str
    entrypoint: str
    tracking_uri: str


class Cluster:
    """A Ray cluster's job server, reached through its dashboard address (http://HEAD:8265)."""

    def __init__(self, address: str):
        """Connect, sending the cluster's auth token.

        Ray 2.60 clients send a token only when RAY_AUTH_MODE=token is set, while clusters require one by
        default; so the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token: Ray's own lookup) is
        sent whenever there is one: a cluster without authentication ignores it.
        """
        http_url(address, "--address", example=DASHBOARD_EXAMPLE)
        from ray._raylet import AuthenticationTokenLoader
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        try:
            headers = AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)
        except AuthenticationError as err:
            # Ray's message goes on about RAY_AUTH_MODE, which a client needs not set: keep its first sentence.
            raise ClusterError(f"cannot read the Ray auth token: {str(err).split('. ')[0]}; {TOKEN_HELP}") from None
        self.address = address
        self._token_sent = bool(headers)
        with _explicit_address(), self._errors():
            self.client = JobSubmissionClient(address, headers=dict(headers))
        self.address = self.client.get_address()

    def check_python(self, echo: Callable[[str], None] = print) -> None:
        """Run a check job with the cluster's `python` (what a submitted job's entrypoint runs) and refuse, in one line
        that says what to install where, if it lacks entropilot's dependencies or their versions: such a job would
        start Ray and die in a traceback. Takes a few seconds; the job stays in the list as
        `entropilot-python-check-*` (deleting it races Ray 2.60's job monitor, which then lists a FAILED ghost)."""
        from ray.job_submission import JobStatus

        requirements, requires_python = project_requirements()
        names = sorted(name.lower().replace("_", "-") for name in requirements)
        code = PYTHON_PROBE.replace("NAMES", repr(names))
        with self._errors():
            job_id = self.client.submit_job(
                entrypoint=shlex.join(["python", "-c", code]),
                submission_id=f"entropilot-python-check-{secrets.token_hex(4)}",
                metadata={"entropilot": "python check"},
            )
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while (status := self.client.get_job_status(job_id)) not in (
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
                JobStatus.STOPPED,
            ):
                if time.monotonic() > deadline:
                    self.client.stop_job(job_id)
                    raise ClusterError(
                        f"the cluster at {self.address} did not run a check job within {PROBE_TIMEOUT_S:g} s "
                        f"(job {job_id}, {status}): is it overloaded?"
                    )
                time.sleep(0.5)
            logs = self.client.get_job_logs(job_id)
        report = next((line for line in logs.splitlines() if line.startswith("ENTROPILOT-PYTHON ")), None)
        if report is None:
            last = logs.strip().splitlines()[-1] if logs.strip() else f"job {status} with no output"
            raise ClusterError(
                f"the cluster at {self.address} cannot run `python` for a job ({last}): jobs run the `python` on the "
                "head's PATH; start the head (`ray start --head`) from entropilot's environment"
            )
        problem = python_problem(json.loads(report.removeprefix("ENTROPILOT-PYTHON ")), requirements, requires_python)
        if problem:
            raise ClusterError(f"the cluster at {self.address} runs jobs with {problem}")
        echo(f"cluster python: {json.loads(report.split(' ', 1)[1])['executable']} has entropilot's dependencies")

    def submit_training(
        self,
        config_path: str,
        overrides: Sequence[str],
        cfg: ExperimentConfig,
        tracking_uri: str,
        echo: Callable[[str], None] = print,
    ) -> Submission:
        """Submit `python -m entropilot train CONFIG --set ...` with the project folder as the working dir.

        ``cfg`` is the config already validated here, so a bad value fails before anything is uploaded;
        ``tracking_uri`` is where the job logs (`tracking_uri_for_cluster`).
        """
        root = project_root()
        config = Path(config_path).resolve()
        if not config.is_relative_to(root):
            raise ClusterError(
                f"{config_path}: the config must lie inside the project folder {root}, which is "
                "uploaded as the job's working dir (e.g. put it in configs/)"
            )
        if cfg.mlflow.tracking_uri not in (None, tracking_uri):
            overrides = [*overrides, f"mlflow.tracking_uri={tracking_uri}"]  # made absolute: the job runs elsewhere
        relative = config.relative_to(root).as_posix()
        entrypoint = shlex.join(
            ["python", "-m", "entropilot", "train", relative, *(arg for item in overrides for arg in ("--set", item))]
        )
        big = big_files(root)
        for path in big:
            echo(f"not uploading {path} (over {MAX_UPLOAD_FILE_BYTES // 2**20} MiB)")
        runtime_env = {
            "working_dir": str(root),
            "excludes": UPLOAD_EXCLUDES + big,
            "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri},
        }
        with self._errors():
            # gpu: on with one learner: that learner lives in the driver, so the driver goes to a GPU node.
            driver_gpus = 1 if cfg.resources.gpu == "on" and cfg.resources.num_learners <= 1 else 0
            job_id = self.client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                entrypoint_num_gpus=driver_gpus or None,
                metadata={"entropilot_config": relative},
            )
        return Submission(job_id, f"{self.address}/#/jobs/{job_id}", entrypoint, tracking_uri)

    def follow(self, job_id: str, echo: Callable[[str], None] = print) -> str:
        """Echo the job's logs as they come until it ends; its final status (SUCCEEDED, FAILED, STOPPED)."""

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                echo(chunk.rstrip("\n"))

        with self._errors():
            asyncio.run(tail())
            return str(self.client.get_job_status(job_id))

    def logs(self, job_id: str) -> str:
        with self._errors():
            return self.client.get_job_logs(job_id)

    def list_jobs(self) -> list:
        """The cluster's jobs (Ray's `JobDetails`), oldest first."""
        with self._errors():
            return sorted(self.client.list_jobs(), key=lambda job: job.start_time or 0)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False if it had already ended."""
        with self._errors():
            return self.client.stop_job(job_id)

    def _errors(self):
        return _cluster_errors(self.address, self._token_sent)


def project_root() -> Path:
    """The source checkout entropilot runs from: what a job uploads (the cluster imports entropilot from it)."""
    root = Path(entropilot.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ClusterError(
            f"entropilot is installed at {root}, not run from a source checkout: submitting needs "
            "the project folder (clone it and `pip install -e .`)"
        )
    return root


def project_requirements() -> tuple[dict[str, str], str]:
    """{distribution: version specifier} of entropilot's required dependencies (extras left out) and its
    requires-python, from this checkout's pyproject.toml (what a job uploads and runs)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]
    requirements = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        requirements[requirement.name] = str(requirement.specifier)
    return requirements, project.get("requires-python", "")


def python_problem(report: dict, requirements: dict[str, str], requires_python: str) -> str | None:
    """What is wrong with the interpreter a check job described (`PYTHON_PROBE`'s report), as the end of a sentence
    that says what to install where; None if it has every requirement in a matching version."""
    from packaging.specifiers import SpecifierSet

    executable, python, versions = report["executable"], report["python"], report["versions"]
    if requires_python and python not in SpecifierSet(requires_python):
        return (
            f"{executable} (Python {python}; entropilot needs {requires_python}): start the head (`ray start --head`) "
            "from entropilot's environment"
        )
    wrong = []
    for name, specifier in sorted(requirements.items()):
        have = versions.get(name.lower().replace("_", "-"))
        if have is None:
            wrong.append(f"{name}{specifier} (missing)")
        elif specifier and have not in SpecifierSet(specifier, prereleases=True):
            wrong.append(f"{name}{specifier} (has {have})")
    if not wrong:
        return None
    install = " ".join(shlex.quote(item.split(" (")[0]) for item in wrong)
    return (
        f"{executable} (Python {python}), which lacks {', '.join(wrong)}: on the head run `{executable} -m pip install "
        f"{install}` (or `pip install -e .` in this project there), or start the head from entropilot's environment"
    )


def big_files(root: Path) -> list[str]:
    """Paths (relative, as upload excludes) of files over MAX_UPLOAD_FILE_BYTES outside the excluded folders."""
    skip_dirs = {pattern.rstrip("/") for pattern in UPLOAD_EXCLUDES if pattern.endswith("/")}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            with contextlib.suppress(OSError):
                if path.stat().st_size > MAX_UPLOAD_FILE_BYTES:
                    found.append("/" + path.relative_to(root).as_posix())
    return sorted(found)


def tracking_uri_for_cluster(cfg: ExperimentConfig, address: str) -> str:
    """The MLflow URI the job logs to: the config's, else MLFLOW_TRACKING_URI, else the local sqlite default.

    A store on this machine (a sqlite file, a server on localhost) works only when the cluster runs here too;
    a relative sqlite path is made absolute, because the job runs in its own working dir.
    """
    http_url(address, "--address", example=DASHBOARD_EXAMPLE)
    uri = cfg.mlflow.resolve_tracking_uri()
    parts = urlsplit(uri)
    on_this_machine = parts.scheme == "sqlite" or (parts.hostname is not None and is_local_host(parts.hostname))
    cluster_host = urlsplit(address).hostname or ""
    if on_this_machine and not is_local_host(cluster_host):
        raise ClusterError(
            f"MLflow tracking URI {uri} is on this machine, which the cluster at {address} can't write to: set "
            "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a tracking server the cluster reaches, "
            "e.g. http://mlflow-host:5000"
        )
    if parts.scheme == "sqlite" and not uri.startswith("sqlite:////") and uri != "sqlite://":
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def is_local_host(host: str) -> bool:
    """Whether ``host`` is this machine (loopback, or this machine's name)."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    # JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given;
    # here the given one (already defaulted from them by the CLI) must win.
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _cluster_errors(address: str, token_sent: bool) -> Iterator[None]:
    """Ray's 401/403, connection and HTTP failures as one ClusterError that names the cause and the fix."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        if not token_sent:
            raise ClusterError(
                f"the Ray cluster at {address} requires an auth token and none was found: {TOKEN_HELP}"
            ) from None
        if "Authentication failed" in str(err):  # 403: the server compared the token and it differs
            raise ClusterError(
                f"the Ray cluster at {address} rejected the auth token from {_token_source()}: it is "
                "not this cluster's token; on the head node `ray get-auth-token` prints the right one"
            ) from None
        raise ClusterError(f"the Ray cluster at {address} refused the request: {_first_line(err)}") from None
    except (ConnectionError, requests.exceptions.RequestException) as err:
        raise ClusterError(
            f"cannot reach a Ray dashboard at {address} ({_first_line(err)}): check the address "
            "(the head's dashboard, http://HEAD:8265 by default) and that the cluster is up"
        ) from None
    except RuntimeError as err:
        if isinstance(err, ClusterError):
            raise
        raise ClusterError(f"the Ray job server at {address} failed: {_first_line(err)}") from None


def _token_source() -> str:
    # The order of Ray's own lookup (ray._raylet.AuthenticationTokenLoader).
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
