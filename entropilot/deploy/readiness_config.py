"""The flight-readiness matrix as data: which vehicles and disturbances a policy is flown under (each condition is env
options over the policy's own env), how many held-out episodes on which seeds, and the gate. Read from YAML (the
shipped default is ``readiness.yaml`` beside this module) and checked, every condition against its env, before
anything flies."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from entropilot.errors import EntropilotError, one_line

DEFAULT_CONDITIONS = Path(__file__).with_name("readiness.yaml")
CONDITION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # also an MLflow metric key part


class ReadinessError(EntropilotError, ValueError):
    """The readiness evaluation cannot run as asked: a bad condition file, a policy it cannot fly, overlapping seeds.
    ``problems``: one line each (an Error line each at the command line), after ``message``."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.message, self.problems = message, list(problems or [])
        super().__init__("\n".join([message, *(f"  - {p}" for p in self.problems)]))

    def lines(self) -> list[str]:
        return [one_line(f"{self.message} {p}") for p in self.problems] or super().lines()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Section):
    """What a policy's report must show before `export --register` registers it or `fly` flies it on a vehicle."""

    condition: str = "nominal"  # the condition judged
    max_crashes: int = Field(0, ge=0)
    min_success_lower_bound: float = Field(0.95, ge=0.0, le=1.0)  # of the success rate's confidence interval


class ReadinessConfig(_Section):
    episodes: int = Field(200, ge=1, le=100_000)
    seed: int = Field(2_000_000, ge=0, le=2**31 - 1)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    base: dict[str, Any] = Field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = Field(min_length=1)
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("conditions", mode="before")
    @classmethod
    def _empty_is_no_change(cls, value: Any) -> Any:
        # `nominal:` with nothing after it reads as None in YAML: a condition that changes nothing.
        return {k: {} if v is None else v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("conditions")
    @classmethod
    def _names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        bad = [name for name in value if not re.fullmatch(CONDITION_NAME, str(name))]
        if bad:
            raise ValueError(f"condition names {bad} must be letters, digits, '_', '.', '-' (they name MLflow metrics)")
        return value

    @model_validator(mode="after")
    def _gate_names_a_condition(self) -> ReadinessConfig:
        if self.gate.condition not in self.conditions:
            raise ValueError(
                f"gate.condition {self.gate.condition!r} is not a condition; conditions: {list(self.conditions)}"
            )
        return self

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.episodes))

    def condition_kwargs(self, policy_kwargs: dict[str, Any], name: str) -> dict[str, Any]:
        """The env options condition ``name`` flies with: the policy's, then ``base``, then the condition's."""
        return merge_options(merge_options(policy_kwargs, self.base), self.conditions[name])


def merge_options(options: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``options`` changed by ``changes``: mappings merge key by key, ``None`` removes a key (the env's default)."""
    merged = dict(options)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_readiness_config(path: str | os.PathLike | None = None) -> ReadinessConfig:
    """The matrix in ``path`` (None: the shipped default). A file that says ``extends: default`` adds its conditions to
    the default ones (same name: replaced), merges its ``base`` into theirs and overrides the rest it sets."""
    data = _read(DEFAULT_CONDITIONS if path is None else Path(path))
    extends = data.pop("extends", None)
    if extends is not None:
        if extends != "default":
            raise ReadinessError(f"{path}: extends={extends!r}; the one matrix to extend is 'default'")
        default = _read(DEFAULT_CONDITIONS)
        data = {
            **default,
            **data,
            "base": merge_options(default.get("base") or {}, data.get("base") or {}),
            "conditions": {**(default.get("conditions") or {}), **(data.get("conditions") or {})},
            "gate": {**(default.get("gate") or {}), **(data.get("gate") or {})},
        }
    try:
        return ReadinessConfig.model_validate(data)
    except ValidationError as err:
        problems = [_problem(e) for e in err.errors()]
        raise ReadinessError(f"invalid readiness conditions ({path or DEFAULT_CONDITIONS}):", problems) from None


def _problem(error: ErrorDetails) -> str:
    """One pydantic error as "field: what is wrong"; an unknown key lists the keys its section takes."""
    loc = error["loc"]
    field = ".".join(str(p) for p in loc)
    where = f"{field}: " if field else ""  # a problem of the whole file (the gate's condition) names its fields
    if error["type"] == "extra_forbidden":
        section = GateConfig if loc[0] == "gate" else ReadinessConfig
        return f"{where}unknown key; valid keys here: {', '.join(section.model_fields)}"
    return f"{where}{error['msg'].removeprefix('Value error, ')}"


def check_conditions(config: ReadinessConfig, env_id: str, policy_kwargs: dict[str, Any]) -> dict[str, dict]:
    """Every condition's env options for the policy's env, each validated by the envs room (no simulator started):
    {name: options}. ReadinessError naming the condition and the option if one would not build."""
    from entropilot.envs import VECTOR_ENTRY_POINTS, validate_env_kwargs

    if env_id not in VECTOR_ENTRY_POINTS:  # the tasks with a batched world, which the matrix flies in
        raise ReadinessError(f"readiness flies the policies of {', '.join(VECTOR_ENTRY_POINTS)}; got {env_id}")
    out, problems = {}, []
    for name in config.conditions:
        kwargs = config.condition_kwargs(policy_kwargs, name)
        try:
            validate_env_kwargs(env_id, kwargs)
        except (ValueError, TypeError) as err:
            problems.append(f"condition {name!r}: {err}")
        out[name] = kwargs
    if problems:
        raise ReadinessError(f"readiness conditions {env_id} cannot fly:", problems)
    return out


def check_seeds(config: ReadinessConfig, metadata: dict[str, Any]) -> str | None:
    """ReadinessError if the held-out seeds overlap the seeds the policy trained or was evaluated on during training
    (export writes both into the file); a note if the file does not say (exported before it did), else None."""
    seeds = metadata.get("seeds")
    if not seeds:
        return "the policy file does not record its training seeds (exported by an older entropilot): not checked"
    low, high = config.seed, config.seed + config.episodes
    for role, (lo, hi) in sorted(seeds.items()):
        if low < hi and lo < high:
            raise ReadinessError(
                f"held-out seeds [{low}, {high}) overlap the policy's {role} seeds [{lo}, {hi}): "
                f"set `seed` in the readiness conditions outside them"
            )
    return None


def _read(path: Path) -> dict[str, Any]:
    from entropilot.platform.config import read_yaml

    try:
        data = read_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ReadinessError(f"cannot read readiness conditions {path}: {reason}") from None
    except yaml.YAMLError as err:
        raise ReadinessError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ReadinessError(f"{path}: must hold a mapping (episodes, seed, base, conditions, gate)")
    return data
