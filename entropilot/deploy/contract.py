"""The contract between export and flight: the ONNX graph's signature, the metadata keys export writes,
and the content seal that lets a reader tell an altered or truncated file. Pure Python, no torch or ray."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from entropilot.errors import EntropilotError

SCHEMA_VERSION = 1
INPUT_NAME = "observation"  # float32 [batch, len(observation_names)]
OUTPUT_NAME = "action"  # float32 [batch, 4] inside [action_low, action_high]; a command policy: int64 (see below)
BATCH_DIM = "batch"
ACTION_SIZE = 4
# How the file's output was made from the trained distribution (metadata "deterministic_action"). A continuous
# policy outputs the vehicle's action, float32 [batch, ACTION_SIZE] in [action_low, action_high].
DETERMINISTIC_ACTION = "Gaussian mean, clipped to [action_low, action_high]"
SQUASHED_DETERMINISTIC_ACTION = "tanh of the squashed Gaussian's mean, clipped to [action_low, action_high]"
CONTINUOUS_ACTIONS = (DETERMINISTIC_ACTION, SQUASHED_DETERMINISTIC_ACTION)
# A categorical (discrete-command) policy outputs int64 [batch, len(command["sizes"])]: per sub-action the index
# of its largest logit. Its metadata holds "command" (COMMAND_KEYS): what each index commands and the inner loop
# that turns the command into the vehicle's action (action_mode, action_low/high, action_meaning describe that
# action), run on board by ``deploy.command.CommandPolicy`` with the code the policy trained over: "levels" are the
# speeds (m/s) index 0, 1, ... commands along each axis, "repeat" the control periods each command is held,
# "inner_loop" {"name": a loop of ``entropilot.vehicle.control``, "parameters": its constructor's keywords}.
CATEGORICAL_DETERMINISTIC_ACTION = (
    "argmax of each sub-action's logits (the first index on a tie), int64 [batch, sub-actions]; "
    "flown through the inner loop named in command"
)
COMMAND_KEYS = ("type", "sizes", "levels", "repeat", "meaning", "inner_loop")
FRAME_CONVENTION = {
    "world": "z up (gravity along -z), metres",
    "body": "x forward, y left, z up",
    "rotation": "body-to-world rotation matrix, 9 entries row-major (r11 r12 r13 r21 ... r33)",
}

# Every value is stored as JSON text under PREFIX + key in the model's metadata_props.
PREFIX = "entropilot."
# Where export records the whole file's SHA-256 in MLflow: a tag on the run and on the registered model version.
SHA256_TAG = PREFIX + "onnx_sha256"
REQUIRED_KEYS = (
    "schema_version",
    "observation_names",
    "observation_groups",
    "normalization",
    "action_mode",
    "action_meaning",
    "action_low",
    "action_high",
    "control_hz",
    "physics_hz",
    "frame_convention",
    "deterministic_action",
    "env_id",
    "env_kwargs",
    "training_run_id",
    "training_iteration",
    "algorithm",
    "entropilot_version",
    "exporter",
)

# Written into the file after export by a flight-readiness evaluation (`entropilot evaluate --stamp`, `export
# --register`): its report and gate verdict (see `deploy.gate`). Optional: files without one still load.
READINESS_KEY = "readiness"

# The seal: SHA-256 of the whole file with this entry's value set to SEAL_PLACEHOLDER. Stored as a plain
# 64-character hex string (not JSON) so that writing it changes no length and no other byte of the file.
SEAL_KEY = PREFIX + "content_sha256"
SEAL_PLACEHOLDER = "0" * 64
# How protobuf writes StringStringEntryProto{key = 1, value = 2} for a 64-byte value: the key's bytes,
# then field 2's tag (0x12) and length (0x40), then the value.
_SEAL_MARK = SEAL_KEY.encode() + b"\x12\x40"


class PolicyContractError(EntropilotError, ValueError):
    """The ONNX file is not one this runtime can fly: altered, truncated, or made for another vehicle setup."""


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """{key: value} -> {PREFIX + key: JSON text}, plus the seal placeholder."""
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(f"metadata is missing {missing}")
    encoded = {PREFIX + k: json.dumps(v, sort_keys=True) for k, v in values.items()}
    encoded[SEAL_KEY] = SEAL_PLACEHOLDER
    return encoded


def decode_metadata(props: dict[str, str], where: str = "policy") -> dict[str, Any]:
    """The model's metadata_props -> {key: value} for our keys; PolicyContractError if a required one is absent or
    unreadable."""
    values = {}
    for full_key, text in props.items():
        if not full_key.startswith(PREFIX) or full_key == SEAL_KEY:
            continue
        try:
            values[full_key.removeprefix(PREFIX)] = json.loads(text)
        except json.JSONDecodeError:
            raise PolicyContractError(f"{where}: metadata {full_key!r} is not valid JSON ({text[:60]!r})") from None
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise PolicyContractError(
            f"{where}: not an entropilot policy export (metadata lacks {missing}); export it with `entropilot export`"
        )
    return values


def seal(data: bytes) -> bytes:
    """The serialized model (with SEAL_PLACEHOLDER as the seal's value) -> the same bytes with the seal filled in."""
    start = _seal_value_offset(data)
    if data[start : start + 64] != SEAL_PLACEHOLDER.encode():
        raise ValueError("the model's seal entry does not hold the placeholder")
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:start] + digest + data[start + 64 :]


def verify_seal(data: bytes, where: str = "policy") -> str:
    """Check the file's bytes against its seal; returns the seal. PolicyContractError if any byte was changed or cut."""
    try:
        start = _seal_value_offset(data)
    except ValueError:
        raise PolicyContractError(
            f"{where}: no entropilot content seal found: truncated, altered, or not written by `entropilot export`"
        ) from None
    stored = data[start : start + 64].decode("ascii", errors="replace")
    actual = hashlib.sha256(data[:start] + SEAL_PLACEHOLDER.encode() + data[start + 64 :]).hexdigest()
    if stored != actual:
        raise PolicyContractError(
            f"{where}: content does not match its seal (stored {stored[:16]}..., computed {actual[:16]}...): "
            "the file was altered or truncated after export; re-export or copy it again"
        )
    return stored


def is_sealed_export(path) -> bool:
    """Whether the file at ``path`` is an intact entropilot export (its seal holds): one ``export`` may replace."""
    try:
        with open(path, "rb") as file:
            verify_seal(file.read())
    except (OSError, PolicyContractError):
        return False
    return True


def _seal_value_offset(data: bytes) -> int:
    first = data.find(_SEAL_MARK)
    if first < 0 or data.find(_SEAL_MARK, first + 1) >= 0 or first + len(_SEAL_MARK) + 64 > len(data):
        raise ValueError("no single seal entry in the model")
    return first + len(_SEAL_MARK)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def policy_sha256(data: bytes) -> str:
    """SHA-256 of the serialized model without its metadata (ModelProto field 14, ``metadata_props``): it names the
    network, graph and weights, whatever the metadata says, so it is the same before and after a readiness report
    was written into the file (which changes the file's own SHA-256). Reads the protobuf wire format itself: no onnx
    needed on the vehicle."""
    digest, i, n = hashlib.sha256(), 0, len(data)
    while i < n:
        start = i
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(data, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise PolicyContractError(f"not an ONNX model: wire type {wire} at byte {start}")
        if i > n:
            raise PolicyContractError(f"not an ONNX model: field {field} runs past the end ({n} bytes)")
        if field != _METADATA_FIELD:
            digest.update(data[start:i])
    return digest.hexdigest()


_METADATA_FIELD = 14  # ModelProto.metadata_props


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise PolicyContractError("not an ONNX model: a truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
