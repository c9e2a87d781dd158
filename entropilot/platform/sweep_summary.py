"""A sweep's outcome: one row per trial (swept values -> metric, time, entropy at end, iterations, stopped
early?, and what entropy-aware init kept: its entropy, draws, whether it cleared the threshold), printed as a
table, written as CSV and markdown, with a second table of the init per setting over seeds (acceptance rate, mean
kept entropy), and the best trial's config as a YAML file for `entropilot train`; all of it also logged to the
sweep's MLflow parent run. `TrialEcho` prints progress."""

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
from entropilot.platform.names import (
    INIT_CHOSEN_ENTROPY,
    INIT_CLEARED,
    INIT_DRAWS,
    SWEEP_BEST_RUN_ID_TAG,
    SWEEP_BEST_TRIAL_TAG,
    SWEEP_OUTCOME_TAG,
    Metric,
)
from entropilot.platform.plots import finite_or_none
from entropilot.platform.sweep_plan import SweepPlan, config_with

__all__ = ["InitGroup", "TrialEcho", "TrialSummary", "best_trial", "collect", "finish", "format_table", "init_groups"]

SUMMARY_CSV = "summary.csv"
SUMMARY_MARKDOWN = "summary.md"
BEST_CONFIG = "best_config.yaml"
FINISHED, STOPPED_EARLY, FAILED = "finished", "stopped early", "failed"
# Swept keys that only repeat a setting with other draws: the init table groups trials over them.
SEED_KEYS = ("seed", "model.weight_seed")


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
    # Entropy-aware init, from the child run's metrics (None where the init did not run or logged nothing):
    init_entropy: float | None = None  # the kept draw's entropy (nats), `entropy_init/chosen_entropy`
    init_draws: int | None = None  # draws made, `entropy_init/draws`
    init_cleared: bool | None = None  # whether the kept draw cleared the threshold, `entropy_init/cleared`

    @property
    def stopped_early(self) -> bool:
        return self.outcome == STOPPED_EARLY


@dataclass
class InitGroup:
    """Entropy-aware init over the trials of one setting (the swept values other than seeds)."""

    values: dict[str, Any]  # the swept non-seed keys' values
    trials: int  # trials of this setting whose init logged its outcome
    cleared: int  # of them, those whose kept draw cleared the threshold
    mean_draws: float
    mean_entropy: float  # the kept draws' entropy (nats)
    min_entropy: float
    max_entropy: float

    @property
    def acceptance_rate(self) -> float:
        return self.cleared / self.trials


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
    init_groups: list[InitGroup] = field(default_factory=list)
    init_table: str = ""


class TrialEcho(Callback):
    """A line per trial iteration and per trial end on the console (Tune's own tables are switched off)."""

    def __init__(self, echo: Callable[[str], None], keys: Sequence[str], metric: str):
        self.echo, self.keys, self.metric = echo, list(keys), metric

    def _label(self, trial) -> str:
        return f"{trial.trial_id} [{_values_text({k: trial.config.get(k) for k in self.keys})}]"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metric, entropy, time_s = (finite_or_none(result.get(k)) for k in (self.metric, Metric.ENTROPY, Metric.TIME_S))
        shown = "" if self.metric == Metric.ENTROPY else f" | {self.metric} {_cell(metric, '.3g')}"
        self.echo(
            f"  {self._label(trial)} iter {result.get('iteration', 0):3d}{shown} "
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
        init = run.data.metrics if run is not None else {}
        cleared = finite_or_none(init.get(INIT_CLEARED))
        draws = finite_or_none(init.get(INIT_DRAWS))
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
                init_entropy=finite_or_none(init.get(INIT_CHOSEN_ENTROPY)),
                init_draws=None if draws is None else int(draws),
                init_cleared=None if cleared is None else cleared > 0.5,
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
    return _table(header, rows, markdown)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def init_groups(trials: Sequence[TrialSummary], keys: Sequence[str]) -> list[InitGroup]:
    """Entropy-aware init per setting: the trials grouped by their swept values other than seeds (`SEED_KEYS`),
    in the order settings first appear; trials whose init logged no outcome (failed, or init off) left out."""
    setting_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.init_entropy is not None and t.init_cleared is not None:
            groups.setdefault(json.dumps([t.values[k] for k in setting_keys]), []).append(t)
    result = []
    for members in groups.values():
        entropies = [t.init_entropy for t in members]
        result.append(
            InitGroup(
                values={k: members[0].values[k] for k in setting_keys},
                trials=len(members),
                cleared=sum(bool(t.init_cleared) for t in members),
                mean_draws=sum(t.init_draws or 0 for t in members) / len(members),
                mean_entropy=sum(entropies) / len(entropies),
                min_entropy=min(entropies),
                max_entropy=max(entropies),
            )
        )
    return result


def format_init_table(groups: Sequence[InitGroup], markdown: bool = False) -> str:
    """The init per setting: trials, how many cleared the threshold (the acceptance rate), mean draws made and
    the kept draws' entropy (mean [min, max]); text or markdown, like `format_table`."""
    keys = list(groups[0].values) if groups else []
    header = [*keys, "trials", "cleared", "acceptance", "mean draws", "kept init entropy: mean [min, max]"]
    rows = [
        [
            *(_value_text(g.values[k]) for k in keys),
            str(g.trials),
            f"{g.cleared}/{g.trials}",
            f"{g.acceptance_rate:.0%}",
            f"{g.mean_draws:.1f}",
            f"{g.mean_entropy:.2f} [{g.min_entropy:.2f}, {g.max_entropy:.2f}]",
        ]
        for g in groups
    ]
    return _table(header, rows, markdown)


def to_csv(trials: Sequence[TrialSummary], keys: Sequence[str], metric: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    extra = _metric_column(metric)
    writer.writerow(
        [
            "trial",
            *keys,
            *extra,
            Metric.SUCCESS_RATE,
            Metric.TIME_S,
            Metric.ENTROPY,
            "iterations",
            INIT_CHOSEN_ENTROPY,
            INIT_DRAWS,
            INIT_CLEARED,
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
                t.init_entropy,
                t.init_draws,
                None if t.init_cleared is None else int(t.init_cleared),
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
    groups = init_groups(trials, plan.keys)
    # Worth a table of its own where settings repeat over seeds (a grid over model.weight_seed, say).
    init_table = format_init_table(groups) if groups and len(groups) < sum(g.trials for g in groups) else ""
    markdown = format_table(trials, plan.keys, plan.metric, best, markdown=True) + "\n"
    if init_table:
        seeds = [k for k in plan.keys if k in SEED_KEYS]
        echo(f"entropy-aware init per setting, over {', '.join(seeds) if seeds else 'its repeated trials'}:")
        echo(init_table)
        markdown += "\nEntropy-aware init per setting:\n\n" + format_init_table(groups, markdown=True) + "\n"
    files = [plan.sweep_dir / SUMMARY_CSV, plan.sweep_dir / SUMMARY_MARKDOWN]
    files[0].write_text(to_csv(trials, plan.keys, plan.metric))
    files[1].write_text(markdown)
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
    return SweepResult(
        parent.run_id, plan.sweep_dir, trials, best, best_config, table, files, groups if init_table else [], init_table
    )


def _cells(
    trials: Sequence[TrialSummary], keys: Sequence[str], metric: str, best: TrialSummary | None
) -> tuple[list[str], list[list[str]]]:
    extra = _metric_column(metric)
    init = any(t.init_entropy is not None for t in trials)
    header = ["trial", *keys, *extra, "success", "time s", "entropy", "iters"]
    header += ["init entropy", "init draws", "init cleared"] if init else []
    header.append("stopped early")
    rows = []
    for t in trials:
        row = [
            t.trial_id + (" *" if t is best else ""),
            *(_value_text(t.values[k]) for k in keys),
            *([_cell(t.metric, ".3g")] if extra else []),
            _cell(t.success_rate, ".2f"),
            _cell(t.time_s, ".0f"),
            _cell(t.entropy, ".2f"),
            str(t.iterations),
        ]
        if init:
            row += [
                _cell(t.init_entropy, ".2f"),
                "-" if t.init_draws is None else str(t.init_draws),
                "-" if t.init_cleared is None else ("yes" if t.init_cleared else "no"),
            ]
        row.append("yes" if t.stopped_early else ("FAILED" if t.outcome == FAILED else "no"))
        rows.append(row)
    return header, rows


def _metric_column(metric: str) -> list[str]:
    """The optimized metric as a column of its own, unless it is one the table always has."""
    return [] if metric in (Metric.SUCCESS_RATE, Metric.TIME_S, Metric.ENTROPY) else [metric]


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
