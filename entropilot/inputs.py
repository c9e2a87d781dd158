"""Checks of what a person types that is not a config value (paths to write, names that become folders, addresses,
ports, digests), made before anything starts; `InputError` names the input, the value and what is allowed.

Standard library only: the config schema, the CLI and the onboard links all use these, so one mistake reads the
same wherever it is made."""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entropilot.errors import EntropilotError

# A name that becomes one folder name (a run's checkpoints go to runs/<run name>): no separators or control
# characters, not "." or "..", and short enough for every filesystem (255 bytes) with room for a suffix.
MAX_NAME_CHARS = 100
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class InputError(EntropilotError, ValueError):
    """An input refused before any work: `name` (an option, argument or config field), the `value` given, and
    `allowed` (what is wrong and what would be accepted)."""

    def __init__(self, name: str, value: Any, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name} {_shown(value)}: {allowed}")


def _shown(value: Any, limit: int = 120) -> str:
    text = repr(str(value)) if isinstance(value, (str, os.PathLike)) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------- names


def name_problem(text: str) -> str | None:
    """Why `text` cannot be one folder name, or None."""
    if not text:
        return "must not be empty"
    if len(text) > MAX_NAME_CHARS:
        return f"is {len(text)} characters; at most {MAX_NAME_CHARS} (it becomes a folder name)"
    if text in (".", "..") or _BAD_NAME_CHARS.search(text):
        return "becomes a folder name: no '/', '\\' or control characters, and not '.' or '..'"
    return None


# --------------------------------------------------------------------------------------------- paths


def writable_file(path: str | os.PathLike, name: str) -> Path:
    """A file path that can be written: not a folder, and either a writable file or in a folder that exists or can
    be created (the missing folders are made when the file is written). Tried, not guessed from permission bits."""
    target = Path(path)
    _fits_filesystem(target, name)
    if target.is_dir():
        raise InputError(name, path, "is a folder; give a file path")
    if target.exists():
        try:
            with open(target, "r+b"):
                pass
        except OSError as err:
            raise InputError(name, path, f"cannot be written ({err.strerror})") from None
        return target
    _can_create_in(target.parent, name, path)
    return target


def replaceable_file(
    path: str | os.PathLike, name: str, *, ours: Callable[[Path], bool], what: str, overwrite: bool
) -> Path:
    """`writable_file`, and if the file exists it must be one of ours (`ours(path)`: e.g. an export with its seal)
    unless `overwrite`: a typo in an output path must not silently replace someone's file."""
    target = writable_file(path, name)
    if target.is_file() and not overwrite and not ours(target):
        raise InputError(name, path, f"exists and is not {what}: choose another path, or --overwrite to replace it")
    return target


def writable_folder(path: str | os.PathLike, name: str) -> Path:
    """A folder that exists and takes new files, or can be created where it is named."""
    folder = Path(path)
    _fits_filesystem(folder, name)
    if folder.exists() and not folder.is_dir():
        raise InputError(name, path, "is a file; give a folder")
    _can_create_in(folder, name, path)
    return folder


def _can_create_in(folder: Path, name: str, given: Any) -> None:
    """Create (and remove) a file in `folder`, or in its nearest existing ancestor if it does not exist yet."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(name, given, f"{existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".entropilot-probe-"):
            pass
    except OSError as err:
        where = "" if existing == folder.absolute() else f" (the nearest existing folder of {folder})"
        raise InputError(name, given, f"cannot write in {existing}{where}: {err.strerror}") from None


def _fits_filesystem(path: Path, name: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise InputError(name, path, f"a path component is {len(os.fsencode(part))} bytes; at most 255")


# ------------------------------------------------------------------------------------------ addresses


def host_port(text: str, name: str, *, form: str = "HOST:PORT") -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) with a port in 1..65535."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InputError(name, text, f"write {form} with a port from 1 to 65535")
    return host, int(port_text)


def http_url(text: str, name: str, *, example: str) -> str:
    """An http(s) URL with a host and, if given, a valid port."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError as err:
        raise InputError(name, text, f"not a valid URL ({err}); e.g. {example}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(name, text, f"give an http:// or https:// URL, e.g. {example}")
    if not parts.hostname:
        raise InputError(name, text, f"no host in it, e.g. {example}")
    return text


def resolvable_host(host: str, name: str) -> str:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(name, host, f"cannot resolve that host ({getattr(err, 'strerror', None) or err})") from None
    return host


def free_udp_port(host: str, port: int, name: str) -> None:
    """Refuse a UDP port something on this machine has bound already (two vehicles on one port would answer one
    ground station)."""
    resolvable_host(host, name)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))  # no SO_REUSEADDR: fails if any socket holds the port
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(name, port, f"UDP port {port} on {host} is already in use: choose another") from None
            raise InputError(name, f"{host}:{port}", f"cannot listen there ({err.strerror})") from None


# ------------------------------------------------------------------------------------------- others


def sha256_digest(text: str, name: str) -> str:
    if not SHA256.fullmatch(text):
        raise InputError(name, text, "a SHA-256 is 64 hex digits")
    return text.lower()


def tracking_uri_problem(uri: str) -> str | None:
    """Why `uri` is not an MLflow tracking URI entropilot can use, or None (MLflow 3 refuses plain-folder stores)."""
    if uri.startswith("file:") or "://" not in uri:
        return "file stores are refused by MLflow 3; use e.g. sqlite:///mlflow.db or http://host:port"
    return None


def usable_store(tracking_uri: str, name: str) -> None:
    """An MLflow store a new run can be written to: a local sqlite file that can be written (or created), or a
    server that answers. Other schemes (databricks, a database URL) are left to MLflow."""
    if tracking_uri.startswith("sqlite:///"):
        try:
            writable_file(tracking_uri.removeprefix("sqlite:///"), name)
        except InputError as err:
            raise InputError(name, tracking_uri, err.allowed) from None
    elif tracking_uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        http_url(tracking_uri, name, example="http://mlflow-host:5000")
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5):
                pass
        except urllib.error.HTTPError:
            pass  # it answered: a server is there (a proxy in front may not know /health)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise InputError(name, tracking_uri, f"no MLflow server answers there ({reason})") from None


def missing_store(tracking_uri: str) -> str | None:
    """Why a run or model cannot be looked up at `tracking_uri` without creating a store: a local sqlite file that
    does not exist (MLflow would create it empty); None where there is a store to ask."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            return (
                f"no MLflow store at {tracking_uri} ({path.resolve()} does not exist): point MLFLOW_TRACKING_URI "
                "(or --tracking-uri) at the store that holds it"
            )
    return None
