"""What a person sees of a training on its MLflow run page: the link to it, the run's description (how to tune entropy
live), the tags a run starts with, and the metrics laid out first on its Model metrics tab."""

from __future__ import annotations

from collections.abc import Mapping

from entropilot.platform.config import ControlConfig, ExperimentConfig, allowed_range
from entropilot.platform.live_tuning import (
    config_settings,
    initial_tags,
    live_tag,
    tag_names,
)
from entropilot.platform.names import LIVE_ERROR_TAG, Metric

DESCRIPTION_TAG = "mlflow.note.content"  # the run's Description on its Overview tab (markdown)
# The UI's `mlflow ui` / `mlflow server` address when the tracking URI is not a server (a sqlite file).
LOCAL_UI = "http://127.0.0.1:5000"
# The Model metrics tab shows one section per metric-name prefix, alphabetically, and the metrics without a prefix
# last (MLflow 3.17.2's UI): under `entropy/` these come first, so entropy and its target are the first charts.
FIRST_CHARTS = {
    Metric.ENTROPY: "entropy/measured",
    Metric.ENTROPY_TARGET: "entropy/target",
    Metric.ENTROPY_COEFF: "entropy/coefficient",
    Metric.SIGMA_TARGET: "entropy/sigma",
}


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """The run's page in the MLflow UI, in its model-training view (`tab`: "", "model-metrics", "artifacts")."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{'/' + tab if tab else ''}?workflowType=machine_learning"


def where_to_look(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One console line: where the run's page is (and, for a sqlite store, the command that serves it)."""
    url = run_page_url(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow run {run_id}: {url}"
    return f"MLflow run {run_id} in {tracking_uri}: run `mlflow ui --backend-store-uri {tracking_uri}`, open {url}"


def first_charts(metrics: Mapping[str, float]) -> dict[str, float]:
    """An iteration's entropy, target and coefficient again under the names MLflow lays out first."""
    return {FIRST_CHARTS[key]: value for key, value in metrics.items() if key in FIRST_CHARTS}


def start_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """The tags a new run starts with: the live settings, each with the config's value, and the description."""
    tags = initial_tags(cfg)
    return {**tags, DESCRIPTION_TAG: description(cfg)} if tags else {}


def description(cfg: ExperimentConfig) -> str:
    """The run's description: what can be tuned live in its control mode, what each setting does, what it accepts, how
    fast it acts."""
    control = cfg.entropy.control
    settings = config_settings(cfg)  # the fields of the run's mode
    rows = []
    for field, text in settings.items():
        info = ControlConfig.model_fields[field]
        shortcuts = "".join(f" or `{name}`" for name in tag_names(field)[1:])
        accepted = allowed_range(["entropy", "control", field]).replace("value", field)
        rows.append(f"| `{field}`{shortcuts} | `{text}` | {info.description}{'; ' + accepted if accepted else ''} |")
    plots = cfg.checkpoint.interval
    redrawn = f"redrawn every {plots} iterations and at the end" if plots else "drawn at the end"
    # One line per paragraph: the UI's markdown keeps line breaks.
    return "\n".join(
        [
            f"**Tune entropy while this run trains:** edit a tag `{live_tag('FIELD')}` under *Tags* (the pencil); "
            "the training applies it before its next iteration. In this run's `entropy.control.mode` "
            f"({control.mode}) the settings below are live; the others of the section mean nothing to it.",
            "",
            "Each tag holds the setting in force, for the rest of the run and a resume; delete one to go back to the "
            f"config's value. A refused value changes nothing, and the tag `{LIVE_ERROR_TAG}` says which field, the "
            "value typed and what would be accepted (the training's console has the whole rule).",
            "",
            "| FIELD | config value | what it does; accepted |",
            "|---|---|---|",
            *rows,
            "",
            f"**How fast.** {_how_fast(control)}",
            "",
            "**Watch.** *Model metrics*: the section **entropy** (coefficient, measured, and the target or sigma the "
            "learners follow) comes first, **live** holds the settings in force per iteration. *Artifacts*: "
            "`plots/entropy.png` (entropy against the target, coefficient on the right axis) and `plots/learning.png`, "
            f"{redrawn}.",
        ]
    )


def _how_fast(control: ControlConfig) -> str:
    if control.mode == "fixed":
        return "The coefficient is the new one from the next iteration; entropy moves only as fast as it pushes it."
    if control.mode == "sigma_schedule":
        return (
            "The policy's std follows the new schedule from the next iteration (its env steps count from the run's "
            "start: points already passed are not replayed)."
        )
    return (
        "Each iteration the coefficient moves by `gain` x the entropy error plus `damping` x its change, at most "
        f"`max_step` ({control.max_step:g}) per iteration, within [`coef_min`, `coef_max`] = "
        f"[{control.resolved_coef_min:g}, {control.coef_max:g}]; entropy moves only as fast as the coefficient pushes "
        "it. With the default gains that is slow (on hover, a minimum raised 0.35 nats above the entropy lifted the "
        "coefficient ~0.0025 per iteration and not the entropy within 20 iterations; ten times `gain` and `damping`, "
        "with `coef_max` 0.2, lifted it 0.3 nats). For a faster response raise `gain` and `damping` together, and "
        "`coef_max` (or lower `coef_min`, track mode) for room. Measured: docs/mlflow-ui.md in entropilot."
    )
