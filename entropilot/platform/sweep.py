"""Hyperparameter sweeps (entropy thresholds first of all) on Ray Tune: a validated search space over config
keys, one full `train()` run per trial as a child of one MLflow parent run, ASHA early stopping, and a
summary with the best config as a YAML file ready for `entropilot train`.

Everything up to `run_sweep` is light: a bad key or value fails, naming it, before Ray starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import os
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from entropilot.platform.config import OVERRIDE_ALIASES, ConfigError, ExperimentConfig, parse_config

__all__ = [
    "Dimension",
    "SweepError",
    "SweepPlan",
    "SweepResult",
    "make_scheduler",
    "parse_grid",
    "parse_random",
    "plan_sweep",
    "run_sweep",
    "trial_bundles",
    "trials_that_fit",
    "tune_search_algorithm",
]

SEARCHES = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
DEFAULT_SAMPLES = 10
# ASHA keeps the best 1/REDUCTION_FACTOR of the trials at each rung (iterations grace, 2 x grace, 4 x grace...).
ASHA_REDUCTION_FACTOR = 2
# What the sweep sets per trial, or must be the same for all trials so they land side by side.
SWEEP_OWNED_KEYS = ("checkpoint.dir", "mlflow", "name", "resources.ray_address")
# Metrics measured only by an evaluation (every `evaluation.interval` iterations).
EVALUATION_METRICS = ("success_rate", "eval_final_distance")


class SweepError(ValueError):
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
    try:
        low, high = (int(b) if kind == "randint" else float(b) for b in bounds)
    except ValueError:
        what = "integers" if kind == "randint" else "numbers"
        raise SweepError(f"--random {text!r}: {kind} needs two {what}, {kind}:LOW:HIGH") from None
    if not low < high:
        raise SweepError(f"--random {text!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"--random {text!r}: loguniform needs 0 < LOW")
    return Dimension(key, kind, (low, high))


def _split_key(text: str, option: str, form: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise SweepError(f"{option} {text!r}: write {form}")
    for alias, real in OVERRIDE_ALIASES.items():  # the same shortcuts as --set
        if key == alias or key.startswith(alias + "."):
            key = real + key[len(alias) :]
    return key, rest


def _yaml_value(text: str, whole: str, option: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"{option} {whole!r}: {text!r} is not a valid YAML value: {exc}") from None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a real string stays one
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return value


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
    metric: str = "success_rate",
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
    if metric in EVALUATION_METRICS and base.evaluation.interval is None:
        raise SweepError(f"metric {metric} is measured by evaluations, but evaluation.interval is null: set it")
    _check_keys(dimensions)
    _check_values(base, dimensions)
    grace = grace_period or base.evaluation.interval or 1
    if base.stop.iterations is not None:
        grace = min(grace, base.stop.iterations)  # ASHA requires grace <= max_t
    name = f"{base.run_name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
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
        sweep_dir=Path(sweep_dir or Path("runs") / name).resolve(),
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
        raise SweepError(f"sweep value(s) {what} give an invalid config:\n{err}") from None


def config_with(data: Mapping, values: Mapping[str, Any], source: str | None = None) -> ExperimentConfig:
    """The config `data` (a `model_dump`) with dotted `values` set, validated."""
    return parse_config(data, [f"{k}={json.dumps(_plain(v))}" for k, v in values.items()], source=source)


def _plain(value: Any) -> Any:
    """Tune samples numpy scalars; JSON (and so the config overrides) wants Python numbers."""
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


# ----------------------------------------------------------------------------------------- resources


def trial_bundles(cfg: ExperimentConfig) -> list[dict[str, float]]:
    """The Ray resource bundles one trial takes, as RLlib's `Algorithm.default_resource_request` lays them
    out for our build: the trial process (driver; it is also the learner unless there are remote learners),
    one bundle per env runner, one per remote learner. With resources.gpu auto/on, Ray must be up (GPUs are
    counted in the cluster, as the trial's own build will)."""
    from entropilot.platform.algorithm import resolve_learner_resources

    r = cfg.resources
    learners = resolve_learner_resources(r.gpu, r.num_learners)
    gpus = learners["num_gpus_per_learner"]
    main = {"CPU": 1.0}
    if learners["num_learners"] == 0 and gpus:
        main["GPU"] = float(gpus)
    bundles = [main] + [{"CPU": float(r.num_cpus_per_env_runner)} for _ in range(r.num_env_runners)]
    for _ in range(learners["num_learners"]):
        bundles.append({"CPU": 0.0, "GPU": float(gpus)} if gpus else {"CPU": 1.0})
    return bundles


def trials_that_fit(bundles: Sequence[Mapping[str, float]], cluster: Mapping[str, float]) -> int:
    """How many trials of `bundles` the cluster's resources hold at once; SweepError if not even one, since
    such a trial would wait PENDING forever."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            need[resource] = need.get(resource, 0.0) + amount
    fit = math.inf
    for resource, amount in need.items():
        if amount <= 0:
            continue
        have = float(cluster.get(resource, 0.0))
        if amount > have + 1e-9:
            layout = " + ".join(_bundle_text(b) for b in bundles)
            raise SweepError(
                f"one trial needs {amount:g} {resource} ({layout}) but the Ray cluster has {have:g}: lower "
                "resources.num_env_runners or resources.num_cpus_per_env_runner (fractions work, e.g. 0.5), "
                "or use a bigger cluster"
            )
        fit = min(fit, math.floor(have / amount + 1e-9))
    return int(fit) if fit != math.inf else 1


# --------------------------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    parent_run_id: str
    sweep_dir: Path
    trials: list  # sweep_summary.TrialSummary, in the order Tune created them
    best: Any = None  # the best TrialSummary, None if no trial measured the metric
    best_config: Path | None = None
    table: str = ""
    files: list[Path] = field(default_factory=list)


def run_sweep(plan: SweepPlan, echo: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep on Ray Tune, under one MLflow parent run; then summarize (see `sweep_summary`)."""
    import ray
    from ray import tune

    from entropilot.platform import sweep_summary
    from entropilot.platform.tracking import RunTracker
    from entropilot.platform.train import init_ray

    init_ray(plan.base)
    bundles = trial_bundles(plan.base)
    fit = trials_that_fit(bundles, ray.cluster_resources())
    concurrency = min(plan.max_concurrent or fit, fit)
    trial_base = plan.base.model_copy(deep=True)
    # Trials run in other processes (and another working directory): give them the store as an absolute URI.
    trial_base.mlflow.tracking_uri = _absolute_store_uri(plan.base.mlflow.resolve_tracking_uri())
    parent_cfg = trial_base.model_copy(deep=True)
    parent_cfg.mlflow.run_name = plan.name

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    with RunTracker.start(parent_cfg, extra_params=plan.search_params()) as parent:
        parent.set_tag("entropilot.sweep", "parent")
        parent.set_tag("entropilot.sweep.dir", str(plan.sweep_dir))
        echo(
            f"sweep {plan.name}: {plan.search} search over {', '.join(plan.keys)}; {_trial_count(plan)} trial(s), "
            f"{concurrency} at a time (each takes {' + '.join(_bundle_text(b) for b in bundles)}); MLflow parent "
            f"run {parent.run_id}"
        )
        if plan.max_concurrent and plan.max_concurrent > fit:
            echo(f"--max-concurrent {plan.max_concurrent}: the Ray cluster holds {fit} trial(s) at once")
        echo(_asha_line(plan))
        trainable = tune.with_resources(
            tune.with_parameters(
                _run_trial,
                base=trial_base.model_dump(mode="json"),
                parent_run_id=parent.run_id,
                trials_dir=str(plan.sweep_dir / "trials"),
                metric=plan.metric,
            ),
            tune.PlacementGroupFactory(bundles, strategy="PACK"),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=plan.tune_space(),
            tune_config=tune.TuneConfig(
                metric=plan.metric,
                mode=plan.mode,
                num_samples=plan.samples,
                max_concurrent_trials=concurrency,
                scheduler=make_scheduler(plan),
                search_alg=tune_search_algorithm(plan),
                reuse_actors=False,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(plan.sweep_dir),
                verbose=0,
                callbacks=[sweep_summary.TrialEcho(echo, plan.keys, plan.metric)],
            ),
        )
        with _classic_tune_console():
            results = tuner.fit()
        trials = sweep_summary.collect(results, plan, parent.tracking_uri, parent.run_id)
        return sweep_summary.finish(plan, trials, parent, echo)


def make_scheduler(plan: SweepPlan):
    """ASHA on the metric, over reported iterations; FIFO (no early stopping) with `asha=False`.

    A trial is first judged at `grace_period` iterations (default: its first evaluation), then at 2x, 4x...;
    at each rung those below the best half so far stop. `max_t` is the trial's own iteration limit (a trial
    ends itself there; without one, unbounded)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not plan.asha:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=plan.max_iterations or 10**6,
        grace_period=plan.grace_period,
        reduction_factor=ASHA_REDUCTION_FACTOR,
    )


def tune_search_algorithm(plan: SweepPlan):
    """Optuna's TPE for --search optuna; else Tune's grid/random generator, seeded by the config's seed."""
    if plan.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial: TrialEcho reports them
        return OptunaSearch(seed=plan.base.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=plan.base.seed)


def _run_trial(values: dict, *, base: dict, trials_dir: str, parent_run_id: str, metric: str) -> None:
    """One trial (in a Tune actor): the base config with this trial's values, trained by `train()` as a child
    run of the sweep, reporting each iteration to Tune."""
    from ray import tune

    from entropilot.platform.train import train

    trial_id = tune.get_context().get_trial_id()
    cfg = config_with(
        base,
        {
            **values,
            "checkpoint.dir": str(Path(trials_dir) / trial_id),
            "mlflow.run_name": f"{base['mlflow']['run_name'] or base['name']}-{trial_id}",
        },
    )
    latest: dict[str, Any] = {}
    last_report: list[dict] = []

    def report(iteration: int, metrics: dict, stopped: str | None) -> None:
        # Tune checks every report for the metric, and ASHA compares the latest: between evaluations that
        # is the last one measured (NaN before the first, which ASHA ignores).
        latest.update(metrics)
        row = {**latest, metric: latest.get(metric, math.nan), "iteration": iteration, "stopped_because": stopped or ""}
        if stopped is None:
            tune.report(row)  # raises SystemExit when ASHA stops this trial: train() ends the run as KILLED
        else:
            last_report.append(row)  # after train() has finished the run: a stop now cannot cut its end short

    train(cfg, echo=print, parent_run_id=parent_run_id, on_iteration=report)
    tune.report(last_report[-1])


@contextlib.contextmanager
def _classic_tune_console():
    """Tune's newer console output prints a heading and a TensorBoard hint even at verbose=0; its classic
    one prints nothing there, leaving the console to `TrialEcho`. Ray reads the switch when `fit` starts."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _absolute_store_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _trial_count(plan: SweepPlan) -> int:
    grid = math.prod(len(d.values) for d in plan.dimensions if d.kind == "grid" and plan.search != "optuna")
    return grid * plan.samples


def _bundle_text(bundle: Mapping[str, float]) -> str:
    return "/".join(f"{amount:g} {resource}" for resource, amount in bundle.items() if amount)


def _asha_line(plan: SweepPlan) -> str:
    if not plan.asha:
        return "early stopping: off (--no-asha)"
    g, rf = plan.grace_period, ASHA_REDUCTION_FACTOR
    line = (
        f"early stopping: ASHA on {plan.metric} ({plan.mode}), judged at iterations {g}, {g * rf}, {g * rf * rf}, ..."
    )
    if plan.max_iterations is not None and plan.grace_period >= plan.max_iterations:
        line += f" (no trial can stop early: trials end at iteration {plan.max_iterations})"
    return line
