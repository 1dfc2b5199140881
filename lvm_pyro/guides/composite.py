"""A guide made of independent parts, q(u, z | x) = prod_j q_j(. | x)."""

from __future__ import annotations

from typing import Callable, Optional

import contextlib

import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn

from ..sites import DATA_PLATE, program_kwargs
from ..registration import CachedPyroModule

__all__ = ["CompositeGuide"]


class CompositeGuide(CachedPyroModule):
    """Runs guides one after another on the same x, e.g. a dequantiser (site ``"u"``)
    and a VAE encoder (site ``"z"``) for a dequantised VAE::

        q(u, z | x) = q(u | x) q(z | x)

    Args:
        *guides: Pyro programs following :mod:`lvm_pyro.sites` with disjoint site names
            (``torch.nn.Module`` guides are registered as sub-modules, so their
            parameters train together).

    ``forward(x, *, num_data=None, idx=None)`` calls each guide with the keywords it
    accepts and returns their return values as a tuple.

    Raises:
        ValueError: no guides.
    """

    def __init__(self, *guides: Callable):
        super().__init__()
        if not guides:
            raise ValueError("CompositeGuide needs at least one guide")
        modules = [g for g in guides if isinstance(g, nn.Module)]
        self.parts = PyroModule[nn.ModuleList](modules)
        self._programs = list(guides)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> tuple:
        parts = iter(self.parts)  # the registered modules, in order
        out = []
        for j, g in enumerate(self._programs):
            fn = next(parts) if isinstance(g, nn.Module) else g
            # every part opens the "data" plate over the same indices: the subsample
            # site is recorded once, from the first part
            hide = poutine.block(hide=[DATA_PLATE]) if j else contextlib.nullcontext()
            with hide:
                out.append(fn(x, **program_kwargs(fn, num_data, idx)))
        return tuple(out)
