"""What `train` checks before Ray or MLflow start: that a new run's outputs can be written, and that a resume's
target, saved config and new stop criteria are sound, so a refused run changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from entropilot.inputs import InputError, usable_store, writable_folder
from entropilot.platform.checkpoints import CONFIG_FILE, STATE_FILE, find_run, iteration_folders, locate_checkpoint
from entropilot.platform.config import (
    RESUMABLE_SECTION,
    ExperimentConfig,
    MlflowConfig,
    load_config,
    parse_overrides,
    with_overrides,
)


def prepare_run(cfg: ExperimentConfig) -> ExperimentConfig:
    """Checks of a new run's outputs, before Ray or MLflow start: its checkpoint folder holds no other run's
    checkpoints and can be written, and its MLflow store can be written or answers. Returns ``cfg``."""
    root = cfg.checkpoint_dir
    where = "checkpoint.dir" if cfg.checkpoint.dir else "the run's checkpoint folder (checkpoint.dir unset)"
    if root.is_dir() and iteration_folders(root):
        raise InputError(
            where,
            str(root),
            f"already holds checkpoints of another run: continue it with `entropilot train --resume {root}`, "
            "or set a new checkpoint.dir (or name)",
        )
    writable_folder(root, where)
    usable_store(cfg.mlflow.resolve_tracking_uri(), "mlflow.tracking_uri")
    return cfg


def prepare_resume(
    target: str, overrides: Iterable[str] = (), warn: Callable[[str], None] = print
) -> tuple[ExperimentConfig, Path, dict[str, Any]]:
    """What `--resume TARGET --set stop.KEY=VALUE ...` continues: the run's saved config with the new stop criteria,
    validated as a whole, its newest intact checkpoint (``warn`` names each newer damaged one it skips), and the
    overrides as {path: value}. Everything is checked before Ray or MLflow start, so a refused resume changes
    nothing: not the checkpoints, not the MLflow run's status.

    TARGET is a checkpoint folder, a run folder or an MLflow run id (looked up at MLFLOW_TRACKING_URI, else the
    default store). Only `stop.*` may change: the run's params must keep describing what trained it."""
    checkpoint = locate_checkpoint(target, "--resume", warn=warn, tracking_uri=MlflowConfig().resolve_tracking_uri())
    cfg = load_config(checkpoint / CONFIG_FILE)
    values = parse_overrides(overrides)
    cfg = with_overrides(cfg, values, only=RESUMABLE_SECTION, source=f"--resume {target}")
    writable_folder(checkpoint.parent, "--resume")
    run_id = json.loads((checkpoint / STATE_FILE).read_text()).get("run_id")
    if run_id:
        uri = cfg.mlflow.resolve_tracking_uri()
        usable_store(uri, "mlflow.tracking_uri")
        find_run(run_id, f"the MLflow run of {checkpoint}", uri)
    return cfg, checkpoint, values
