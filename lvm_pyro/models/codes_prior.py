"""The one distribution type over grids of VQ code indices backed by a prior module
(uniform codes need none: ``Categorical(...).to_event(2)``)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

__all__ = ["ModuleCodesPrior"]


class ModuleCodesPrior(dist.TorchDistribution):
    """A Pyro distribution over (H, W) grids of code indices backed by a prior module: the
    VQ-VAE's ``"codes"`` prior once a stage-two prior is fitted (van den Oord et al. 2017,
    sec. 3.3), e.g. :class:`~lvm_pyro.models.GatedPixelCNNPrior` or a user's module.

    The module provides ``log_prob(codes (n, H, W) int64[, y (n,)]) -> (n,)`` nats and
    ``sample(n[, y (n,)]) -> (n, H, W)`` int64; ``y`` (class labels) is passed only when
    given here. A prior conditioned on another tensor per grid (VQ-VAE-2's bottom prior
    given the top codes, Razavi et al. 2019) also takes ``context=`` (n, *context event
    shape) in both methods, passed only when given here.

    Args:
        prior: the module.
        grid_shape: (H, W), the event shape.
        codebook_size: K (support 0 .. K-1).
        y: optional labels of a class-conditional prior, broadcast to the batch shape.
        batch_shape: the batch shape (default: the broadcast of ``y.shape`` and the
            context's batch shape, or ()).
        context: optional (*batch, *context event shape) tensor, broadcast to the batch
            shape.
        context_event_dim: trailing dims of ``context`` that belong to one grid (default 2,
            a grid of codes).

    ``log_prob(value)``: value (..., H, W) int64 -> (...) nats; ``sample(sample_shape)``:
    (*sample_shape, *batch_shape, H, W) int64 (not reparameterisable).
    """

    arg_constraints: dict = {}
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, prior: nn.Module, grid_shape: Sequence[int], codebook_size: int,
                 y: Optional[torch.Tensor] = None, batch_shape: Optional[torch.Size] = None,
                 validate_args=None, context: Optional[torch.Tensor] = None,
                 context_event_dim: int = 2):
        self.prior, self.codebook_size = prior, int(codebook_size)
        self.y = None if y is None else torch.as_tensor(y).long()
        self.context, self.context_event_dim = context, int(context_event_dim)
        if context is not None and context.dim() < self.context_event_dim:
            raise ValueError(f"context must have at least context_event_dim="
                             f"{self.context_event_dim} dims, got shape {tuple(context.shape)}")
        if batch_shape is None:
            batch_shape = torch.broadcast_shapes(
                self.y.shape if self.y is not None else torch.Size(), self._context_batch())
        super().__init__(torch.Size(batch_shape), torch.Size(grid_shape),
                         validate_args=validate_args)

    def _context_batch(self) -> torch.Size:
        if self.context is None:
            return torch.Size()
        return self.context.shape[:self.context.dim() - self.context_event_dim]

    def _conditioning(self, lead: torch.Size) -> tuple[tuple, dict]:
        """The conditioning arguments for ``n = prod(lead)`` flattened grids: (y,) when
        labelled (positional), ``context=`` when given."""
        args, kw = (), {}
        if self.y is not None:
            args = (self.y.expand(lead).reshape(-1),)  # (n,)
        if self.context is not None:
            ev = self.context.shape[self.context.dim() - self.context_event_dim:]
            kw["context"] = self.context.expand(*lead, *ev).reshape(-1, *ev)  # (n, *ev)
        return args, kw

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.codebook_size - 1), 2)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        y = None if self.y is None else self.y.expand(batch_shape)
        ctx = self.context
        if ctx is not None:
            ev = ctx.shape[ctx.dim() - self.context_event_dim:]
            ctx = ctx.expand(*batch_shape, *ev)
        return ModuleCodesPrior(self.prior, self.event_shape, self.codebook_size, y, batch_shape,
                                validate_args=self._validate_args, context=ctx,
                                context_event_dim=self.context_event_dim)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(codes), value (..., H, W) int64 -> (...), nats."""
        if self._validate_args:
            self._validate_sample(value)
        lead = value.shape[:-2]
        if self.y is None and self.context is None:
            flat = value.reshape(-1, *value.shape[-2:])  # (n, H, W)
            return self.prior.log_prob(flat).reshape(lead)
        y_shape = self.y.shape if self.y is not None else torch.Size()
        lead = torch.broadcast_shapes(y_shape, self._context_batch(), lead)
        flat = value.expand(*lead, *value.shape[-2:]).reshape(-1, *value.shape[-2:])
        args, kw = self._conditioning(lead)
        return self.prior.log_prob(flat, *args, **kw).reshape(lead)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = max(1, math.prod(shape))
        with torch.no_grad():
            if self.y is None and self.context is None:
                codes = self.prior.sample(n)  # (n, H, W)
            else:
                args, kw = self._conditioning(shape)
                codes = self.prior.sample(n, *args, **kw)
        return codes.reshape(*shape, *self.event_shape)
