"""Dotted overrides (`section.field=value`): the one parser behind `--set`, `--resume --set`, sweeps and live tuning.

Values are YAML, read the same way as the experiment file, so `1e-3`, `[128, 128]`, `true` and `null` mean what
they look like. Paths are checked against the schema as they are applied, so a typo names the valid keys.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from entropilot.platform.config.errors import ConfigError, FieldProblem, Problem
from entropilot.platform.config.schema import ExperimentConfig

# Shortcuts accepted wherever a config path is (--set, sweeps, live tags); the schema itself has one name per field.
ALIASES = {"entropy.target": "entropy.control.target", "entropy.init_threshold": "entropy.init.threshold"}


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` (no dot) is a string; YAML 1.2 and every person reading it say float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text (a whole experiment file or one override's value) with YAML 1.2's number forms."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only


def canonical_path(path: str) -> str:
    """`path` with a shortcut (`entropy.target`...) replaced by the schema's own name."""
    path = path.strip()
    for alias, real in ALIASES.items():
        if path == alias or path.startswith(alias + "."):
            return real + path[len(alias) :]
    return path


def parse_override(text: str) -> tuple[str, Any]:
    """`"a.b.c=value"` -> (the schema path, the value read as YAML); FieldProblem if it is not of that form."""
    path, sep, value_text = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise FieldProblem(path or "<override>", "overrides look like section.field=value", text)
    path = canonical_path(path)
    try:
        return path, read_yaml(value_text)
    except yaml.YAMLError as exc:
        raise FieldProblem(
            path, f"value is not valid YAML: {getattr(exc, 'problem', None) or exc}", value_text
        ) from None


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Several `path=value` texts -> {path: value}; ConfigError listing every malformed one."""
    values, problems = {}, []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except FieldProblem as exc:
            problems.append(Problem(exc.field, exc.message, exc.value))
        else:
            values[path] = value
    if problems:
        raise ConfigError(problems, "overrides")
    return values


def apply_overrides(data: Mapping[str, Any], values: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """A copy of the nested config dict `data` with each dotted path in `values` set (shortcuts allowed).

    Checks each path against the schema (unknown keys, setting a key inside a plain value); the values themselves are
    validated when the result is parsed. Raises ConfigError listing every bad path."""
    data = copy.deepcopy(dict(data))
    problems = []
    for path, value in values.items():
        try:
            _set(data, canonical_path(path), value)
        except FieldProblem as exc:
            problems.append(Problem(exc.field, exc.message, exc.value))
    if problems:
        raise ConfigError(problems, source)
    return data


def _section_class(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The model class of field `key` if it is a sub-section, else None."""
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_free_mapping(model: type[BaseModel], key: str) -> bool:
    """Fields like env.kwargs: a dict whose keys the schema does not list."""
    annotation = model.model_fields[key].annotation
    return getattr(annotation, "__origin__", annotation) is dict


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    model: type[BaseModel] | None = ExperimentConfig
    node = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if model is not None:
            if part not in model.model_fields:
                valid = ", ".join(sorted(model.model_fields))
                raise FieldProblem(here, f"unknown key; valid keys here: {valid}", value)
            child_model = _section_class(model, part)
            if not last and child_model is None and not _is_free_mapping(model, part):
                raise FieldProblem(here, "is a value, not a section: cannot set a key inside it", value)
        else:
            child_model = None  # inside a free mapping (env.kwargs...): any key goes
        if last:
            node[part] = value
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}  # absent or null section: start it empty
        node = node[part]
        model = child_model


def section_at(path: list[Any]) -> type[BaseModel] | None:
    """The schema section a (parsed) path leads to, or None if it leaves the schema."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        model = _section_class(model, part)
    return model
