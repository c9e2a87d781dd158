"""A registered policy as a source (``models:/name@alias``, ``models:/name/version``): pulled from a real MLflow server,
checked against the SHA-256 recorded at registration and the file's seal, cached, flown in the simulator through the
CLI; tampered artifacts and unknown names refused with a clear error."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import restored_mlflow_env

from entropilot.cli import main as cli
from entropilot.deploy.contract import SHA256_TAG, PolicyContractError
from entropilot.deploy.export import log_to_mlflow
from entropilot.deploy.registry import RegistryError, parse_model_uri, pull_policy

MODEL = "test-registry-hover"


def _register(exported, tracking_uri: str, name: str, alias: str = "champion") -> dict:
    with restored_mlflow_env():
        mlflow.set_tracking_uri(tracking_uri)
        return log_to_mlflow(exported, registered_model=name, alias=alias)


@pytest.fixture(scope="module")
def registered(exported, mlflow_server) -> dict:
    return _register(exported, mlflow_server, MODEL)


def _stored_model_file(server, model_uri: str) -> Path:
    """Where the server keeps the logged model's model.onnx (``models:/m-<id>``) in its artifact store."""
    model_id = model_uri.removeprefix("models:/")
    (path,) = [p for p in (server.root / "artifacts").rglob("model.onnx") if model_id in p.parts]
    return path


def test_model_uris_parse():
    assert parse_model_uri("models:/hover@champion") == ("hover", "champion", None)
    assert parse_model_uri("models:/hover/3") == ("hover", None, 3)
    for bad in ("models:/hover", "models:/hover@", "models:/hover/v3", "models:/a/b/1", "hover@champion"):
        with pytest.raises(RegistryError, match="models:/NAME@ALIAS or models:/NAME/VERSION"):
            parse_model_uri(bad)


def test_fly_a_registered_alias_in_sim_through_the_cli(registered, exported, mlflow_server, tmp_path):
    cache = tmp_path / "cache"
    runner = CliRunner()
    args = [
        "fly",
        f"models:/{MODEL}@champion",
        "--link",
        "sim",
        "--episodes",
        "1",
        "--seed",
        "3",
        "--tracking-uri",
        mlflow_server,
        "--cache-dir",
        str(cache),
    ]
    result = runner.invoke(cli, args)
    assert isinstance(result.exception, (SystemExit, type(None))), result.output
    assert result.exit_code in (0, 1), result.output  # 1: the 1-iteration policy did not succeed, as `demo` reports it
    assert (
        f"models:/{MODEL}@champion: {MODEL} version {registered['version']} "
        f"(run {exported.training_run_id}), downloaded" in result.output
    )
    assert "Flying 1 episode(s) of entropilot/Hover-v0 (ctbr, 48 Hz, link sim)" in result.output
    assert f"sha256 {exported.sha256[:12]}" in result.output and "success rate" in result.output
    assert sorted(p.name for p in cache.iterdir()) == [f"{exported.sha256}.onnx"]
    assert (cache / f"{exported.sha256}.onnx").read_bytes() == exported.path.read_bytes()

    # Again, by version number: the registry is asked, the verified copy is served from the cache.
    again = runner.invoke(cli, ["fly", f"models:/{MODEL}/{registered['version']}", *args[2:]])
    assert "cached copy" in again.output and "Flying 1 episode(s)" in again.output, again.output

    # --sha256 still pins the file: a registered file that is not the approved one is refused.
    pinned = runner.invoke(cli, [*args, "--sha256", "0" * 64])
    assert pinned.exit_code == 1 and "not the approved file" in pinned.output


def test_fly_from_the_registry_imports_neither_torch_nor_ray(registered, mlflow_server, tmp_path):
    code = (
        "import sys\n"
        "from entropilot.cli import main\n"
        "try:\n"
        f"    main(['fly', 'models:/{MODEL}@champion', '--episodes', '1', '--duration', '0.5',\n"
        f"          '--tracking-uri', {mlflow_server!r}, '--cache-dir', {str(tmp_path)!r}])\n"
        "except SystemExit as end:\n"
        "    assert end.code in (0, 1), end.code\n"
        "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'onnx'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "downloaded" in out.stdout


def test_export_of_a_registered_model_writes_the_registered_file(registered, exported, mlflow_server, tmp_path):
    output = tmp_path / "sub" / "policy.onnx"
    result = CliRunner().invoke(
        cli, ["export", f"models:/{MODEL}@champion", "-o", str(output), "--tracking-uri", mlflow_server]
    )
    assert result.exit_code == 0, result.output
    assert output.read_bytes() == exported.path.read_bytes()
    assert f"sha256 {exported.sha256}" in result.output
    refused = CliRunner().invoke(cli, ["export", f"models:/{MODEL}@champion", "-o", str(output), "--register", "x"])
    assert refused.exit_code == 2 and "registered already" in refused.output

    # --format c: the C generated from that same verified file, which is kept beside it.
    folder = tmp_path / "c"
    arguments = ["export", f"models:/{MODEL}@champion", "--format", "c", "-o", str(folder)]
    result = CliRunner().invoke(cli, [*arguments, "--tracking-uri", mlflow_server])
    assert result.exit_code == 0, result.output
    assert (folder / "policy.onnx").read_bytes() == exported.path.read_bytes()
    assert f'#define ENTROPILOT_ONNX_SHA256 "{exported.sha256}"' in (folder / "policy.h").read_text()


def test_a_tampered_registry_artifact_is_refused(exported, mlflow_server, mlflow_server_process, tmp_path):
    name = "test-registry-tampered"
    logged = _register(exported, mlflow_server, name)
    stored = _stored_model_file(mlflow_server_process, logged["model_uri"])
    data = bytearray(stored.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit of one weight
    stored.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    args = ["fly", f"models:/{name}@champion", "--tracking-uri", mlflow_server, "--cache-dir", str(cache)]

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (
        f"the stored file's SHA-256 is {hashlib.sha256(data).hexdigest()}, but {exported.sha256} was recorded"
        in result.output
        and "refusing it" in result.output
    )
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing cached, nothing flown
    assert "Flying" not in result.output

    # Someone also rewrote the recorded SHA-256 to match: the file's own seal still refuses it.
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    client.set_model_version_tag(name, str(logged["version"]), SHA256_TAG, hashlib.sha256(data).hexdigest())
    with pytest.raises(PolicyContractError, match="does not match its seal"):
        pull_policy(f"models:/{name}@champion", tracking_uri=mlflow_server, cache_dir=cache)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "does not match its seal" in result.output and "Flying" not in result.output


def test_a_corrupted_cache_copy_is_downloaded_again(registered, exported, mlflow_server, tmp_path):
    uri = f"models:/{MODEL}@champion"
    first = pull_policy(uri, tracking_uri=mlflow_server, cache_dir=tmp_path)
    assert first.downloaded and first.sha256 == exported.sha256
    assert not pull_policy(uri, tracking_uri=mlflow_server, cache_dir=tmp_path).downloaded
    first.path.write_bytes(first.path.read_bytes()[:-1])
    again = pull_policy(uri, tracking_uri=mlflow_server, cache_dir=tmp_path)
    assert again.downloaded and again.path.read_bytes() == exported.path.read_bytes()


@pytest.mark.parametrize(
    "uri, message",
    [
        (f"models:/{MODEL}@nope", f"registered model '{MODEL}' has no alias 'nope'"),
        (f"models:/{MODEL}/99", f"registered model '{MODEL}' has no version 99"),
        ("models:/no-such-model@champion", "no registered model named 'no-such-model'"),
        ("models:/hover", "models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_unknown_models_and_aliases_give_a_clear_error(registered, mlflow_server, tmp_path, uri, message):
    for command in (["fly", uri], ["export", uri, "-o", str(tmp_path / "p.onnx")]):
        result = CliRunner().invoke(cli, [*command, "--tracking-uri", mlflow_server])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    if "nope" in uri:
        assert f"champion -> v{registered['version']}" in result.output  # says which aliases there are
    assert not (tmp_path / "p.onnx").exists()


def test_a_missing_local_store_is_named_not_created(tmp_path):
    store = tmp_path / "mlflow.db"
    result = CliRunner().invoke(cli, ["fly", f"models:/{MODEL}@champion", "--tracking-uri", f"sqlite:///{store}"])
    assert result.exit_code == 1 and "no MLflow store at sqlite:///" in result.output
    assert not store.exists()


def test_a_registry_that_does_not_answer_is_a_clear_error():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(cli, ["fly", f"models:/{MODEL}@champion", "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1 and f"cannot ask the registry at http://127.0.0.1:{port}" in result.output
