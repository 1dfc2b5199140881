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
through a module whose parameters and buffers are unmodified (same ``_version`` and
storage each) and whose train/eval mode is unchanged. Changes of those compute afresh
(see :func:`memoized` for what the key cannot see: writes through ``.data``). Outside :func:`reuse_within` (training, any call with gradients)
nothing is stored. A guide of a user's own opts in by calling :func:`memoized` on its
encoder (as :class:`lvm_pyro.guides.AmortizedNormalGuide` does).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Hashable, Iterator

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
    return (id(x), x._version, x.data_ptr(), module.training,
            tuple((p._version, p.data_ptr()) for p in module.parameters()),
            tuple((b._version, b.data_ptr()) for b in module.buffers()))


def _stochastic_or_pyro(module: nn.Module) -> bool:
    """True when ``module(x)`` may differ between calls in ways the key cannot see: a
    dropout or batch-norm layer in training mode, or Pyro parameters (``PyroParam``,
    read from the param store on access)."""
    for m in module.modules():
        if m.training and isinstance(m, (nn.modules.dropout._DropoutNd,
                                         nn.modules.batchnorm._BatchNorm)):
            return True
        if getattr(m, "_pyro_params", None):
            return True
    return False


def memoized(module: nn.Module, x: torch.Tensor, tag: Hashable = None) -> Any:
    """``module(x)``, reused from the active memo (:func:`reuse_within`) when the same
    ``module`` was called on the same, unmodified tensor ``x`` with unmodified parameters
    and buffers, in the same train/eval mode, with gradients off (module docstring);
    computed (and stored, inside :func:`reuse_within` with gradients off) otherwise.

    Args:
        module: the network (its parameters' and buffers' versions and storages and its
            ``training`` flag are part of the key).
        x: its input tensor (identity, ``_version`` and storage are part of the key; the
            memo holds a reference to it, so its id cannot be reused while stored). One
            entry is kept per ``(module, tag)``, so an input that changes every call (a
            particle-dependent one) holds one input and output, not one per call.
        tag: tells apart calls of the same module that the caller means as different
            computations (a hashable value; default ``None``). The call computed is
            always ``module(x)``.

    Returns:
        what ``module(x)`` returns. A reused output is the very same object as the first
        call's: do not modify it in place.

    Limits:
        Changes made through ``tensor.data`` (``p.data.add_(...)``) bypass PyTorch's
        version counters and are not seen: modify parameters under ``torch.no_grad()``
        (as optimisers and ``load_state_dict`` do), not through ``.data``, while a memo
        is active. Under ``torch.inference_mode()`` (or on inference tensors) nothing is
        reused or stored (such tensors carry no version counter), nor for a module with a
        dropout or batch-norm layer in training mode or with Pyro parameters. Not seen
        either: plain Python attributes read in ``forward``, parametrizations' attributes,
        the train/eval flag of submodules other than dropout / batch norm, and autocast:
        use the memo only for deterministic networks whose output depends on ``x``,
        their parameters and buffers alone.
    """
    memo = getattr(_state, "memo", None)
    if (memo is None or torch.is_grad_enabled() or torch.is_inference_mode_enabled()
            or x.is_inference() or _stochastic_or_pyro(module)):
        return module(x)
    key = _key(module, x)
    slot = (id(module), tag)
    hit = memo.get(slot)
    if hit is not None and hit[0] == key and hit[1] is x and hit[2] is module:
        return hit[3]
    out = module(x)
    memo[slot] = (key, x, module, out)  # one entry per (module, tag): a new input replaces the old
    return out
