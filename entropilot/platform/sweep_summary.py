"""A sweep's outcome: one row per trial (swept values -> metric, time, entropy at end, iterations, stopped
early?), printed as a table, written as CSV and markdown, and the best trial's config as a YAML file for
`entropilot train`; all of it also logged to the sweep's MLflow parent run. `TrialEcho` prints progress."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from ray.tune import Callback

from entropilot.platform.config import dump_config
from entropilot.platform.names import SWEEP_BEST_RUN_ID_TAG, SWEEP_BEST_TRIAL_TAG, SWEEP_OUTCOME_TAG, Metric
from entropilot.platform.plots import finite_or_none
from entropilot.platform.sweep_plan import SweepPlan, config_with

__all__ = ["TrialEcho", "TrialSummary", "best_trial", "collect", "finish", "format_table"]

SUMMARY_CSV = "summary.csv"
SUMMARY_MARKDOWN = "summary.md"
BEST_CONFIG = "best_config.yaml"
FINISHED, STOPPED_EARLY, FAILED = "finished", "stopped early", "failed"


@dataclass
class TrialSummary:
    trial_id: str
    values: dict[str, Any]  # the swept keys' values
    metric: float | None  # the optimized metric at the end (its last measurement); None if never measured
    success_rate: float | None
    time_s: float | None
    entropy: float | None  # policy entropy (nats) at the last iteration
    iterations: int
    outcome: str  # FINISHED, STOPPED_EARLY (by ASHA) or FAILED
    detail: str  # why it finished, or the error
    run_id: str | None  # the trial's MLflow child run

    @property
    def stopped_early(self) -> bool:
        return self.outcome == STOPPED_EARLY


@dataclass
class SweepResult:
    """What a sweep leaves: its MLflow parent run, folder, every trial, the best one and its config."""

    parent_run_id: str
    sweep_dir: Path
    trials: list[TrialSummary]  # in the order Tune created them
    best: Any = None  # the best TrialSummary, None if no trial measured the metric
    best_config: Path | None = None
    table: str = ""
    files: list[Path] = field(default_factory=list)


class TrialEcho(Callback):
    """A line per trial iteration and per trial end on the console (Tune's own tables are switched off)."""

    def __init__(self, echo: Callable[[str], None], keys: Sequence[str], metric: str):
        self.echo, self.keys, self.metric = echo, list(keys), metric

    def _label(self, trial) -> str:
        return f"{trial.trial_id} [{_values_text({k: trial.config.get(k) for k in self.keys})}]"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metric, entropy, time_s = (finite_or_none(result.get(k)) for k in (self.metric, Metric.ENTROPY, Metric.TIME_S))
        self.echo(
            f"  {self._label(trial)} iter {result.get('iteration', 0):3d} | {self.metric} {_cell(metric, '.3g')} "
            f"| entropy {_cell(entropy, '.2f')} | {_cell(time_s, '.0f')} s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result
        reason = last.get("stopped_because")
        outcome = f"finished: {reason}" if reason else f"stopped early by ASHA at iteration {last.get('iteration')}"
        self.echo(f"  {self._label(trial)} {outcome}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.echo(f"  {self._label(trial)} FAILED: {_error_text(trial.get_error())} (log: {trial.error_file})")


def collect(results, plan: SweepPlan, tracking_uri: str, parent_run_id: str) -> list[TrialSummary]:
    """One `TrialSummary` per trial of Tune's ResultGrid, matched to its MLflow child run.

    A trial ASHA stopped, or one that failed, may have been ended before its run was closed: its run is
    closed here (KILLED, FAILED) and tagged `entropilot.sweep.outcome`."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    trials = []
    for result in results:  # in the order Tune created the trials
        trial_id = Path(result.path).name
        m = result.metrics or {}
        run = next((r for r in children if r.info.run_name.endswith(f"-{trial_id}")), None)
        if result.error is not None:
            outcome, detail = FAILED, _error_text(result.error)
        elif m.get("stopped_because"):
            outcome, detail = FINISHED, m["stopped_because"]
        else:
            outcome, detail = STOPPED_EARLY, f"ASHA at iteration {m.get('iteration', 0)}"
        if run is not None:
            client.set_tag(run.info.run_id, SWEEP_OUTCOME_TAG, f"{outcome}: {detail}"[:5000])
            if run.info.status == "RUNNING" and outcome != FINISHED:
                client.set_terminated(run.info.run_id, "KILLED" if outcome == STOPPED_EARLY else "FAILED")
        trials.append(
            TrialSummary(
                trial_id=trial_id,
                values={k: (result.config or {}).get(k) for k in plan.keys},
                metric=finite_or_none(m.get(plan.metric)),
                success_rate=finite_or_none(m.get(Metric.SUCCESS_RATE)),
                time_s=finite_or_none(m.get(Metric.TIME_S)),
                entropy=finite_or_none(m.get(Metric.ENTROPY)),
                iterations=int(m.get("iteration", 0)),
                outcome=outcome,
                detail=detail,
                run_id=run.info.run_id if run else None,
            )
        )
    return trials


def best_trial(trials: Sequence[TrialSummary], mode: str) -> TrialSummary | None:
    """The trial with the best final metric (failed trials and unmeasured ones excluded); ties: the first."""
    scored = [t for t in trials if t.metric is not None and t.outcome != FAILED]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda t: sign * t.metric)  # max() keeps the first of equals


def format_table(
    trials: Sequence[TrialSummary],
    keys: Sequence[str],
    metric: str,
    best: TrialSummary | None = None,
    markdown: bool = False,
) -> str:
    """The trials as an aligned text table, or a markdown one; the best trial marked with *."""
    header, rows = _cells(trials, keys, metric, best)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def to_csv(trials: Sequence[TrialSummary], keys: Sequence[str], metric: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    extra = [metric] if metric != Metric.SUCCESS_RATE else []
    writer.writerow(
        [
            "trial",
            *keys,
            *extra,
            Metric.SUCCESS_RATE,
            Metric.TIME_S,
            Metric.ENTROPY,
            "iterations",
            "outcome",
            "detail",
            "mlflow_run_id",
        ]
    )
    for t in trials:
        writer.writerow(
            [
                t.trial_id,
                *(json.dumps(t.values[k]) for k in keys),
                *([t.metric] if extra else []),
                t.success_rate,
                t.time_s,
                t.entropy,
                t.iterations,
                t.outcome,
                t.detail,
                t.run_id,
            ]
        )
    return out.getvalue()


def finish(plan: SweepPlan, trials: list[TrialSummary], parent, echo: Callable[[str], None]) -> SweepResult:
    """Print the table; write summary.csv, summary.md and (if any trial measured the metric) best_config.yaml
    to the sweep folder and log them to the parent run, with the best trial's run id as a parent tag."""
    best = best_trial(trials, plan.mode)
    table = format_table(trials, plan.keys, plan.metric, best)
    echo(table)
    files = [plan.sweep_dir / SUMMARY_CSV, plan.sweep_dir / SUMMARY_MARKDOWN]
    files[0].write_text(to_csv(trials, plan.keys, plan.metric))
    files[1].write_text(format_table(trials, plan.keys, plan.metric, best, markdown=True) + "\n")
    best_config = None
    if best is None:
        echo(f"no trial measured {plan.metric}: no best config")
    else:
        # The base config with the best values, in a checkpoint folder of its own (not the trial's, which
        # holds that trial's checkpoints): `entropilot train` it as is.
        best_config = plan.sweep_dir / BEST_CONFIG
        dump_config(
            config_with(
                plan.base.model_dump(mode="json"),
                {**best.values, "checkpoint.dir": None, "mlflow.run_name": f"{plan.name}-best"},
            ),
            best_config,
        )
        files.append(best_config)
        parent.set_tag(SWEEP_BEST_TRIAL_TAG, best.trial_id)
        if best.run_id:
            parent.set_tag(SWEEP_BEST_RUN_ID_TAG, best.run_id)
        parent.log_metrics({f"best_{plan.metric}": best.metric}, step=0)
        echo(
            f"best: {best.trial_id} [{_values_text(best.values)}] {plan.metric} {best.metric:.3g} "
            f"(MLflow run {best.run_id}); train it with: entropilot train {best_config}"
        )
    for path in files:
        parent.log_artifact(path)
    return SweepResult(parent.run_id, plan.sweep_dir, trials, best, best_config, table, files)


def _cells(
    trials: Sequence[TrialSummary], keys: Sequence[str], metric: str, best: TrialSummary | None
) -> tuple[list[str], list[list[str]]]:
    extra = [metric] if metric != Metric.SUCCESS_RATE else []
    header = ["trial", *keys, *extra, "success", "time s", "entropy", "iters", "stopped early"]
    rows = []
    for t in trials:
        rows.append(
            [
                t.trial_id + (" *" if t is best else ""),
                *(_value_text(t.values[k]) for k in keys),
                *([_cell(t.metric, ".3g")] if extra else []),
                _cell(t.success_rate, ".2f"),
                _cell(t.time_s, ".0f"),
                _cell(t.entropy, ".2f"),
                str(t.iterations),
                "yes" if t.stopped_early else ("FAILED" if t.outcome == FAILED else "no"),
            ]
        )
    return header, rows


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return format(value, "g") if isinstance(value, float) else json.dumps(value)


def _values_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_value_text(v)}" for k, v in values.items())


def _error_text(error: BaseException | None) -> str:
    text = " ".join(str(error).split()) if error is not None else "unknown error"
    return text if len(text) <= 300 else text[:297] + "..."
