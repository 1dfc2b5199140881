"""Checkpoints: one file, written atomically, loaded with ``weights_only=True``.

Contents (all plain tensors, numbers, strings, lists and dicts, so a file from elsewhere
cannot run code when loaded): Pyro parameters as *unconstrained* tensors (constraints are
re-derived from the programs on load), module state dicts (buffers such as EMA
codebooks), the optimiser state, every RNG state (torch, numpy, python, data shuffling,
the data transform), the objective's and the data transform's state, epoch / step
counters, the loss history and the run configuration.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["BASELINE_AVG_PREFIX", "CheckpointError", "save_checkpoint", "load_checkpoint", "get_rng_state",
           "set_rng_state", "restore_params", "FORMAT", "MISMATCH_FIX", "file_fingerprint"]

FORMAT = "lvm_pyro.checkpoint/1"

# Pyro's TraceGraph_ELBO keeps the decaying-average baseline of a site in the param store
# under this prefix (pyro/infer/tracegraph_elbo.py): running state whose shape follows the
# minibatch, restored by value (any shape) rather than copied into a parameter.
BASELINE_AVG_PREFIX = "__baseline_avg_downstream_cost_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


def get_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, numpy, python) as weights_only-safe objects."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.as_tensor(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): what a fitted second stage (a code prior) records
    of the checkpoint it was fitted to, so that copying a run directory keeps it current
    and retraining the run makes it stale, whatever the files' times say.

    Raises:
        FileNotFoundError: no such file.
    """
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder,
    fsync, rename): a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, unreadable / corrupt, or not an lvm_pyro
            checkpoint; the message names the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; train first (lvm-pyro fit --out DIR) "
                              "or point to an existing run directory")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not loadable safely ({type(e).__name__}: {e}); "
            "delete it and retrain, or restore it from a copy") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lvm_pyro checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                              f"expected {FORMAT!r})")
    return payload


#: how to fix a checkpoint that does not match the programs it is loaded into
MISMATCH_FIX = ("build the model from the configuration that wrote the checkpoint (the run's "
                "config.json, unchanged), or start the run over (lvm-pyro fit --force, or "
                "another --out directory)")


def _shape(v: Any) -> tuple:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else ()


def _mismatch(saved: dict[str, Any], here: dict[str, Any], *, limit: int = 3) -> str:
    """The differences between two name -> tensor dicts in one line (``""`` if none): the
    first ``limit`` shape mismatches (checkpoint vs here), then missing / unexpected names,
    each list cut at ``limit`` with the number left out."""

    def cut(items: list[str]) -> str:
        more = f", and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    parts = []
    shapes = [f"{k} {_shape(v)} in the checkpoint vs {_shape(here[k])} here"
              for k, v in saved.items() if k in here and _shape(v) != _shape(here[k])]
    if shapes:
        parts.append("shapes differ: " + cut(shapes))
    missing = sorted(set(here) - set(saved))
    if missing:
        parts.append("missing from the checkpoint: " + cut(missing))
    unexpected = sorted(set(saved) - set(here))
    if unexpected:
        parts.append("only in the checkpoint: " + cut(unexpected))
    return "; ".join(parts)


def restore_params(payload: dict[str, Any], modules: dict[str, torch.nn.Module]) -> None:
    """Load module state dicts and the Pyro param store's unconstrained values from a
    checkpoint. The programs must have run once so that every parameter exists (with the
    constraint its program declares). Nothing is changed when any name or shape differs.

    Raises:
        CheckpointError: a module, parameter name or shape does not match (e.g. a
            checkpoint of a run with another ``z_dim``); one line naming the first few
            mismatched names with both shapes, and the fix (:data:`MISMATCH_FIX`).
    """
    import pyro

    for k, m in modules.items():
        if k not in payload["modules"]:
            raise CheckpointError(f"checkpoint has no state for module '{k}'; {MISMATCH_FIX}")
        problem = _mismatch(payload["modules"][k], m.state_dict())
        if problem:
            raise CheckpointError(f"checkpoint does not match the {k}'s architecture "
                                  f"({type(m).__name__}): {problem}; {MISMATCH_FIX}")
    ps = dict(pyro.get_param_store().named_parameters())
    saved = payload["params"]
    problem = _mismatch({k: v for k, v in saved.items() if not k.startswith(BASELINE_AVG_PREFIX)},
                        {k: v for k, v in ps.items() if not k.startswith(BASELINE_AVG_PREFIX)})
    if problem:
        raise CheckpointError(f"checkpoint parameters do not match the programs': {problem}; "
                              f"{MISMATCH_FIX}")
    for k, m in modules.items():
        try:
            m.load_state_dict(payload["modules"][k])
        except RuntimeError as e:  # names and shapes agree: anything else, on one line
            detail = " ".join(str(e).split())
            raise CheckpointError(f"checkpoint does not match the {k}'s architecture: "
                                  f"{detail}; {MISMATCH_FIX}") from e
    store = pyro.get_param_store()
    with torch.no_grad():
        for k, v in saved.items():
            if k.startswith(BASELINE_AVG_PREFIX):
                store[k] = v.detach().clone()
                continue
            ps[k].copy_(v)
