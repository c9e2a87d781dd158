"""The exported policy compiled from its generated C, flown through ctypes with the interface of ``OnnxPolicy``: the
metadata and contract of the ONNX file it came from (the library must carry that file's SHA-256), finite numbers
checked on every call. Imports numpy, onnxruntime (for the contract) and the standard library only."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from entropilot.deploy.contract import ACTION_SIZE, PolicyContractError
from entropilot.deploy.onnx_policy import NonFiniteError, OnnxPolicy, finite_dot

__all__ = ["CPolicy"]


class CPolicy:
    """``policy(obs[22]) -> action[4]`` from a shared library built from ``entropilot export --format c`` output.

    ``onnx_path`` is the file the C was generated from: its seal and contract are checked (``OnnxPolicy``), and the
    library's ``entropilot_policy_onnx_sha256()`` must name that file, or PolicyContractError. ``metadata``,
    ``check``, ``sha256`` and the rest are the ONNX file's; ``onnx`` is that ``OnnxPolicy`` (the reference the
    parity checks compare with). A non-finite observation or action raises ``NonFiniteError``.
    """

    def __init__(
        self, library: str | os.PathLike[str], onnx_path: str | os.PathLike[str], expected: dict[str, Any] | None = None
    ):
        self.onnx = OnnxPolicy(onnx_path, expected)
        self.library_path = Path(library)
        try:
            lib = ctypes.CDLL(str(self.library_path.resolve()))
            fn, sha = lib.entropilot_policy, lib.entropilot_policy_onnx_sha256
        except (OSError, AttributeError) as err:
            raise PolicyContractError(f"{library}: not a compiled entropilot C policy ({err})") from None
        sha.restype = ctypes.c_char_p
        sha.argtypes = []
        built_from = sha().decode("ascii", errors="replace")
        if built_from != self.onnx.sha256:
            raise PolicyContractError(
                f"{library} was generated from the ONNX file with SHA-256 {built_from[:16]}..., not from "
                f"{onnx_path} ({self.onnx.sha256[:16]}...): regenerate it with `entropilot export --format c`"
            )
        # Plain pointers made once: ctypes converts a c_void_p argument in a fraction of what a numpy ndpointer costs
        # (its checks took ~3 us a call here, more than the C itself).
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._lib, self._fn = lib, fn
        self.path = self.onnx.path
        self.sha256 = self.onnx.sha256
        self.seal = self.onnx.seal
        self.policy_sha256 = self.onnx.policy_sha256
        self.metadata = self.onnx.metadata
        self.observation_names = self.onnx.observation_names
        self.observation_size = self.onnx.observation_size
        self.action_mode = self.onnx.action_mode
        self.control_hz = self.onnx.control_hz
        self.check = self.onnx.check
        self._input = np.zeros(self.observation_size, dtype=np.float32)
        self._output = np.zeros(ACTION_SIZE, dtype=np.float32)
        self._pointers = (ctypes.c_void_p(self._input.ctypes.data), ctypes.c_void_p(self._output.ctypes.data))
        self._tiny_in = np.full(self.observation_size, 2.0**-100, dtype=np.float32)
        self._tiny_out = np.full(ACTION_SIZE, 2.0**-100, dtype=np.float32)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """One observation -> 4 actions in [-1, 1]; one call at a time (the buffers are the instance's)."""
        x = np.asarray(observation, dtype=np.float32)
        if x.shape != (self.observation_size,):
            raise ValueError(f"observation must have shape ({self.observation_size},); got {x.shape}")
        if not finite_dot(x, self._tiny_in):
            raise NonFiniteError(f"non-finite observation entries: {self.onnx._bad_entries(x[None])}")
        self._input[:] = x
        self._fn(*self._pointers)
        action = self._output.copy()
        if not finite_dot(action, self._tiny_out):
            raise NonFiniteError(f"the policy returned a non-finite action {action.tolist()}")
        return action

    def batch(self, observations: np.ndarray) -> np.ndarray:
        """(N, observation_size) -> (N, 4), one C call per row, with the same finiteness checks."""
        x = self.onnx.batch_input(observations)
        actions = np.empty((len(x), ACTION_SIZE), dtype=np.float32)
        rows, outs = x.ctypes.data, actions.ctypes.data
        for i in range(len(x)):
            self._fn(rows + i * x.strides[0], outs + i * actions.strides[0])
        if not np.isfinite(actions).all():
            raise NonFiniteError("the policy returned non-finite actions")
        return actions

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"CPolicy({str(self.library_path)!r}, from {str(self.path)!r}, env={m['env_id']}, "
            f"action_mode={m['action_mode']}, control_hz={m['control_hz']}, sha256={self.sha256[:12]})"
        )
