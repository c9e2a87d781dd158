"""A registered policy as a source: ``models:/name@alias`` or ``models:/name/version`` in the MLflow model registry ->
the very ONNX file ``entropilot export --register`` logged, checked against the SHA-256 recorded beside it at export
(the model version's ``entropilot.onnx_sha256`` tag) and against its own content seal, kept in a local cache named by
that SHA-256.

mlflow is imported only inside ``pull_policy``: importing this module (and flying a local file) does not need it. The
registry is a ground-station service: pull there (``entropilot export models:/... -o policy.onnx``) and copy the file
to the vehicle, which then needs neither mlflow nor a network (see README, Deployment).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from entropilot.deploy.contract import SHA256_TAG, sha256_hex, verify_seal
from entropilot.errors import EntropilotError

__all__ = [
    "CACHE_ENV",
    "RegisteredPolicy",
    "RegistryError",
    "check_registry_names",
    "is_model_uri",
    "parse_model_uri",
    "pull_policy",
]

CACHE_ENV = "ENTROPILOT_MODEL_CACHE"
MODEL_FILE = "model.onnx"  # the file name MLflow's ONNX flavour stores the model under
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")


class RegistryError(EntropilotError, RuntimeError):
    """The registered model version cannot be had, or what the registry holds is not the file that was registered."""


@dataclass(frozen=True)
class RegisteredPolicy:
    uri: str  # as asked: models:/name@alias or models:/name/version
    name: str
    version: int
    run_id: str | None  # the run the model version was logged to (export logs to the training run; None: no run)
    sha256: str  # recorded at export; the file at ``path`` has it
    path: Path  # the verified local copy
    downloaded: bool  # False: served from the cache


def is_model_uri(source) -> bool:
    return str(source).startswith("models:/")


def parse_model_uri(uri: str) -> tuple[str, str | None, int | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, 3)."""
    match = _MODEL_URI.fullmatch(str(uri))
    if match is None:
        raise RegistryError(f"{uri!r}: a registered model is models:/NAME@ALIAS or models:/NAME/VERSION")
    version = match["version"]
    return match["name"], match["alias"], None if version is None else int(version)


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "entropilot" / "models"


def pull_policy(
    uri: str, *, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None
) -> RegisteredPolicy:
    """Resolve ``uri`` in the registry at ``tracking_uri`` (default: MLFLOW_TRACKING_URI, else MLflow's default
    ``sqlite:///mlflow.db``), and return a local copy of its ONNX file that has the SHA-256 recorded at export and an
    intact seal. The copy lives in ``cache_dir`` (default: $ENTROPILOT_MODEL_CACHE or ~/.cache/entropilot/models) as
    ``<sha256>.onnx``: a cached copy with the right SHA-256 is served without downloading. The registry is asked every
    time (an alias may have moved); RegistryError or PolicyContractError if anything does not match."""
    from entropilot.platform.config import DEFAULT_TRACKING_URI  # training's default store: MLflow's own since 3.7

    name, alias, version = parse_model_uri(uri)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    _require_store(tracking_uri)
    from entropilot.platform.tracking import fail_fast_http

    with fail_fast_http():
        return _pull(uri, name, alias, version, tracking_uri, cache_dir)


def _pull(
    uri: str, name: str, alias: str | None, version: int | None, tracking_uri: str, cache_dir
) -> RegisteredPolicy:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        model_version = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, str(version))
        )
    except MlflowException as err:
        raise RegistryError(_not_found(client, uri, name, alias, version, tracking_uri, err)) from None
    sha256 = (model_version.tags or {}).get(SHA256_TAG)
    if not sha256:
        raise RegistryError(
            f"{uri}: version {model_version.version} of {name!r} carries no {SHA256_TAG} tag, so nothing "
            f"says which file was registered; register it with `entropilot export ... --register {name}`"
        )
    sha256 = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):  # it names the cache file, too
        raise RegistryError(f"{uri}: its {SHA256_TAG} tag {sha256[:80]!r} is not a SHA-256 (64 hex digits)")
    number = int(model_version.version)
    found = functools.partial(
        RegisteredPolicy, uri=uri, name=name, version=number, run_id=model_version.run_id, sha256=sha256
    )

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{sha256}.onnx"
    if cached.is_file() and sha256_hex(cached.read_bytes()) == sha256:
        return found(path=cached, downloaded=False)

    where = f"{uri} (version {number} at {tracking_uri})"
    with tempfile.TemporaryDirectory(prefix="entropilot-pull-") as tmp:
        try:
            # Not download_artifacts("models:/..."): MLflow 3.17 resolves that in the global registry, not this one.
            source = client.get_model_version_download_uri(name, str(number))
            local = Path(mlflow.artifacts.download_artifacts(source, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException as err:
            raise RegistryError(f"{where}: cannot download its files ({_first_line(err)})") from None
        path = local / MODEL_FILE if local.is_dir() else local
        if not path.is_file():
            raise RegistryError(f"{where}: holds no {MODEL_FILE} (files: {sorted(p.name for p in local.iterdir())})")
        data = path.read_bytes()
    got = sha256_hex(data)
    if got != sha256:
        raise RegistryError(
            f"{where}: the stored file's SHA-256 is {got}, but {sha256} was recorded when it was "
            f"registered: the file was altered or replaced; refusing it"
        )
    verify_seal(data, where)  # PolicyContractError: the bytes were changed and the tag rewritten to match
    cache.mkdir(parents=True, exist_ok=True)
    staged = cache / f".{sha256}.{os.getpid()}.tmp"
    try:
        staged.write_bytes(data)
        os.replace(staged, cached)
    finally:
        staged.unlink(missing_ok=True)
    return found(path=cached, downloaded=True)


def check_registry_names(name: str | None, alias: str | None) -> None:
    """Refuse, before an export's work, a model name or alias the MLflow registry would refuse after it (MLflow's own
    rules; private validators, checked: MLflow 3.17)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    from entropilot.inputs import InputError

    checks = [("--register", name, [_validate_model_name])]
    checks.append(("--alias", alias, [_validate_model_alias_name, _validate_model_alias_name_reserved]))
    for option, value, validators in checks:
        if value is None:
            continue
        for validate in validators:
            try:
                validate(value)
            except MlflowException as err:
                raise InputError(option, value, f"MLflow refuses it: {err.message}") from None


def _require_store(tracking_uri: str) -> None:
    from entropilot.inputs import missing_store

    problem = missing_store(tracking_uri)
    if problem:
        raise RegistryError(problem)


def _not_found(client, uri: str, name: str, alias: str | None, version: int | None, tracking_uri: str, err) -> str:
    from mlflow.exceptions import MlflowException

    if getattr(err, "error_code", None) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return f"{uri}: cannot ask the registry at {tracking_uri} ({_first_line(err)})"
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return f"{uri}: no registered model named {name!r} at {tracking_uri} ({_first_line(err)})"
    if alias is not None:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted((registered.aliases or {}).items())) or "none"
        return f"{uri}: registered model {name!r} has no alias {alias!r} at {tracking_uri} (its aliases: {aliases})"
    return f"{uri}: registered model {name!r} has no version {version} at {tracking_uri} ({_first_line(err)})"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__
