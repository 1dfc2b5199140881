"""Reusing a guide's particle-invariant network outputs across the particle chunks of one
evaluation.

An importance-sampled evaluation (:func:`lvm_pyro.inference.iter_log_weights`) runs the
guide once per chunk of particles on the same observations x. An amortised guide's
encoder output q(z | x) does not depend on the particles, so recomputing it per chunk
is wasted work: at 200 images and about 26 particles per chunk the encoder of the IWAE
paper's one-layer VAE is about 3% of each chunk's time on a CPU.

:func:`reuse_within` activates a memo (a dict owned by the caller, kept across the
chunks) on this thread; :func:`memoized` returns a stored output when it is active,
gradients are off, and the input is the very same tensor, unmodified (same ``_version``),
through a module whose parameters are unmodified (same ``_version`` each). Anything else
computes afresh. Outside :func:`reuse_within` (training, any call with gradients)
nothing is stored. A guide of a user's own opts in by calling :func:`memoized` on its
encoder (as :class:`lvm_pyro.guides.AmortizedNormalGuide` does).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

__all__ = ["reuse_within", "memoized"]

_state = threading.local()


@contextlib.contextmanager
def reuse_within(memo: dict) -> Iterator[dict]:
    """Inside the block (this thread), :func:`memoized` reads and fills ``memo`` (a dict
    the caller keeps between blocks: e.g. one per evaluation, across its particle
    chunks). Nestable; the innermost memo is used."""
    previous = getattr(_state, "memo", None)
    _state.memo = memo
    try:
        yield memo
    finally:
        _state.memo = previous


def _key(module: nn.Module, x: torch.Tensor) -> tuple:
    return (id(module), id(x), x._version, tuple(p._version for p in module.parameters()))


def memoized(module: nn.Module, x: torch.Tensor, fn: Optional[Callable[[torch.Tensor], Any]] = None) -> Any:
    """``(fn or module)(x)``, reused from the active memo (:func:`reuse_within`) when the
    same ``module`` was called on the same, unmodified tensor ``x`` with unmodified
    parameters and gradients are off (module docstring); computed (and stored, inside
    :func:`reuse_within` with gradients off) otherwise.

    Args:
        module: the network (its parameters' versions are part of the key).
        x: its input tensor (identity and ``_version`` are part of the key; the memo holds
            a reference to it, so its id cannot be reused while stored). One entry is kept
            per module, so an input that changes every call (a particle-dependent one)
            holds one input and output, not one per call.
        fn: what to compute from ``x`` (default ``module``); must be a function of
            ``module`` and ``x`` only (no randomness, no other state).
    """
    memo = getattr(_state, "memo", None)
    fn = module if fn is None else fn
    if memo is None or torch.is_grad_enabled():
        return fn(x)
    key = _key(module, x)
    hit = memo.get(id(module))
    if hit is not None and hit[0] == key and hit[1] is x:
        return hit[2]
    out = fn(x)
    memo[id(module)] = (key, x, out)  # one entry per module: a new input replaces the old
    return out
