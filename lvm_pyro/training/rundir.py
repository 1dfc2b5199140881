"""Run-directory I/O: which files make a run, JSON read / written atomically, and the
rule that a run is never overwritten by accident.

A run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.json``, the pictures
of ``fit`` and, later, ``evaluation.json``, ``diagnostics.json`` and the files of
``fit-prior`` and ``sample``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError

__all__ = ["CONFIG_FILE", "CHECKPOINT_FILE", "METRICS_FILE", "RUN_MARKERS", "RUN_ARTIFACTS",
           "SAMPLE_DIR",
           "RunExistsError", "RunFileError", "read_json", "write_json", "holds_run",
           "prepare_run_dir", "ensure_directory"]

CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE = "config.json", "checkpoint.pt", "metrics.json"
#: a directory holding any of these holds a run
RUN_MARKERS = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)
#: the folder ``lvm-pyro sample`` writes its pictures into (``RUN_DIR/sample/``)
SAMPLE_DIR = "sample"
#: every file (glob patterns) a run's commands write; replaced together. The pictures of
#: ``sample`` show the old model, so they go too (the folder when nothing else is in it)
RUN_ARTIFACTS = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, "evaluation.json",
                 "diagnostics.json", "diag_*.png", "samples.png", "reconstructions.png",
                 "loss_curve.png", "prior_checkpoint.pt", "prior_metrics.json",
                 "prior_samples.png", "prior_vs_reconstructions.png", f"{SAMPLE_DIR}/*.png",
                 f"{SAMPLE_DIR}/rejection.json", "disentanglement.json", "classifier_*.pt",
                 "classifier_metrics.json", "tensorboard")


class RunExistsError(CheckpointError):
    """A run directory already holds a run and neither resuming nor overwriting it was
    asked for."""


class RunFileError(CheckpointError):
    """A run directory's JSON file is unreadable (truncated, corrupt); the message names
    the file."""


def read_json(path: str | Path) -> Any:
    """Parse a run's JSON file.

    Raises:
        RunFileError: the file cannot be read or is not valid JSON (e.g. truncated by a
            crash); the message names the file, the position and the fix.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column "
                           f"{e.colno}): the file is truncated or corrupt; restore it or "
                           "retrain the run into a new directory") from e
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(f"cannot read {path}: {e}") from e


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def holds_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds any of :data:`RUN_MARKERS`."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in RUN_MARKERS)


def ensure_directory(path: str | Path, what: str = "run directory") -> Path:
    """Create the folder ``path`` (and its parents) unless it exists.

    Raises:
        RunFileError: ``path`` (or a parent) exists and is not a folder.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise RunFileError(f"the {what} {path} cannot be created: {p} is a file, not a "
                               "folder; choose another path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool,
                    clear: bool = True) -> Path:
    """Make ``run_dir`` ready for training.

    A directory that holds a run is used only to resume it (``resume=True``) or, with
    ``overwrite=True``, after every file of the old run (:data:`RUN_ARTIFACTS`) is
    removed, so that nothing of it (e.g. a ``diagnostics.json`` or the pictures in
    ``sample/``, describing another model) is left behind. Other files in the directory
    (and in ``sample/``) are kept; ``sample/`` itself goes when it is left empty. With ``clear=False`` only the
    check runs (nothing is removed or created), so a caller can fail early and clear
    once the new run is known to be buildable.

    Raises:
        RunExistsError: the directory holds a run and neither flag is set.
        RunFileError: the path (or a parent) is a file.
        ValueError: both flags are set.
    """
    run_dir = Path(run_dir)
    for p in (run_dir, *run_dir.parents):
        if p.exists() and not p.is_dir():
            raise RunFileError(f"the run directory {run_dir} cannot be used: {p} is a file, "
                               "not a folder; choose another --out")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run "
                         "in the directory, overwrite replaces it")
    if holds_run(run_dir) and not resume:
        if not overwrite:
            found = [n for n in RUN_MARKERS if (run_dir / n).exists()]
            raise RunExistsError(f"{run_dir} already holds a run ({', '.join(found)}); resume "
                                 "it, overwrite it, or choose another directory")
        if not clear:
            return run_dir
        for pattern in RUN_ARTIFACTS:
            for p in run_dir.glob(pattern):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        sample_dir = run_dir / SAMPLE_DIR
        if sample_dir.is_dir() and not any(sample_dir.iterdir()):
            sample_dir.rmdir()
    if clear:
        ensure_directory(run_dir)
    return run_dir
