"""The readiness gate on registration, with a real MLflow server and a trained (one-iteration, so failing) policy: a
policy that fails the gate is not registered; --force registers it and says so in the tags; the registered file
carries its report, and a vehicle flight of it is refused; `evaluate` on a run folder and on a registered model."""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner

from entropilot.cli import main as cli
from entropilot.deploy.contract import READINESS_KEY, SHA256_TAG, sha256_hex
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.deploy.registry import pull_policy

TINY = """
episodes: 4
seed: 3000000
base: {randomization: null, start_tilt_deg: 5.0}
conditions:
  nominal: {}
  heavy: {true_airframe: {mass: 1.2}}
gate: {condition: nominal, max_crashes: 0, min_success_lower_bound: 0.5}
"""


@pytest.fixture
def matrices(tmp_path):
    strict, lenient = tmp_path / "strict.yaml", tmp_path / "lenient.yaml"
    strict.write_text(TINY)
    lenient.write_text(
        TINY.replace("max_crashes: 0, min_success_lower_bound: 0.5", "max_crashes: 99, min_success_lower_bound: 0.0")
    )
    return strict, lenient


def _export_register(checkpoint, tmp_path, server, name, matrix, *extra):
    output = tmp_path / f"{name}.onnx"
    args = ["export", str(checkpoint), "-o", str(output), "--register", name, "--alias", "champion"]
    args += ["--conditions", str(matrix), "--tracking-uri", server, "--parity-batch", "32", *extra]
    return output, CliRunner().invoke(cli, args)


def test_a_failing_policy_is_not_registered_and_force_registers_it_on_record(
    checkpoint, matrices, tmp_path, mlflow_server, isolated_mlflow_env
):
    strict, _ = matrices
    name = "readiness-refused"
    output, refused = _export_register(checkpoint, tmp_path, mlflow_server, name, strict, "--workers", "2")
    assert refused.exit_code == 1, refused.output
    assert "the readiness gate refuses this policy" in refused.output and "not registered" in refused.output
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.search_model_versions(f"name='{name}'") == []
    report = OnnxPolicy(output).metadata[READINESS_KEY]  # the file keeps its report (FAIL) and a good seal
    assert report["gate"]["passed"] is False and list(report["conditions"]) == ["nominal", "heavy"]
    assert (tmp_path / "readiness" / "readiness.json").is_file()

    output, forced = _export_register(checkpoint, tmp_path, mlflow_server, name, strict, "--force", "--workers", "1")
    assert forced.exit_code == 0, forced.output
    assert "WARNING: register" in forced.output and "going on because of --force" in forced.output
    version = client.get_model_version_by_alias(name, "champion")
    tags = version.tags
    assert tags["entropilot.readiness.verdict"] == "fail"
    assert tags["entropilot.readiness.forced"].startswith("registered with --force: ")
    assert tags[SHA256_TAG] == sha256_hex(output.read_bytes())  # the stamped bytes are the registered ones
    run = client.get_run(version.run_id)
    assert run.data.tags["entropilot.readiness.forced"] == tags["entropilot.readiness.forced"]
    assert "readiness/nominal/policy_success_rate" in run.data.metrics
    artifacts = {f.path for f in client.list_artifacts(version.run_id, "readiness")}
    assert artifacts == {"readiness/readiness.md", "readiness/readiness.json", "readiness/readiness.png"}

    pulled = pull_policy(f"models:/{name}@champion", tracking_uri=mlflow_server, cache_dir=tmp_path / "cache")
    policy = OnnxPolicy(pulled.path)
    assert policy.metadata[READINESS_KEY]["gate"]["passed"] is False
    assert policy.policy_sha256 == policy.metadata[READINESS_KEY]["policy"]["policy_sha256"]

    flight = CliRunner().invoke(
        cli,
        ["fly", f"models:/{name}@champion", "--link", "mavlink", "--connect", "udpout:127.0.0.1:9"]
        + ["--tracking-uri", mlflow_server, "--cache-dir", str(tmp_path / "cache")],
    )
    assert flight.exit_code == 1 and "the readiness gate refuses this policy" in flight.output, flight.output


def test_a_policy_that_clears_the_gate_is_registered_and_evaluate_reports_on_runs_and_versions(
    checkpoint, matrices, tmp_path, mlflow_server, isolated_mlflow_env
):
    _, lenient = matrices
    name = "readiness-passed"
    output, registered = _export_register(checkpoint, tmp_path, mlflow_server, name, lenient, "--workers", "1")
    assert registered.exit_code == 0 and "readiness gate: PASS" in registered.output, registered.output
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    tags = client.get_model_version_by_alias(name, "champion").tags
    assert tags["entropilot.readiness.verdict"] == "pass" and "entropilot.readiness.forced" not in tags
    assert tags["entropilot.readiness.policy_sha256"] == OnnxPolicy(output).policy_sha256

    # a registered model: its version is tagged, its file is not touched
    out = tmp_path / "again"
    args = ["evaluate", f"models:/{name}@champion", "--conditions", str(lenient), "--output-dir", str(out)]
    again = CliRunner().invoke(cli, [*args, "--tracking-uri", mlflow_server, "--workers", "1"])
    assert (
        again.exit_code == 0
        and f"report logged to run {json.loads((out / 'readiness.json').read_text())['policy']['training_run_id']}"
        in again.output
    ), again.output
    assert f"{name} version" in again.output

    # a run folder: exported into the output folder, evaluated, stamped
    out = tmp_path / "from-run"
    from_run = CliRunner().invoke(
        cli,
        ["evaluate", str(checkpoint.parent), "--conditions", str(lenient), "--output-dir", str(out), "--no-mlflow"],
    )
    assert from_run.exit_code == 0, from_run.output
    assert OnnxPolicy(out / "policy.onnx").metadata[READINESS_KEY]["gate"]["passed"] is True
