"""ONNX export and the flight runtime, end to end on a real (tiny) checkpoint: real Ray training, a real MLflow
server, real onnxruntime and PyBullet."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import EXPORT_PARITY_BATCH as PARITY_BATCH

from entropilot.cli import main as cli
from entropilot.deploy.contract import PREFIX, SCHEMA_VERSION, SEAL_KEY, SEAL_PLACEHOLDER, seal
from entropilot.deploy.export import PARITY_TOLERANCE, ExportError, export_policy, log_to_mlflow
from entropilot.deploy.onnx_policy import NonFiniteError, OnnxPolicy, PolicyContractError, expected_for_env
from entropilot.envs import HOVER_ID, OBSERVATION_NAMES, make_env
from entropilot.envs.evaluate import run_episodes
from entropilot.inputs import InputError
from entropilot.platform.train import STATE_FILE

PROBES = 4  # out-of-range observations export adds to the real ones


def test_export_writes_one_self_contained_file_with_its_contract(exported, checkpoint):
    path = exported.path
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.onnx"]  # no policy.onnx.data, no temp file
    data = path.read_bytes()
    assert exported.sha256 == hashlib.sha256(data).hexdigest() and exported.size_bytes == len(data)

    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.external_data or t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    }
    assert shapes == {"observation": ["batch", 22], "action": ["batch", 4]}

    meta = {
        p.key.removeprefix(PREFIX): p.value
        for p in model.metadata_props
        if p.key.startswith(PREFIX) and p.key != SEAL_KEY
    }
    meta = {k: json.loads(v) for k, v in meta.items()}
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["observation_names"] == list(OBSERVATION_NAMES)
    assert (
        meta["action_mode"] == "ctbr"
        and len(meta["action_meaning"]) == 4
        and "collective thrust" in meta["action_meaning"][0]
    )
    assert meta["action_low"] == [-1.0] * 4 and meta["action_high"] == [1.0] * 4
    assert meta["control_hz"] == 48 and meta["physics_hz"] == 240
    assert meta["target"] == [0.0, 0.0, 1.0] and meta["episode_seconds"] == 2.0  # the fixture's short hover
    assert meta["env_id"] == HOVER_ID and meta["env_kwargs"] == {"episode_seconds": 2.0, "success_seconds": 1.0}
    assert meta["training_run_id"] == state["run_id"] == exported.training_run_id and meta["training_iteration"] == 1
    assert (
        set(meta["frame_convention"]) == {"world", "body", "rotation"}
        and "row-major" in meta["frame_convention"]["rotation"]
    )
    assert meta["deterministic_action"].startswith("Gaussian mean, clipped")
    assert meta["entropilot_version"] and "dynamo=True" in meta["exporter"]
    assert meta["normalization"]["clip"] == 10.0 and len(meta["normalization"]["mean"]) == 22

    assert exported.parity_samples == PARITY_BATCH + PROBES
    assert 0.0 <= exported.parity_error <= PARITY_TOLERANCE


def test_onnx_policy_matches_the_torch_export_module_at_any_batch_size(exported, checkpoint):
    import torch

    from entropilot.deploy.export import PolicyGraph, load_rl_module
    from entropilot.platform.algorithm import observation_filter_stats

    graph = PolicyGraph(load_rl_module(checkpoint, "default_policy"), observation_filter_stats(checkpoint)).eval()
    policy = OnnxPolicy(exported.path, expected={"sha256": exported.sha256})
    rng = np.random.default_rng(0)
    for n in (1, 7, 300):
        obs = rng.normal(scale=2.0, size=(n, 22)).astype(np.float32)
        with torch.no_grad():
            want = graph(torch.as_tensor(obs)).numpy()
        assert np.abs(policy.batch(obs) - want).max() <= PARITY_TOLERANCE
    assert np.abs(policy(obs[0]) - want[0]).max() <= PARITY_TOLERANCE


def test_onnx_policy_flies_the_sim_env(exported):
    policy = OnnxPolicy(exported.path)
    m = policy.metadata
    env = make_env(m["env_id"], **m["env_kwargs"])
    try:
        policy.check(expected_for_env(env))
        actions = []

        def fly(obs):
            action = policy(obs)
            actions.append(action)
            return action

        (result,) = run_episodes(env, fly, episodes=1, seed=3)
    finally:
        env.close()
    assert result.length == len(actions) > 0 and np.isfinite(result.episode_return)
    actions = np.array(actions)
    assert actions.dtype == np.float32 and actions.shape[1] == 4 and np.all(np.abs(actions) <= 1.0)


def _tampered(path: Path, tmp_path: Path, change) -> Path:
    out = tmp_path / "tampered.onnx"
    out.write_bytes(change(bytearray(path.read_bytes())))
    return out


def _flip(offset_fraction: float):
    def change(data: bytearray) -> bytes:
        data[int(len(data) * offset_fraction)] ^= 0x01
        return bytes(data)

    return change


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_flip(0.3), id="flip-a-weight-bit"),
        pytest.param(_flip(0.95), id="flip-a-metadata-bit"),
        pytest.param(lambda d: bytes(d[: len(d) // 2]), id="truncate-half"),
        pytest.param(lambda d: bytes(d[:-1]), id="truncate-last-byte"),
        pytest.param(lambda d: bytes(d) + b"\x00", id="append-a-byte"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_altered_or_truncated_files_are_refused(exported, tmp_path, change):
    with pytest.raises(PolicyContractError, match="altered|truncated|seal"):
        OnnxPolicy(_tampered(exported.path, tmp_path, change))


def test_the_expected_sha256_is_enforced(exported):
    OnnxPolicy(exported.path, expected={"sha256": exported.sha256.upper()})
    with pytest.raises(PolicyContractError, match="SHA-256"):
        OnnxPolicy(exported.path, expected={"sha256": "0" * 64})


@pytest.mark.parametrize(
    "expected, message",
    [
        ({"observation_names": list(reversed(OBSERVATION_NAMES))}, "observation layout differs"),
        ({"observation_names": list(OBSERVATION_NAMES[:-1])}, "takes 22 observations, the vehicle gives 21"),
        ({"action_mode": "motors"}, "action_mode is 'ctbr' in the policy, but 'motors'"),
        ({"control_hz": 100}, "control_hz is 48"),
        ({"physics_hz": 500}, "physics_hz is 240"),
    ],
)
def test_a_policy_made_for_another_setup_is_refused(exported, expected, message):
    with pytest.raises(PolicyContractError, match=message):
        OnnxPolicy(exported.path, expected=expected)


def test_unknown_expectations_are_a_programming_error(exported):
    with pytest.raises(ValueError, match="unknown key"):
        OnnxPolicy(exported.path, expected={"control_rate": 48})


def _resealed(exported, tmp_path, edit) -> Path:
    """The exported model changed by ``edit(model)`` and sealed again: a well-formed file with another contract."""
    model = onnx.load(str(exported.path))
    edit(model)
    for prop in model.metadata_props:
        if prop.key == SEAL_KEY:
            prop.value = SEAL_PLACEHOLDER
    out = tmp_path / "resealed.onnx"
    out.write_bytes(seal(model.SerializeToString()))
    return out


def _set_meta(key, value):
    def edit(model):
        (prop,) = [p for p in model.metadata_props if p.key == PREFIX + key]
        prop.value = json.dumps(value)

    return edit


def _rename_input(model):
    old = model.graph.input[0].name
    model.graph.input[0].name = "obs"
    for node in model.graph.node:
        node.input[:] = ["obs" if name == old else name for name in node.input]


def _drop_metadata(model):
    keep = [p for p in model.metadata_props if p.key in (SEAL_KEY, PREFIX + "schema_version")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_meta("schema_version", SCHEMA_VERSION + 1), "schema version"),
        (_set_meta("observation_names", ["x"] * 22), "observation layout differs"),
        (_set_meta("deterministic_action", "tanh(mean)"), "action convention"),
        (_rename_input, r"graph inputs are \[\('obs'"),
        (_drop_metadata, "not an entropilot policy export"),
    ],
)
def test_well_formed_files_with_a_wrong_contract_are_refused(exported, tmp_path, edit, message):
    with pytest.raises(PolicyContractError, match=message):
        OnnxPolicy(_resealed(exported, tmp_path, edit))


def test_non_finite_numbers_never_pass(exported, tmp_path):
    policy = OnnxPolicy(exported.path)
    for bad in (np.nan, np.inf, -np.inf):
        obs = np.zeros(22, dtype=np.float32)
        obs[14] = bad
        with pytest.raises(NonFiniteError, match="vel_z"):
            policy(obs)
        with pytest.raises(NonFiniteError):
            policy.batch(np.stack([np.zeros(22, np.float32), obs]))
    mixed = np.zeros(22, dtype=np.float32)
    mixed[[0, 21]] = np.inf, -np.inf
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError, match=r"pos_err_x=inf', 'prev_action_3=-inf"):
        policy(mixed)  # inf - inf inside the check: numpy would warn
    with pytest.raises(ValueError, match="shape"):
        policy(np.zeros(21, dtype=np.float32))
    for huge in (3.4e38, -3.4e38):  # huge but finite is flown (the normalization clips it)
        assert np.isfinite(policy(np.full(22, huge, dtype=np.float32))).all()

    def nan_bias(model):  # a graph that returns NaN: the last layer's bias
        last_gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
        (bias,) = [t for t in model.graph.initializer if t.name == last_gemm.input[2]]
        values = onnx.numpy_helper.to_array(bias).copy()
        values[1] = np.nan
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))

    broken = OnnxPolicy(_resealed(exported, tmp_path, nan_bias))
    with pytest.raises(NonFiniteError, match="non-finite action"):
        broken(np.zeros(22, dtype=np.float32))


def test_the_flight_runtime_and_fly_command_import_neither_torch_nor_ray(exported):
    code = (
        "import sys, numpy as np\n"
        "import entropilot.deploy, entropilot.deploy.contract\n"
        "from entropilot.deploy.onnx_policy import OnnxPolicy\n"
        f"policy = OnnxPolicy({str(exported.path)!r})\n"
        "assert policy(np.zeros(22, np.float32)).shape == (4,)\n"
        "from entropilot.cli import main\n"
        "try:\n"
        f"    main(['fly', {str(exported.path)!r}, '--episodes', '1'])\n"
        "except SystemExit as end:\n"
        "    assert end.code in (0, 1), end.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'onnx'))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_export_refuses_what_is_not_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="holds no checkpoint"):
        export_policy(tmp_path, tmp_path / "p.onnx")
    for missing in (tmp_path / "missing" / "iter_000001", "runs-typo"):
        with pytest.raises(InputError, match="no such folder, and not an MLflow run id"):
            export_policy(missing, tmp_path / "p.onnx")
    assert list(tmp_path.iterdir()) == []  # a typo did not create an MLflow store (./mlflow.db) or a file


def test_a_checkpoint_whose_config_schema_moved_on_still_exports(checkpoint, exported, tmp_path, caplog):
    import shutil

    import yaml

    old = tmp_path / "iter_000001"
    shutil.copytree(checkpoint, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["entropy"]["a_renamed_option"] = 1.0  # what a newer schema without that option reads
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level("WARNING", logger="entropilot.deploy.export"):
        result = export_policy(old, tmp_path / "p.onnx", parity_batch=16)
    assert "exporting with its env section" in caplog.text
    assert result.sha256 == exported.sha256  # the same env, the same policy: the same file


def test_a_failed_parity_check_leaves_no_file(checkpoint, tmp_path):
    # onnxruntime's tanh is not bit-identical to torch's: no export meets a 1e-12 tolerance.
    with pytest.raises(ExportError, match="parity check failed"):
        export_policy(checkpoint, tmp_path / "p.onnx", parity_batch=64, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_then_fly(checkpoint, tmp_path):
    runner = CliRunner()
    onnx_path = tmp_path / "cli.onnx"
    result = runner.invoke(cli, ["export", str(checkpoint.parent), "-o", str(onnx_path), "--parity-batch", "32"])
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert f"sha256 {sha}" in result.output and "parity: max |onnxruntime - torch|" in result.output

    plot, video = tmp_path / "fly.png", tmp_path / "fly.gif"
    result = runner.invoke(
        cli,
        [
            "fly",
            str(onnx_path),
            "--link",
            "sim",
            "--episodes",
            "2",
            "--seed",
            "5",
            "--sha256",
            sha,
            "--plot",
            str(plot),
            "--video",
            str(video),
        ],
    )
    assert result.exit_code in (0, 1), (
        result.output
    )  # 1: no episode succeeded (a 1-iteration policy), as `demo` reports it
    assert isinstance(result.exception, (SystemExit, type(None)))
    assert "Flying 2 episode(s) of entropilot/Hover-v0 (ctbr, 48 Hz, link sim)" in result.output
    assert "seed 5:" in result.output and "seed 6:" in result.output and "success rate" in result.output
    assert plot.stat().st_size > 0 and video.stat().st_size > 0

    result = runner.invoke(cli, ["fly", str(onnx_path), "--sha256", "f" * 64])
    assert result.exit_code == 1 and "not the approved file" in result.output


def test_export_from_an_mlflow_run_and_register_it(checkpoint, exported, tmp_path, mlflow_server, isolated_mlflow_env):
    mlflow.set_tracking_uri(mlflow_server)
    run_id = exported.training_run_id
    result = export_policy(run_id, tmp_path / "from_run.onnx", parity_batch=32)
    assert result.checkpoint == checkpoint and result.sha256 == exported.sha256  # same policy, byte-identical file

    logged = log_to_mlflow(result, registered_model="test-export-policy", alias="production")
    assert logged["run_id"] == run_id and logged["alias_uri"] == "models:/test-export-policy@production"
    local = Path(
        mlflow.artifacts.download_artifacts("models:/test-export-policy@production", dst_path=str(tmp_path / "dl"))
    )
    assert sorted(p.name for p in local.iterdir() if p.suffix in (".onnx", ".data")) == ["model.onnx"]
    OnnxPolicy(local / "model.onnx", expected={"sha256": result.sha256})  # the registry serves the very file

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("test-export-policy", "production")
    assert version.tags["entropilot.onnx_sha256"] == result.sha256 and version.run_id == run_id
    assert client.get_run(run_id).data.tags["entropilot.onnx_sha256"] == result.sha256
