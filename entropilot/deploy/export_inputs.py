"""What an export reads and writes, checked before torch is loaded: the checkpoint a SOURCE names (a checkpoint or run
folder, or an MLflow run id) and the output path. Light: no torch or ray."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from entropilot.deploy.contract import is_sealed_export
from entropilot.errors import EntropilotError
from entropilot.inputs import replaceable_file


class ExportError(EntropilotError, RuntimeError):
    """The policy could not be exported, or the exported file does not act like the trained policy."""


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Where an export may write, checked before the work: a writable path, and an existing file only if it is an
    entropilot export (its seal holds) or ``force``."""
    return replaceable_file(path, "--output", ours=is_sealed_export, what="an entropilot export", force=force)


def resolve_checkpoint(source: str | os.PathLike, stack: contextlib.ExitStack | None = None) -> Path:
    """A checkpoint folder, a run folder (its newest intact ``iter_*``, warning about newer damaged ones), or an
    MLflow run id (at MLflow's current tracking URI; never creating a store).

    For a run id whose checkpoint folder is not on this machine, the run's ``checkpoint`` artifacts are
    downloaded into a temporary folder that lives as long as ``stack``.
    """
    from entropilot.platform.checkpoints import RUN_ID, find_run, locate_checkpoint, run_checkpoint_dir

    text, name = str(source), "SOURCE"
    warn = logging.getLogger(__name__).warning
    if Path(text).exists() or not RUN_ID.fullmatch(text):
        return locate_checkpoint(text, name, warn=warn).resolve()
    run = find_run(text, name)
    folder = run_checkpoint_dir(run, name)
    if Path(folder).is_dir():
        return locate_checkpoint(folder, name, warn=warn).resolve()
    if stack is None:
        raise ExportError(f"MLflow run {source}: checkpoint folder {folder!r} is not on this machine")
    import mlflow
    from mlflow.exceptions import MlflowException

    target = stack.enter_context(tempfile.TemporaryDirectory(prefix="entropilot-checkpoint-"))
    try:
        local = mlflow.MlflowClient().download_artifacts(run.info.run_id, "checkpoint", target)
    except MlflowException as err:
        raise ExportError(
            f"MLflow run {source}: no local checkpoint ({folder!r}) and no 'checkpoint' artifact ({err})"
        ) from None
    return locate_checkpoint(local, name, warn=warn).resolve()
