"""The C export: C generated from the ONNX graph, compiled with the host compiler and loaded with ctypes, agrees with
onnxruntime; unknown ops and categorical outputs are refused; `fly --runtime c` flies as the ONNX file does; the
Cortex-M4F footprint when the cross compiler is installed."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_cc, sealed_policy_file, write_linear_policy
from onnx import TensorProto, helper

from entropilot.cli import main
from entropilot.deploy.c_export import CExportError, build_c_policy, export_c, generate_c
from entropilot.deploy.c_policy import CPolicy
from entropilot.deploy.c_toolchain import (
    CORTEX_M4F_FLAGS,
    HOST_FLAGS,
    ToolchainError,
    build_shared_library,
    cortex_m4f_footprint,
    find_host_compiler,
)
from entropilot.deploy.contract import INPUT_NAME, OUTPUT_NAME, PolicyContractError
from entropilot.deploy.onnx_policy import NonFiniteError, OnnxPolicy
from entropilot.envs import OBSERVATION_NAMES

N = len(OBSERVATION_NAMES)


def _every_op_file(path) -> None:
    """A policy-shaped graph through every op the generator knows, in the forms our exports and their variants take:
    normalization with the constant first, MatMul + Add, Gemm both ways, each activation, a Sqrt, runtime + runtime
    (one feature times many, too), a Split into uneven parts, a Slice of one, a Concat, Identity, a Constant node and
    a one-sided Clip."""
    rng = np.random.default_rng(3)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    i64 = np.int64
    nodes = [
        helper.make_node("Sub", ["mean", INPUT_NAME], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "lo5", ""], ["clipped"]),
        helper.make_node("MatMul", ["clipped", "W1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["g2"]),
        helper.make_node("Elu", ["g2"], ["h2"], alpha=0.7),
        helper.make_node("Gemm", ["h2", "W3t", "b3"], ["g3"], transB=1),
        helper.make_node("LeakyRelu", ["g3"], ["l3"], alpha=0.1),
        helper.make_node("Sigmoid", ["l3"], ["s3"]),
        helper.make_node("Sqrt", ["s3"], ["q3"]),
        helper.make_node("Mul", ["two", "q3"], ["m3"]),
        helper.make_node("Slice", ["m3", "zero", "one", "axes"], ["first"]),
        helper.make_node("Mul", ["first", "m3"], ["m3b"]),
        helper.make_node("Add", ["m3b", "h2"], ["r3"]),
        helper.make_node("Split", ["r3", "sizes"], ["part0", "part1"], axis=1),
        helper.make_node("Slice", ["part1", "starts", "ends", "axes"], ["sliced"]),
        helper.make_node("Concat", ["part0", "sliced"], ["joined"], axis=-1),
        helper.make_node("Identity", ["joined"], ["same"]),
        helper.make_node("Gemm", ["same", "W4t"], ["g4"], transB=1),
        helper.make_node("Tanh", ["g4"], ["t4"]),
        helper.make_node("Constant", [], ["gain"], value=helper.make_tensor("gain", TensorProto.FLOAT, [], [0.9])),
        helper.make_node("Mul", ["t4", "gain"], ["m4"]),
        helper.make_node("Clip", ["m4", "lo1", "hi1"], [OUTPUT_NAME]),
    ]
    constants = {
        "mean": w(N),
        "scale": (np.abs(w(1, N)) + 0.5).astype(np.float32),
        "lo5": np.float32(-5.0),
        "W1": w(N, 16),
        "b1": w(16),
        "W2": w(16, 12),
        "b2": w(12),
        "W3t": w(12, 12),
        "b3": w(1, 12),
        "two": np.float32(2.0),
        "sizes": np.array([4, 8], dtype=i64),
        "zero": np.array([0], dtype=i64),
        "one": np.array([1], dtype=i64),
        "starts": np.array([2], dtype=i64),
        "ends": np.array([6], dtype=i64),
        "axes": np.array([1], dtype=i64),
        "W4t": w(4, 8),
        "lo1": np.float32(-1.0),
        "hi1": np.float32(1.0),
    }
    sealed_policy_file(path, nodes, constants)


def _observations(count: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, N)) * 2.0).astype(np.float32)


# ---- graphs made here ---------------------------------------------------------------------
@needs_cc
def test_generated_c_matches_onnxruntime_through_every_supported_op(tmp_path):
    _every_op_file(tmp_path / "ops.onnx")
    policy = build_c_policy(tmp_path / "ops.onnx", tmp_path / "build")
    onnx_policy = OnnxPolicy(tmp_path / "ops.onnx")
    observations = _observations(500)
    reference = onnx_policy.batch(observations)
    assert np.abs(reference).max() > 0.1 and len(np.unique(reference[:, 0])) > 100  # the graph is not degenerate
    assert np.abs(policy.batch(observations) - reference).max() <= 1e-5
    assert np.abs(np.stack([policy(o) for o in observations[:20]]) - reference[:20]).max() <= 1e-5
    assert (policy.sha256, policy.metadata) == (onnx_policy.sha256, onnx_policy.metadata)


@needs_cc
def test_the_c_policy_refuses_non_finite_numbers_and_a_library_made_from_another_file(tmp_path):

    _every_op_file(tmp_path / "ops.onnx")
    write_linear_policy(tmp_path / "linear.onnx")
    policy = build_c_policy(tmp_path / "ops.onnx", tmp_path / "ops")
    bad = _observations(1)[0]
    bad[OBSERVATION_NAMES.index("vel_z")] = np.nan
    with pytest.raises(NonFiniteError, match="vel_z=nan"):
        policy(bad)
    with pytest.raises(NonFiniteError, match="vel_z=nan"):
        policy.batch(bad[None])
    with pytest.raises(PolicyContractError, match="generated from the ONNX file with SHA-256"):
        CPolicy(policy.library_path, tmp_path / "linear.onnx")
    with pytest.raises(PolicyContractError, match="not the approved file"):
        build_c_policy(tmp_path / "ops.onnx", tmp_path / "again", expected={"sha256": "0" * 64})


@needs_cc
@pytest.mark.integration  # three builds: about a second and a half
def test_the_same_bits_at_every_optimization_level(tmp_path):
    _every_op_file(tmp_path / "ops.onnx")
    sources = generate_c(tmp_path / "ops.onnx")
    observations = _observations(300, seed=1)
    outputs = []
    for level in ("-O0", "-O2", "-O3"):
        flags = tuple(level if f == "-O2" else f for f in HOST_FLAGS)
        outputs.append(build_c_policy(tmp_path / "ops.onnx", tmp_path / level, sources=sources, flags=flags))
    actions = [p.batch(observations) for p in outputs]
    assert all(np.array_equal(a.view(np.uint32), actions[0].view(np.uint32)) for a in actions[1:])


def test_an_unknown_op_is_refused_naming_it(tmp_path):
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "W"], ["wx"]),
        helper.make_node("Cos", ["wx"], ["c"]),
        helper.make_node("Softsign", ["c"], [OUTPUT_NAME]),
    ]
    sealed_policy_file(tmp_path / "cos.onnx", nodes, {"W": np.ones((N, 4), np.float32)})
    with pytest.raises(CExportError, match=r"op\(s\) \['Cos', 'Softsign'\].*supported: \['Gemm'"):
        export_c(tmp_path / "cos.onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_categorical_policy_is_refused(tmp_path):
    # int64 command indices (a discrete-action export): the C export flies only the vehicle's float action. Which
    # check says so depends on the runtime's contract: ours, or OnnxPolicy's signature check before it.
    nodes = [
        helper.make_node("MatMul", [INPUT_NAME, "W"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], [OUTPUT_NAME], axis=1, keepdims=1),
    ]
    path = tmp_path / "categorical.onnx"
    sealed_policy_file(path, nodes, {"W": np.ones((N, 5), np.float32)}, output_type=TensorProto.INT64, output_size=1)
    with pytest.raises((CExportError, PolicyContractError), match="categorical|tensor\\(int64\\)"):
        export_c(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="no C compiler found"):
        build_shared_library([tmp_path / "policy.c"], tmp_path / "lib.so")
    with pytest.raises(ToolchainError, match="apt-get install gcc-arm-none-eabi"):
        cortex_m4f_footprint(tmp_path / "policy.c", tmp_path)


# ---- a trained, exported policy ---------------------------------------------------------------
@needs_cc
def test_the_exported_policy_in_c_matches_onnxruntime_on_flight_observations(exported, tmp_path):
    result = export_c(exported.path, tmp_path / "c", parity_batch=256)
    assert result.parity_error is not None and result.parity_error <= 1e-5
    assert result.parity_samples >= 256
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == ["policy.c", "policy.h", "policy.onnx"]
    assert (tmp_path / "c" / "policy.onnx").read_bytes() == exported.path.read_bytes()
    header = (tmp_path / "c" / "policy.h").read_text()
    source = (tmp_path / "c" / "policy.c").read_text()
    assert f'#define ENTROPILOT_ONNX_SHA256 "{exported.sha256}"' in header
    assert "#define ENTROPILOT_OBSERVATION_SIZE 22" in header and "#define ENTROPILOT_CONTROL_HZ 48" in header
    assert re.findall(r"#include [<\"](.+)[>\"]", source) == ["policy.h"]  # tanh needs no libm
    assert result.sources.ops[:3] == ("Sub", "Div", "Clip") and "Tanh" in result.sources.ops

    # The same bits from the generated C at -O0 and -O3 -march=native (vector units), on flight observations.
    from entropilot.deploy.c_export import c_parity

    flags = [tuple(level if f == "-O2" else f for f in HOST_FLAGS) for level in ("-O0", "-O3")]
    flags[1] += ("-march=native",)
    policies = [
        build_c_policy(exported.path, tmp_path / str(i), sources=result.sources, flags=f) for i, f in enumerate(flags)
    ]
    error, count = c_parity(policies[0], 64)
    assert error <= 1e-5 and count > 64
    observations = np.random.default_rng(0).standard_normal((200, N)).astype(np.float32)
    a, b = (p.batch(observations) for p in policies)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


@needs_cc
def test_fly_runtime_c_flies_the_same_episodes_as_the_onnx_file(exported):
    def flights(*extra):
        out = CliRunner().invoke(main, ["fly", str(exported.path), "--episodes", "2", *extra])
        lines = [
            re.sub(r"max inference [\d.]+ ms|[\d.]+ steps/s", "", line)
            for line in out.output.splitlines()
            if not line.startswith(("Flying ", str(exported.path)))  # the label, where the C was compiled
        ]
        return out.exit_code, lines

    onnx_code, onnx_lines = flights()
    c_code, c_lines = flights("--runtime", "c")
    assert any(line.startswith("success rate") for line in onnx_lines)
    assert sum("seed" in line for line in onnx_lines) >= 4  # each flight's autopilot and episode lines
    assert (c_code, c_lines) == (onnx_code, onnx_lines)


def test_the_cortex_m4f_footprint(exported, tmp_path):
    from shutil import which

    if which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed (Debian: apt-get install gcc-arm-none-eabi)")
    sources = generate_c(exported.path)
    _, source = sources.write(tmp_path)
    footprint = cortex_m4f_footprint(source, tmp_path / "m4")
    assert footprint.flags == CORTEX_M4F_FLAGS
    assert 4 * sources.parameters <= footprint.text <= 4 * sources.parameters + 4096  # the weights, a little code
    assert footprint.data == 0 and footprint.bss == sources.scratch_bytes == 4 * 2 * 64  # two 64-float rows
    assert footprint.stack <= 64  # the scratch is static: a control task's small stack is spared


def test_export_format_c_from_a_checkpoint(checkpoint, tmp_path):
    out = CliRunner().invoke(main, ["export", str(checkpoint), "--format", "c", "-o", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    assert "max |onnxruntime - torch|" in out.output
    if find_host_compiler() is not None:
        assert re.search(r"max \|C - onnxruntime\| = \S+ over \d+ observations", out.output)
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == ["policy.c", "policy.h", "policy.onnx"]
    again = CliRunner().invoke(main, ["export", str(tmp_path / "c" / "policy.onnx"), "-o", str(tmp_path / "x.onnx")])
    assert again.exit_code != 0 and "--format c generates C from it" in again.output
