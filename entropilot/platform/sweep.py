"""Hyperparameter sweeps (entropy thresholds first of all) on Ray Tune: one full `train()` run per trial of a
`SweepPlan`, each a child of one MLflow parent run, with ASHA early stopping; `sweep_summary` sums them up."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entropilot.platform import sweep_summary
from entropilot.platform.names import SWEEP_DIR_TAG, SWEEP_TAG
from entropilot.platform.resources import bundle_text, run_bundles, runs_that_fit
from entropilot.platform.sweep_plan import ASHA_REDUCTION_FACTOR, SweepPlan, config_with
from entropilot.platform.sweep_summary import SweepResult


def run_sweep(plan: SweepPlan, echo: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep on Ray Tune, under one MLflow parent run; then summarize (see `sweep_summary`)."""
    import ray
    from ray import tune

    from entropilot.platform.tracking import RunTracker
    from entropilot.platform.train import init_ray

    init_ray(plan.base)
    bundles = run_bundles(plan.base)
    fit = runs_that_fit(bundles, ray.cluster_resources())
    concurrency = min(plan.max_concurrent or fit, fit)
    trial_base = plan.base.model_copy(deep=True)
    # Trials run in other processes (and another working directory): give them the store as an absolute URI.
    trial_base.mlflow.tracking_uri = _absolute_store_uri(plan.base.mlflow.resolve_tracking_uri())
    parent_cfg = trial_base.model_copy(deep=True)
    parent_cfg.mlflow.run_name = plan.name

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    with RunTracker.start(parent_cfg, extra_params=plan.search_params()) as parent:
        parent.set_tag(SWEEP_TAG, "parent")
        parent.set_tag(SWEEP_DIR_TAG, str(plan.sweep_dir))
        echo(
            f"sweep {plan.name}: {plan.search} search over {', '.join(plan.keys)}; {_trial_count(plan)} trial(s), "
            f"{concurrency} at a time (each takes {' + '.join(bundle_text(b) for b in bundles)}); MLflow parent "
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
