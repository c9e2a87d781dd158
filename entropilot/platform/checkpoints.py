"""Finding a training run's checkpoint from what a person gives (`train --resume`, `export`): a checkpoint folder, a
run folder or an MLflow run id; telling an intact checkpoint from a damaged one without Ray; and looking a run up in
MLflow without creating a store where there is none."""

from __future__ import annotations

import json
import pickletools
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from entropilot.inputs import InputError, missing_store
from entropilot.platform.names import CHECKPOINT_TAG

STATE_FILE = "entropilot_state.json"  # written last by a save: a checkpoint without it is incomplete
CONFIG_FILE = "config.yaml"
BEST_CHECKPOINT = "best"  # with checkpoint.keep_best: the checkpoint of the best evaluation, beside the iter_* ones
RUN_ID = re.compile(r"[0-9a-f]{32}")
# What RLlib 2.60's Algorithm.save_to_path writes at the top of every checkpoint (checked: Ray 2.60).
RLLIB_FILES = ("rllib_checkpoint.json", "algorithm_state.pkl", "learner_group")

Warn = Callable[[str], None]


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be restored (a file missing, unreadable JSON, a pickle cut short), or None if it looks
    whole. Reads the files' structure only: nothing is unpickled, nothing imported."""
    state = folder / STATE_FILE
    if not state.is_file():
        return f"no {STATE_FILE} (the save did not finish)"
    try:
        data = json.loads(state.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{STATE_FILE} is unreadable ({err})"
    if not isinstance(data, dict) or not isinstance(data.get("iteration"), int) or "history" not in data:
        return f"{STATE_FILE} lacks its iteration and history"
    for name in (CONFIG_FILE, *RLLIB_FILES):
        if not (folder / name).exists():
            return f"no {name} (not a complete checkpoint)"
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".pkl":
            try:
                for _ in pickletools.genops(path.read_bytes()):
                    pass
            except Exception as err:  # noqa: BLE001 - genops raises ValueError, or others on garbage bytes
                return f"{path.relative_to(folder)} is truncated or corrupt ({err})"
        elif path.suffix == ".json" and path.name != STATE_FILE:
            try:
                json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                return f"{path.relative_to(folder)} is unreadable ({err})"
    return None


def iteration_folders(run_folder: Path) -> list[Path]:
    """The `iter_*` checkpoint folders of a run folder, oldest first."""
    return sorted(p for p in run_folder.glob("iter_*") if p.is_dir())


def prune_checkpoints(run_folder: Path, keep: int) -> list[Path]:
    """Delete the `iter_*` checkpoints older than the ``keep`` newest intact ones (`checkpoint.keep_last`) and return
    them. Damaged ones do not count towards ``keep`` and newer ones are never deleted, so resuming still finds ``keep``
    intact checkpoints; the best checkpoint is not an `iter_*` folder and stays."""
    folders = iteration_folders(run_folder)
    intact = [folder for folder in reversed(folders) if checkpoint_problem(folder) is None]
    if len(intact) <= keep:
        return []
    oldest_kept = intact[keep - 1]
    doomed = [folder for folder in folders if folder.name < oldest_kept.name]
    for folder in doomed:
        shutil.rmtree(folder)
    return doomed


def newest_intact(run_folder: Path, name: str, warn: Warn) -> Path:
    """The newest checkpoint of `run_folder` that is intact, warning about each newer damaged one it skips."""
    candidates = iteration_folders(run_folder)
    if not candidates:
        raise InputError(
            name, str(run_folder), f"holds no checkpoint (iter_*/{STATE_FILE}); give a run folder of `entropilot train`"
        )
    damaged = []
    for candidate in reversed(candidates):
        problem = checkpoint_problem(candidate)
        if problem is None:
            for folder, why in damaged:
                warn(f"WARNING: checkpoint {folder} is damaged ({why}); using the newest intact one, {candidate}")
            return candidate
        damaged.append((candidate, problem))
    raise InputError(
        name, str(run_folder), "every checkpoint is damaged: " + "; ".join(f"{f.name}: {w}" for f, w in damaged)
    )


def locate_checkpoint(
    target: str, name: str, *, warn: Warn, tracking_uri: str | None = None, best: bool = False
) -> Path:
    """The checkpoint `target` names: a checkpoint folder (refused if damaged), a run folder (its newest intact
    checkpoint; with ``best``, its best one if training kept an intact one, `checkpoint.keep_best`) or an MLflow run
    id (the folder its `entropilot.checkpoint_dir` tag names, on this machine)."""
    path = Path(target)
    if path.is_dir():
        if not ((path / STATE_FILE).exists() or path.name.startswith("iter_") or path.name == BEST_CHECKPOINT):
            kept = path / BEST_CHECKPOINT
            if best and kept.is_dir():
                problem = checkpoint_problem(kept)
                if problem is None:
                    return kept
                warn(f"WARNING: the best checkpoint {kept} is damaged ({problem}); using the newest intact one")
            return newest_intact(path, name, warn)
        problem = checkpoint_problem(path)
        if problem:
            raise InputError(
                name,
                target,
                f"damaged checkpoint: {problem}; give its run folder {path.parent} for the newest intact one",
            )
        return path
    if path.exists():
        raise InputError(name, target, "is a file; give a checkpoint folder (iter_*), a run folder or an MLflow run id")
    if not RUN_ID.fullmatch(target):
        raise InputError(name, target, "no such folder, and not an MLflow run id (32 hex digits)")
    folder = run_checkpoint_dir(find_run(target, name, tracking_uri), name)
    if not Path(folder).is_dir():
        raise InputError(name, target, f"the run's checkpoint folder {folder} is not on this machine")
    return locate_checkpoint(folder, name, warn=warn, best=best)


def find_run(run_id: str, name: str, tracking_uri: str | None = None):
    """The MLflow run `run_id` at `tracking_uri` (default: MLflow's current one), never creating a local store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from entropilot.platform.tracking import fail_fast_http

    uri = tracking_uri or mlflow.get_tracking_uri()
    problem = missing_store(uri)
    if problem:
        raise InputError(name, run_id, problem)
    with fail_fast_http():
        try:
            return mlflow.MlflowClient(uri).get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise InputError(name, run_id, f"no such folder, and no such MLflow run at {uri}") from None
            raise InputError(name, run_id, f"cannot ask MLflow at {uri} ({str(err).strip().splitlines()[0]})") from None


def run_checkpoint_dir(run, name: str) -> str:
    folder = run.data.tags.get(CHECKPOINT_TAG)
    if not folder:
        raise InputError(name, run.info.run_id, f"that MLflow run has no {CHECKPOINT_TAG} tag (not a training run)")
    return folder
