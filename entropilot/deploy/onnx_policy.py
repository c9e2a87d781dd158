"""The exported policy at flight time: onnxruntime on one thread, the metadata contract checked on load,
finite numbers checked on every call. Imports neither torch nor ray."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from entropilot.deploy.contract import (
    ACTION_SIZE,
    CATEGORICAL_DETERMINISTIC_ACTION,
    COMMAND_KEYS,
    CONTINUOUS_ACTIONS,
    INPUT_NAME,
    OUTPUT_NAME,
    SCHEMA_VERSION,
    PolicyContractError,
    decode_metadata,
    policy_sha256,
    sha256_hex,
    verify_seal,
)
from entropilot.vehicle.layout import OBSERVATION_NAMES

__all__ = ["EXPECTABLE", "NonFiniteError", "OnnxPolicy", "PolicyContractError", "expected_for_env"]

# What a caller may require of the file (OnnxPolicy's ``expected``), beyond the always-checked signature,
# schema version and seal. ``observation_names`` defaults to the envs' layout.
EXPECTABLE = (
    "sha256",
    "observation_names",
    "action_mode",
    "control_hz",
    "physics_hz",
    "env_id",
    "action_low",
    "action_high",
)


class NonFiniteError(ArithmeticError):
    """A NaN or infinity in what the policy was given or what it returned: never send it to the motors."""


class OnnxPolicy:
    """``policy(obs[22]) -> action[4]`` from an ``entropilot export`` file; for a command policy (a categorical one,
    ``command`` not None) ``policy(obs[22]) -> int64 command indices``, one per sub-action, which
    ``deploy.command.CommandPolicy`` (the ``Autopilot`` wraps it so) turns into the vehicle's action.

    On load: the file's bytes are checked against ``expected["sha256"]`` (if given) and against the
    content seal export wrote into it (any changed or missing byte is refused); then the graph's
    signature (``observation`` float32 [batch, n] -> ``action`` float32 [batch, 4], or int64
    [batch, sub-actions] for a command policy), the schema version, the action convention, and the
    observation layout (``expected["observation_names"]``, by default ``entropilot.vehicle.layout.OBSERVATION_NAMES``),
    plus whatever else ``expected`` names (see ``EXPECTABLE``: action mode, control rate, ...). Any mismatch
    raises ``PolicyContractError`` saying what differs. A non-finite observation or action raises
    ``NonFiniteError``.
    """

    def __init__(self, path: str | os.PathLike[str], expected: dict[str, Any] | None = None):
        self.path = Path(path)
        expected = dict(expected or {})
        unknown = sorted(set(expected) - set(EXPECTABLE))
        if unknown:
            raise ValueError(f"expected: unknown key(s) {unknown}; allowed: {list(EXPECTABLE)}")
        where = str(self.path)
        data = self.path.read_bytes()
        self.sha256 = sha256_hex(data)
        if "sha256" in expected and self.sha256 != str(expected["sha256"]).lower():
            raise PolicyContractError(
                f"{where}: SHA-256 is {self.sha256}, expected {expected['sha256']}: not the approved file"
            )
        self.seal = verify_seal(data, where)
        self.policy_sha256 = policy_sha256(data)  # the network without the metadata (a readiness report names it)

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise PolicyContractError(f"{where}: onnxruntime cannot load it ({_first_line(err)})") from None

        self.metadata: dict[str, Any] = decode_metadata(self._session.get_modelmeta().custom_metadata_map, where)
        self._check_own_contract(where)
        self.check(expected)
        self.observation_names: tuple[str, ...] = tuple(self.metadata["observation_names"])
        self.observation_size = len(self.observation_names)
        self.action_mode: str = self.metadata["action_mode"]
        self.control_hz: int = self.metadata["control_hz"]
        # A command policy's output: what its indices mean (contract.COMMAND_KEYS); None for a continuous policy.
        self.command: dict[str, Any] | None = self.metadata.get("command") if self._categorical else None
        output_size, output_type = self._output_signature()
        self._tiny_in = np.full(self.observation_size, 2.0**-100, dtype=np.float32)
        self._tiny_out = None if self._categorical else np.full(output_size, 2.0**-100, dtype=np.float32)
        self._run = self._session.run
        self._outputs = [OUTPUT_NAME]
        # The one-sample path runs on an IOBinding over two preallocated buffers that onnxruntime reads and writes in
        # place (a CPU OrtValue made from a numpy array shares its memory): no input dict, no output allocation and
        # none of session.run's per-call Python validation: with its checks it takes less time than a bare session.run
        # (benchmarks/inference_latency.py).
        self._input = np.zeros((1, self.observation_size), dtype=np.float32)
        self._output: np.ndarray = np.zeros((1, output_size), dtype=output_type)
        self._bound = (ort.OrtValue.ortvalue_from_numpy(self._input), ort.OrtValue.ortvalue_from_numpy(self._output))
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(INPUT_NAME, self._bound[0])
        self._binding.bind_ortvalue_output(OUTPUT_NAME, self._bound[1])
        self._run_bound = self._session.run_with_iobinding

    # ---- flight ---------------------------------------------------------------------------
    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """One observation (``observation_size`` floats, in ``observation_names`` order) -> 4 actions in [-1, 1]
        (a command policy: its int64 command indices, checked by whoever maps them).

        One call at a time (the buffers are the instance's): an autopilot calls it from its one control thread."""
        x = np.asarray(observation, dtype=np.float32)
        if x.shape != (self.observation_size,):
            raise ValueError(f"observation must have shape ({self.observation_size},); got {x.shape}")
        if not finite_dot(x, self._tiny_in):
            raise NonFiniteError(f"non-finite observation entries: {self._bad_entries(x[None])}")
        self._input[0] = x
        self._run_bound(self._binding)
        action = self._output[0].copy()  # the buffer is overwritten by the next call
        if self._tiny_out is None:  # integer indices: always finite
            return action
        if not finite_dot(action, self._tiny_out):
            raise NonFiniteError(f"the policy returned a non-finite action {action.tolist()}")
        return action

    def batch(self, observations: np.ndarray) -> np.ndarray:
        """(N, observation_size) -> (N, 4) (a command policy: (N, sub-actions) int64), with the same checks."""
        x = self.batch_input(observations)
        actions = self._run(self._outputs, {INPUT_NAME: x})[0]
        if self._tiny_out is not None and not np.isfinite(actions).all():
            raise NonFiniteError("the policy returned non-finite actions")
        return actions

    def batch_input(self, observations: np.ndarray) -> np.ndarray:
        """``observations`` as the contiguous (N, observation_size) float32 array a batch runs on, checked: its shape
        and every entry finite (`CPolicy.batch` checks through this too)."""
        x = np.ascontiguousarray(observations, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.observation_size:
            raise ValueError(f"observations must have shape (N, {self.observation_size}); got {x.shape}")
        if not np.isfinite(x).all():
            raise NonFiniteError(f"non-finite observation entries: {self._bad_entries(x)}")
        return x

    def _bad_entries(self, x: np.ndarray) -> list[str]:
        rows, cols = np.nonzero(~np.isfinite(x))
        return [
            f"{self.observation_names[c]}={x[r, c]}" + (f" (row {r})" if len(x) > 1 else "") for r, c in zip(rows, cols)
        ]

    # ---- the contract ---------------------------------------------------------------------
    def check(self, expected: dict[str, Any] | None = None) -> None:
        """Raise PolicyContractError unless the file meets ``expected`` (keys from ``EXPECTABLE``; see the class)."""
        expected = dict(expected or {})
        unknown = sorted(set(expected) - set(EXPECTABLE))
        if unknown:
            raise ValueError(f"expected: unknown key(s) {unknown}; allowed: {list(EXPECTABLE)}")
        where, meta = str(self.path), self.metadata
        if "sha256" in expected and self.sha256 != str(expected["sha256"]).lower():
            raise PolicyContractError(
                f"{where}: SHA-256 is {self.sha256}, expected {expected['sha256']}: not the approved file"
            )
        names = meta["observation_names"]
        want_names = expected.get("observation_names")
        if want_names is None:
            want_names = OBSERVATION_NAMES
        if list(names) != list(want_names):
            raise PolicyContractError(
                f"{where}: observation layout differs from the vehicle's: {_layout_difference(names, want_names)}"
            )
        for key in ("action_mode", "control_hz", "physics_hz", "env_id", "action_low", "action_high"):
            if key in expected and _normalized(meta[key]) != _normalized(expected[key]):
                raise PolicyContractError(
                    f"{where}: {key} is {meta[key]!r} in the policy, but {expected[key]!r} is expected"
                )

    def _check_own_contract(self, where: str) -> None:
        """What this runtime needs of any file: schema version, graph signature, action convention."""
        meta = self.metadata
        if meta["schema_version"] != SCHEMA_VERSION:
            raise PolicyContractError(
                f"{where}: metadata schema version {meta['schema_version']!r}; "
                f"this runtime reads version {SCHEMA_VERSION}"
            )
        names = meta["observation_names"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise PolicyContractError(f"{where}: observation_names must be a non-empty list of strings; got {names!r}")
        convention = meta["deterministic_action"]
        if convention not in (*CONTINUOUS_ACTIONS, CATEGORICAL_DETERMINISTIC_ACTION):
            raise PolicyContractError(
                f"{where}: action convention {convention!r}; this runtime flies "
                f"{[*CONTINUOUS_ACTIONS, CATEGORICAL_DETERMINISTIC_ACTION]}"
            )
        self._categorical = convention == CATEGORICAL_DETERMINISTIC_ACTION
        if self._categorical:
            _check_command(meta.get("command"), where)
        self._check_signature(len(names), where)
        for key in ("action_low", "action_high"):
            if not (isinstance(meta[key], list) and len(meta[key]) == ACTION_SIZE):
                raise PolicyContractError(f"{where}: {key} must list {ACTION_SIZE} numbers; got {meta[key]!r}")

    def _output_signature(self) -> tuple[int, type]:
        """(entries per sample, numpy dtype) of the graph's output under this file's action convention."""
        if self._categorical:
            return len(self.metadata["command"]["sizes"]), np.int64
        return ACTION_SIZE, np.float32

    def _check_signature(self, observation_size: int, where: str) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        output_size, output_type = self._output_signature()
        want = {
            "inputs": [(INPUT_NAME, "tensor(float)", observation_size)],
            "outputs": [(OUTPUT_NAME, "tensor(int64)" if output_type is np.int64 else "tensor(float)", output_size)],
        }
        for kind, args, wanted in (("inputs", inputs, want["inputs"]), ("outputs", outputs, want["outputs"])):
            got = [(a.name, a.type, a.shape) for a in args]
            ok = len(got) == len(wanted) and all(
                name == w_name
                and dtype == w_type
                and len(shape) == 2
                and shape[1] == w_size
                and not isinstance(shape[0], int)
                for (name, dtype, shape), (w_name, w_type, w_size) in zip(got, wanted)
            )
            if not ok:
                pretty = [f"{n} {t} [batch, {s}]" for n, t, s in wanted]
                raise PolicyContractError(
                    f"{where}: graph {kind} are {got}; expected {pretty} (batch a symbolic dimension)"
                )

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"OnnxPolicy({str(self.path)!r}, env={m['env_id']}, action_mode={m['action_mode']}, "
            f"control_hz={m['control_hz']}, run={m['training_run_id']}, sha256={self.sha256[:12]})"
        )


def _check_command(command, where: str) -> None:
    """A command policy's ``command``: every key of COMMAND_KEYS, sub-action sizes >= 2, one level per index."""
    if not isinstance(command, dict) or sorted(set(COMMAND_KEYS) - set(command)):
        raise PolicyContractError(
            f"{where}: a categorical policy needs metadata 'command' with keys {list(COMMAND_KEYS)}; got {command!r}"
        )
    sizes, levels, loop = command["sizes"], command["levels"], command["inner_loop"]
    ok = isinstance(sizes, list) and sizes and all(isinstance(k, int) and k >= 2 for k in sizes)
    ok = ok and isinstance(levels, list) and all(len(levels) == k for k in sizes)
    if not ok:
        raise PolicyContractError(
            f"{where}: command sizes {sizes!r} must be integers >= 2, each the length of levels {levels!r}"
        )
    if not (isinstance(loop, dict) and isinstance(loop.get("name"), str) and isinstance(loop.get("parameters"), dict)):
        raise PolicyContractError(f"{where}: command inner_loop must be {{name, parameters}}; got {loop!r}")


def finite_dot(x: np.ndarray, tiny: np.ndarray) -> bool:
    """Whether every entry of ``x`` is finite, as x . tiny (tiny = 2^-100 per entry): a NaN or an infinity carries
    through (no floating-point flag, unless +inf and -inf meet), finite float32 entries cannot overflow it. A third
    of np.isfinite(x).all()'s time on one observation."""
    try:
        return math.isfinite(x.dot(tiny))
    except (RuntimeWarning, FloatingPointError):  # numpy told to raise (-W error, np.seterr) on inf - inf
        return False


def expected_for_env(env) -> dict[str, Any]:
    """What a single-drone env requires of a policy: its observation layout, action mode, rates and the bounds of the
    simulator's action (a command env's inner loop emits that action in [-1, 1])."""
    base = env.unwrapped
    s = base.settings
    space = base.action_space
    low, high = (space.low, space.high) if hasattr(space, "low") else ([-1.0] * ACTION_SIZE, [1.0] * ACTION_SIZE)
    return {
        "observation_names": list(base.observation_names),
        "action_mode": s.action_mode,
        "control_hz": s.control_hz,
        "physics_hz": s.physics_hz,
        "action_low": [float(v) for v in low],
        "action_high": [float(v) for v in high],
    }


def _normalized(value):
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _layout_difference(got: list[str], want) -> str:
    want = list(want)
    if len(got) != len(want):
        return f"the policy takes {len(got)} observations, the vehicle gives {len(want)} ({want})"
    first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    return f"entry {first} is {got[first]!r} in the policy but {want[first]!r} on the vehicle (policy layout {got})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
