"""A sweep's plan: the search space over config keys (`--grid`, `--random`), validated against the schema with
every value and combination before Ray starts, and the settings of the search. Light: no Ray, no MLflow."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from entropilot.errors import EntropilotError
from entropilot.inputs import writable_folder
from entropilot.platform.config import ConfigError, ExperimentConfig, canonical_path, parse_config, read_yaml
from entropilot.platform.names import METRIC_PREFIXES, METRICS, Metric

SEARCHES = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
DEFAULT_SAMPLES = 10
# ASHA keeps the best 1/REDUCTION_FACTOR of the trials at each rung (iterations grace, 2 x grace, 4 x grace...).
ASHA_REDUCTION_FACTOR = 2
# What the sweep sets per trial, or must be the same for all trials so they land side by side.
SWEEP_OWNED_KEYS = ("checkpoint.dir", "mlflow", "name", "resources.ray_address")
# Metrics measured only by an evaluation (every `evaluation.interval` iterations).
EVALUATION_METRICS = (
    Metric.SUCCESS_RATE,
    Metric.EVAL_SUCCESS_LOWER_BOUND,
    Metric.EVAL_CRASHES,
    Metric.EVAL_FINAL_DISTANCE,
)


class SweepError(EntropilotError, ValueError):
    """A sweep that cannot run: a bad search space, or a trial that does not fit the cluster."""


# ----------------------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Dimension:
    """One swept config key: grid values, or a distribution (`kind` one of DISTRIBUTIONS) for random search."""

    key: str
    kind: str  # "grid" or one of DISTRIBUTIONS
    # grid/choice: the values; uniform/loguniform/randint: (low, high), both inclusive. Before Ray starts each
    # of them is validated: every listed value, or both ends of a range (the schema's bounds are intervals).
    values: tuple

    def describe(self) -> str:
        if self.kind in ("grid", "choice"):
            return f"{self.kind} {json.dumps(list(self.values))}"
        return f"{self.kind}({self.values[0]}, {self.values[1]})"

    def to_tune(self, search: str):
        from ray import tune

        if self.kind == "grid":
            # Optuna has no grid: there the listed values become a categorical choice.
            return tune.choice(list(self.values)) if search == "optuna" else tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "randint":
            return tune.randint(low, high + 1)  # Tune's upper bound is exclusive; ours is not
        return (tune.uniform if self.kind == "uniform" else tune.loguniform)(low, high)


def parse_grid(text: str) -> Dimension:
    """`KEY=V1,V2,...`, or `KEY=[V1, V2, ...]` (a YAML list: for values holding commas, e.g. `[[64,64],[128]]`)."""
    key, values_text = _split_key(text, "--grid", "KEY=V1,V2,...")
    values_text = values_text.strip()
    if values_text.startswith("["):
        values = _yaml_value(values_text, text, "--grid")
        if not isinstance(values, list):
            raise SweepError(f"--grid {text!r}: {values_text!r} is not a YAML list")
    else:
        pieces = [v.strip() for v in values_text.split(",")]
        if not all(pieces):
            raise SweepError(f"--grid {text!r}: empty value; give KEY=V1,V2,...")
        values = [_yaml_value(v, text, "--grid") for v in pieces]
    if not values:
        raise SweepError(f"--grid {text!r}: no values")
    unique = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return Dimension(key, "grid", tuple(unique))


def parse_random(text: str) -> Dimension:
    """`KEY=uniform:LOW:HIGH`, `KEY=loguniform:LOW:HIGH` (0 < LOW), `KEY=randint:LOW:HIGH` (integers, HIGH
    included) or `KEY=choice:A,B,...` (`choice:[A, B]` for values holding commas)."""
    key, spec = _split_key(text, "--random", "KEY=uniform:LOW:HIGH")
    kind, _, args = spec.partition(":")
    kind = kind.strip()
    if kind not in DISTRIBUTIONS:
        raise SweepError(
            f"--random {text!r}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)} "
            "(uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH, choice:A,B,...)"
        )
    if kind == "choice":
        return Dimension(key, "choice", parse_grid(f"{key}={args}").values)
    bounds = args.split(":")
    what = "integers" if kind == "randint" else "finite numbers"
    try:
        low, high = (int(b) if kind == "randint" else float(b) for b in bounds)
    except ValueError:
        raise SweepError(f"--random {text!r}: {kind} needs two {what}, {kind}:LOW:HIGH") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SweepError(f"--random {text!r}: {kind} needs two {what}, {kind}:LOW:HIGH")
    if not low < high:
        raise SweepError(f"--random {text!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"--random {text!r}: loguniform needs 0 < LOW")
    return Dimension(key, kind, (low, high))


def _split_key(text: str, option: str, form: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    if not sep or not key.strip() or not rest.strip():
        raise SweepError(f"{option} {text!r}: write {form}")
    return canonical_path(key), rest  # the same shortcuts as --set


def _yaml_value(text: str, whole: str, option: str) -> Any:
    try:
        return read_yaml(text)  # as --set reads a value
    except yaml.YAMLError as exc:
        raise SweepError(f"{option} {whole!r}: {text!r} is not a valid YAML value: {exc}") from None


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the base config, what to vary, how to search and what to optimize."""

    base: ExperimentConfig
    dimensions: tuple[Dimension, ...]
    search: str
    samples: int
    metric: str
    mode: str
    asha: bool
    grace_period: int
    max_concurrent: int | None
    sweep_dir: Path
    name: str  # the parent run's name, also the sweep folder's

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    @property
    def max_iterations(self) -> int | None:
        return self.base.stop.iterations

    def tune_space(self) -> dict:
        """Tune's param_space: dotted key -> grid or distribution (sampled values arrive under the same keys)."""
        return {d.key: d.to_tune(self.search) for d in self.dimensions}

    def search_params(self) -> dict[str, str]:
        """The search as MLflow params of the parent run, beside the base config."""
        params = {
            "sweep.search": self.search,
            "sweep.samples": str(self.samples),
            "sweep.metric": self.metric,
            "sweep.mode": self.mode,
            "sweep.asha": str(self.asha).lower(),
        }
        if self.asha:
            params["sweep.asha.grace_period"] = str(self.grace_period)
        params.update({f"sweep.space.{d.key}": d.describe() for d in self.dimensions})
        return params


def plan_sweep(
    base: ExperimentConfig,
    grid: Iterable[str] = (),
    random: Iterable[str] = (),
    *,
    search: str | None = None,
    samples: int | None = None,
    metric: str = Metric.SUCCESS_RATE,
    mode: str = "max",
    asha: bool = True,
    grace_period: int | None = None,
    max_concurrent: int | None = None,
    sweep_dir: str | Path | None = None,
) -> SweepPlan:
    """Parse and validate a sweep without starting Ray: every key must be a config field the sweep may vary
    and every grid value, choice and range end must give a valid config (with every combination of the
    others). Raises SweepError (or ConfigError, naming the field and its allowed range)."""
    dimensions = [parse_grid(g) for g in grid] + [parse_random(r) for r in random]
    if not dimensions:
        raise SweepError("nothing to sweep: give at least one --grid KEY=V1,V2,... or --random KEY=DIST:ARGS")
    search = search or ("random" if any(d.kind != "grid" for d in dimensions) else "grid")
    if search not in SEARCHES:
        raise SweepError(f"search must be one of {', '.join(SEARCHES)}; got {search!r}")
    if search == "grid":
        if any(d.kind != "grid" for d in dimensions):
            raise SweepError("--random needs --search random or optuna (a grid search tries listed values only)")
        if samples not in (None, 1):
            raise SweepError("--samples is for --search random or optuna; a grid search runs each combination once")
    if search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise SweepError("--search optuna needs the optuna package: pip install 'entropilot[sweep]'")
    if mode not in ("max", "min"):
        raise SweepError(f"mode must be max or min; got {mode!r}")
    if metric not in METRICS and not metric.startswith(METRIC_PREFIXES):
        raise SweepError(f"--metric {metric!r}: not a metric a trial reports; one of {', '.join(METRICS)}")
    if metric in EVALUATION_METRICS and base.evaluation.interval is None:
        raise SweepError(f"metric {metric} is measured by evaluations, but evaluation.interval is null: set it")
    _check_keys(dimensions)
    _check_values(base, dimensions)
    grace = grace_period or base.evaluation.interval or 1
    if base.stop.iterations is not None:
        grace = min(grace, base.stop.iterations)  # ASHA requires grace <= max_t
    name = f"{base.run_name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = writable_folder(sweep_dir or Path("runs") / name, "--sweep-dir")
    return SweepPlan(
        base=base,
        dimensions=tuple(dimensions),
        search=search,
        samples=1 if search == "grid" else (samples or DEFAULT_SAMPLES),
        metric=metric,
        mode=mode,
        asha=asha,
        grace_period=grace,
        max_concurrent=max_concurrent,
        sweep_dir=folder.resolve(),
        name=name,
    )


def _check_keys(dimensions: Sequence[Dimension]) -> None:
    seen = set()
    for d in dimensions:
        if d.key in seen:
            raise SweepError(f"{d.key} is swept twice; give each key once")
        seen.add(d.key)
        for owned in SWEEP_OWNED_KEYS:
            if d.key == owned or d.key.startswith(owned + "."):
                raise SweepError(
                    f"{d.key} cannot be swept: the sweep sets {owned} itself (the same for all trials, "
                    "or one per trial)"
                )
        annotation = _field_annotation(d.key)
        if d.kind in ("uniform", "loguniform") and annotation is not None and _is_int_field(annotation):
            raise SweepError(f"--random {d.key}: an integer field; use randint:LOW:HIGH")


def _check_values(base: ExperimentConfig, dimensions: Sequence[Dimension]) -> None:
    data = base.model_dump(mode="json")
    for d in dimensions:  # one key at a time first, so an error names the value at fault
        for value in d.values:
            _validated(data, {d.key: value}, f"{d.key}={json.dumps(value)}")
    if len(dimensions) > 1:  # then the combinations, for rules between fields (minibatch <= batch...)
        for combo in itertools.product(*(d.values for d in dimensions)):
            values = dict(zip((d.key for d in dimensions), combo))
            _validated(data, values, ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items()))


def _validated(data: Mapping, values: Mapping[str, Any], what: str) -> None:
    try:
        config_with(data, values)
    except ConfigError as err:
        problems = "; ".join(problem.describe() for problem in err.problems)
        raise SweepError(f"sweep value(s) {what} give an invalid config: {problems}") from None


def config_with(data: Mapping, values: Mapping[str, Any]) -> ExperimentConfig:
    """The config `data` (a `model_dump`) with dotted `values` set (numpy scalars from Tune as Python numbers),
    validated."""
    return parse_config(data, {key: _plain(value) for key, value in values.items()})


def _plain(value: Any) -> Any:
    """Tune samples numpy scalars; the config wants Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _field_annotation(key: str) -> Any:
    """The type annotation of a dotted config field, None where the schema does not say (env.kwargs.*)."""
    model: Any = ExperimentConfig
    annotation = None
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model = model.model_fields[part].annotation
    return annotation


def _is_int_field(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return [m for m in members if m in (int, float)] == [int]
