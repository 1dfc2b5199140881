"""Shared machinery of the engine-based objectives (:class:`~lvm_pyro.inference.IWAE_ELBO`,
:class:`~lvm_pyro.inference.VIMCO`): argument handling, one vectorised pass over K
particles, and the auxiliary (VQ codebook / commitment) terms they add to training."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace

from ..sites import program_kwargs
from .log_weights import guess_max_plate_nesting, is_auxiliary_site

__all__ = ["ParticleELBO", "bind_program", "auxiliary_log_factor"]


def bind_program(fn: Callable, rest: tuple, extra: dict) -> Callable:
    """``fn`` as a program of the site convention ``f(x, *, num_data, idx)`` with extra
    positional / keyword arguments bound."""
    if not rest and not extra:
        return fn

    def bound(x, *, num_data=None, idx=None):
        return fn(x, *rest, **extra, **program_kwargs(fn, num_data, idx))

    return bound


def auxiliary_log_factor(traces: tuple[Trace, ...], num_particles: int,
                         like: torch.Tensor) -> torch.Tensor:
    """Sum of the auxiliary factors' log values (with their plate scales) over the traces,
    averaged over the ``num_particles`` particles: a scalar in ``like``'s dtype."""
    total = like.new_zeros(())
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample" and is_auxiliary_site(site):
                lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                total = total + torch.as_tensor(scale_and_mask(lp, site["scale"], site["mask"])).sum()
    return total / num_particles


class ParticleELBO(ELBO):
    """Base of objectives computed from one vectorised pass over K particles.

    Args:
        num_particles: K (an int >= ``min_particles``).
        max_plate_nesting: batch dims of the programs; guessed on the first call when
            ``None``.
        min_particles: the smallest K the objective is defined for.

    Raises:
        ValueError: K not an integer >= ``min_particles``; ``max_plate_nesting < 1``.
    """

    def __init__(self, num_particles: int, *, max_plate_nesting: Optional[int] = None,
                 min_particles: int = 1, why: str = ""):
        if isinstance(num_particles, bool) or int(num_particles) != num_particles \
                or num_particles < min_particles:
            raise ValueError(f"{type(self).__name__} needs num_particles >= {min_particles} "
                             f"(an integer){why}, got {num_particles!r}")
        if max_plate_nesting is not None and max_plate_nesting < 1:
            raise ValueError(f"max_plate_nesting must be >= 1 (the data plate), got {max_plate_nesting}")
        super().__init__(num_particles=int(num_particles),
                         max_plate_nesting=float("inf") if max_plate_nesting is None
                         else int(max_plate_nesting))

    def _get_trace(self, model, guide, args, kwargs):
        """(model_trace, guide_trace) of one vectorised pass (Pyro's ``ELBO`` hook)."""
        f = self.forward(model, guide, *args, **kwargs)
        return f.model_trace, f.guide_trace

    def forward(self, model: Callable, guide: Callable, *args, **kwargs):
        raise NotImplementedError

    def _prepare(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """Split the call's arguments: returns ``(x, num_data, idx, model, guide, nesting)``
        with extra arguments bound into the programs and the plate nesting known.

        Raises:
            ValueError: no positional argument (x) was given.
        """
        if not args:
            raise ValueError(f"{type(self).__name__} needs the observations as the first "
                             "positional argument: loss(model, guide, x, num_data=..., idx=...)")
        x, rest = args[0], tuple(args[1:])
        extra = dict(kwargs)
        num_data, idx = extra.pop("num_data", None), extra.pop("idx", None)
        model, guide = bind_program(model, rest, extra), bind_program(guide, rest, extra)
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, x, num_data, idx)
        return x, num_data, idx, model, guide, int(self.max_plate_nesting)
