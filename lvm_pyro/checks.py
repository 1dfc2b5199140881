"""Per-call data checks of models and guides, and the explicit switch that lets a caller
who has validated a whole data set once skip them on every minibatch of it.

A program (model or guide) that checks its data on every call (support, shape, finite
values) follows this protocol:

* it exposes ``check_data(x)``, which runs exactly those checks on a whole data set
  ``x`` (N, *event_shape) and raises the same ``ValueError`` a call would raise;
* its ``forward`` runs them only while :func:`data_checks_enabled` is true.

Checks are on by default, so a user calling a model or guide directly always gets them.
:class:`~lvm_pyro.training.Trainer` validates the whole (transformed) training set once
per epoch with :func:`validate_data` and runs that epoch's steps inside
:func:`skip_data_checks` -- only when every program exposes ``check_data``; a program
without it keeps its per-call checks. The minibatches are rows of the validated set, so
every guarantee holds, without a pass over each minibatch and a host synchronisation per
check per step.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import torch

__all__ = ["data_checks_enabled", "skip_data_checks", "validate_data", "all_finite"]

_state = threading.local()


def data_checks_enabled() -> bool:
    """Whether models and guides should check the data of this call (``True`` unless
    inside :func:`skip_data_checks` on this thread)."""
    return getattr(_state, "skipping", 0) == 0


@contextlib.contextmanager
def skip_data_checks() -> Iterator[None]:
    """Switch the per-call data checks of our models and guides off on this thread for
    the ``with`` block (nestable). Use it only for data already validated with
    :func:`validate_data` (or the programs' ``check_data``): inside it, out-of-support or
    non-finite data are NOT refused and give wrong numbers (NaN losses)."""
    _state.skipping = getattr(_state, "skipping", 0) + 1
    try:
        yield
    finally:
        _state.skipping -= 1


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite (no NaN, no +-inf): one reduction pass
    (``torch.aminmax``, which propagates NaN) and no full-size temporary, instead of
    ``torch.isfinite(x).all()``'s boolean copy of ``x``. Integer and boolean tensors are
    finite; an empty tensor is."""
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return True
    try:
        lo, hi = torch.aminmax(x)
    except (RuntimeError, NotImplementedError):  # a dtype / device without aminmax
        return bool(torch.isfinite(x).all())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def validate_data(programs: Sequence[Any], x: torch.Tensor, *,
                  max_elements: int = 1 << 18) -> bool:
    """Run ``check_data`` of every program that has one on the whole data set ``x``
    (N, *event_shape), in row chunks of at most ``max_elements`` entries (at least one
    row), so that the checks' temporaries stay small and in cache (the default, 2**18
    entries, is 1 MiB of float32: about 4x faster than one pass over 60000 images).

    Returns:
        ``True`` when every program exposes ``check_data`` (so their per-call checks may
        be skipped for rows of ``x`` under :func:`skip_data_checks`), else ``False`` (a
        program without it checks per call, or not at all; keep the checks on).

    Raises:
        ValueError: the data fail a program's check (its own message, about the chunk
            holding the first bad row); ``max_elements`` < 1.
    """
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    checks = [getattr(program, "check_data", None) for program in programs]
    row = max(1, x[0].numel()) if x.dim() > 0 and len(x) else 1
    rows = max(1, max_elements // row)
    chunks = x.split(rows) if x.dim() > 0 and len(x) else (x,)
    for check in checks:
        if callable(check):
            for chunk in chunks:
                check(chunk)
    return all(callable(check) for check in checks)
