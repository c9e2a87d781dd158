"""Reading, validating and writing experiment configs: YAML files, dotted overrides, MLflow params."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError

from entropilot.platform.config.errors import NO_VALUE, ConfigError, FieldProblem, Problem
from entropilot.platform.config.overrides import apply_overrides, parse_overrides, read_yaml, section_at
from entropilot.platform.config.schema import ExperimentConfig

# MLflow rejects param values longer than this.
MLFLOW_PARAM_MAX_CHARS = 6000
# The one section a resumed run may change (`--resume --set stop.KEY=VALUE`): its other params describe what trained it.
RESUMABLE_SECTION = "stop"


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (None: all defaults), apply `a.b.c=value` overrides, validate.

    Raises ConfigError for every problem found.
    """
    source = None
    data: Any = {}
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError([Problem("", f"cannot read config file: {reason}")], source) from None
        try:
            data = read_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError([Problem("", f"not valid YAML: {exc}")], source) from None
        if data is None or data == {}:
            # Most likely the wrong or a truncated file: training on every default would hide that.
            raise ConfigError(
                [Problem("", "the file holds no settings (empty or only comments); give at least one section")],
                source,
            )
        if not isinstance(data, dict):
            raise ConfigError([Problem("", "the file must hold a mapping of sections", data)], source)
    return parse_config(data, overrides, source=source)


def parse_config(
    data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] = (), source: str | None = None
) -> ExperimentConfig:
    """Validate a nested dict (as read from YAML) after applying overrides: `path=value` texts, or {path: value}."""
    values = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    data = apply_overrides(data, values, source)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems_from(exc), source) from None


def with_overrides(
    cfg: ExperimentConfig,
    overrides: Iterable[str] | Mapping[str, Any],
    only: str | None = None,
    source: str | None = None,
) -> ExperimentConfig:
    """`cfg` with overrides applied and the whole config validated again (a resumed run's new stop criteria, a sweep's
    trial, live settings). `only`: a section path (`stop`) outside which overrides are refused."""
    values = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    if only is not None:
        outside = [path for path in values if not (path == only or path.startswith(only + "."))]
        if outside:
            raise ConfigError(
                [Problem(path, f"only {only}.* may change here", values[path]) for path in outside], source
            )
    return parse_config(cfg.model_dump(mode="json"), values, source)


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the full config (every field, defaults included) as YAML that `load_config` reads back equal."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def to_flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    """Dotted keys -> strings for MLflow params; `from_flat_params` reverses it (values of <= 6000 chars)."""
    flat: dict[str, str] = {}
    _flatten(cfg.model_dump(mode="json"), "", flat)
    return flat


def from_flat_params(params: Mapping[str, str]) -> ExperimentConfig:
    """Rebuild a config from `to_flat_params` output (e.g. an MLflow run's params)."""
    data: dict[str, Any] = {}
    for key, text in params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = read_yaml(text)
    return parse_config(data, source="flat params")


def _problems_from(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        message = err["msg"]
        value = err.get("input", NO_VALUE)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblem):
            loc += cause.field.split(".")
            message, value = cause.message, cause.value
        elif err["type"] == "value_error" and message.startswith("Value error, "):
            message = message[len("Value error, ") :]
            if isinstance(value, (dict, BaseModel)):
                value = NO_VALUE  # a section-level rule: the section itself is no useful "got"
        if err["type"] in _RANGE_ERRORS:
            allowed = allowed_range(loc)
            if allowed:
                message = f"{message}; allowed: {allowed}"
        if err["type"] == "extra_forbidden":
            parent = section_at(loc[:-1])
            valid = ", ".join(sorted(parent.model_fields)) if parent else "?"
            message = f"unknown key; valid keys here: {valid}"
        problems.append(Problem(_format_loc(loc), message, value))
    return problems


# Errors after which the field's range is worth saying: out of range, or not a number at all.
_RANGE_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "float_parsing",
    "float_type",
    "int_parsing",
    "int_type",
}


def allowed_range(loc: list[Any]) -> str:
    """'0 < value <= 1' from the Field(gt/ge/lt/le) constraints of the field at `loc` (`["algorithm", "lr"]`), so a
    message shows both ends; "" for a field without them."""
    model = section_at(loc[:-1])
    if model is None or loc[-1] not in model.model_fields:
        return ""
    low = high = ""
    for item in model.model_fields[loc[-1]].metadata:
        if isinstance(item, annotated_types.Gt):
            low = f"{item.gt} < "
        elif isinstance(item, annotated_types.Ge):
            low = f"{item.ge} <= "
        elif isinstance(item, annotated_types.Lt):
            high = f" < {item.lt}"
        elif isinstance(item, annotated_types.Le):
            high = f" <= {item.le}"
    return f"{low}value{high}" if low or high else ""


def _format_loc(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _flatten(child, f"{prefix}.{key}" if prefix else str(key), out)
        return
    out[prefix] = _param_text(value)


def _param_text(value: Any) -> str:
    # Plain strings stay readable in the MLflow UI; anything YAML would read back differently is JSON
    # (which YAML reads back exactly), so from_flat_params restores the same types.
    text = value if isinstance(value, str) and _reads_back_as_itself(value) else json.dumps(value)
    if len(text) > MLFLOW_PARAM_MAX_CHARS:
        marker = "...<truncated>"
        text = text[: MLFLOW_PARAM_MAX_CHARS - len(marker)] + marker
    return text


def _reads_back_as_itself(text: str) -> bool:
    try:
        return read_yaml(text) == text
    except yaml.YAMLError:
        return False
