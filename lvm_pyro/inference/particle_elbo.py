"""Shared machinery of the engine-based objectives (:class:`~lvm_pyro.inference.IWAE_ELBO`,
:class:`~lvm_pyro.inference.VIMCO`): argument handling, one vectorised pass over K
particles, and the auxiliary (VQ codebook / commitment) terms they add to training."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace

from .lean_trace import structure_of
from .program import (ProgramInfo, auxiliary_sites, bind_program, discover, program_root,
                      trace_guide_then_model)

__all__ = ["ParticleELBO", "bind_program", "auxiliary_log_factor"]

#: programs checked by one objective are remembered (by identity) up to this many pairs
_MAX_CHECKED = 16


def auxiliary_log_factor(traces: tuple[Trace, ...], num_particles: int,
                         like: torch.Tensor) -> torch.Tensor:
    """Sum of the auxiliary factors' log values (with their plate scales) over the traces,
    averaged over the ``num_particles`` particles: a scalar in ``like``'s dtype."""
    total = like.new_zeros(())
    for trace in traces:
        for _, site in auxiliary_sites(trace):
            lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            total = total + torch.as_tensor(scale_and_mask(lp, site["scale"], site["mask"])).sum()
    return total / num_particles


class ParticleELBO(ELBO):
    """Base of objectives computed from K particles (one vectorised pass, or K
    unvectorised passes with ``vectorize_particles=False``).

    The first call with a given (model, guide) pair runs them once, unvectorised, and
    checks the site contract (:func:`lvm_pyro.inference.program.discover`); later calls
    with the same pair do no checking (no per-step cost).

    Args:
        num_particles: K (an int >= ``min_particles``).
        max_plate_nesting: batch dims of the programs; found on the first call when
            ``None``.
        min_particles: the smallest K the objective is defined for.
        vectorize_particles: ``False`` runs the K particles one after another (for
            programs that do not broadcast over a leading particle dimension; slower).

    Raises:
        ValueError: K not an integer >= ``min_particles``; ``max_plate_nesting < 1``.
    """

    #: whether the objective reads its programs' param sites beyond "some were read"
    #: (:func:`lvm_pyro.registration.objective_allows_cached_registration`); a subclass
    #: that looks the parameters up in the traces sets it to True
    param_sites_read = False

    def __init__(self, num_particles: int, *, max_plate_nesting: Optional[int] = None,
                 min_particles: int = 1, why: str = "", vectorize_particles: bool = True):
        if isinstance(num_particles, bool) or int(num_particles) != num_particles \
                or num_particles < min_particles:
            raise ValueError(f"{type(self).__name__} needs num_particles >= {min_particles} "
                             f"(an integer){why}, got {num_particles!r}")
        if max_plate_nesting is not None and max_plate_nesting < 1:
            raise ValueError(f"max_plate_nesting must be >= 1 (the data plate), got {max_plate_nesting}")
        super().__init__(num_particles=int(num_particles),
                         max_plate_nesting=float("inf") if max_plate_nesting is None
                         else int(max_plate_nesting))
        # ours, not Pyro's (whose base class would add the particle dim to the nesting)
        self.vectorize_particles = bool(vectorize_particles)
        self._checked: list[tuple[Callable, Callable]] = []
        self._structures: dict = {}  # (id(model), id(guide)) -> structure of a recorded pass

    def _get_trace(self, model, guide, args, kwargs):
        """(model_trace, guide_trace) of one pass (Pyro's ``ELBO`` hook)."""
        f = self.forward(model, guide, *args, **kwargs)
        return f.model_trace, f.guide_trace

    def forward(self, model: Callable, guide: Callable, *args, **kwargs):
        raise NotImplementedError

    def _on_discover(self, info: ProgramInfo) -> None:
        """Hook: called once per (model, guide) pair with what the checked run found."""

    def _recheck_if_changed(self, model, guide, x, num_data, idx, model_trace: Trace,
                            guide_trace: Trace) -> None:
        key = (id(program_root(model)), id(program_root(guide)))
        shape = (structure_of(model_trace.nodes), structure_of(guide_trace.nodes))
        previous = self._structures.get(key)
        if previous is not None and previous != shape:
            self._on_discover(discover(model, guide, x, num_data=num_data, idx=idx))
        if previous != shape:
            if len(self._structures) >= _MAX_CHECKED:
                self._structures.clear()
            self._structures[key] = shape

    def _prepare(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """Split the call's arguments: returns ``(x, num_data, idx, model, guide, nesting)``
        with extra arguments bound into the programs and the plate nesting known; the
        first call with a pair checks the contract.

        Raises:
            ValueError: no positional argument (x) was given, or a contract violation.
        """
        if not args:
            raise ValueError(f"{type(self).__name__} needs the observations as the first "
                             "positional argument: loss(model, guide, x, num_data=..., idx=...)")
        x, rest = args[0], tuple(args[1:])
        extra = dict(kwargs)
        num_data, idx = extra.pop("num_data", None), extra.pop("idx", None)
        key = (program_root(model), program_root(guide))
        seen = any(m is key[0] and g is key[1] for m, g in self._checked)
        model_b, guide_b = bind_program(model, rest, extra), bind_program(guide, rest, extra)
        if not seen or self.max_plate_nesting == float("inf"):
            info = discover(model_b, guide_b, x, num_data=num_data, idx=idx)
            if self.max_plate_nesting == float("inf"):
                self.max_plate_nesting = info.max_plate_nesting
            self._on_discover(info)
            self._checked = (self._checked + [key])[-_MAX_CHECKED:]
        return x, num_data, idx, model_b, guide_b, int(self.max_plate_nesting)

    def _passes(self, model: Callable, guide: Callable, x: torch.Tensor, num_data, idx,
                nesting: int, record: bool = False) -> list[tuple[Trace, Trace, int]]:
        """``[(model_trace, guide_trace, k)]``: one vectorised pass with k = K, or K
        unvectorised passes with k = 1 (``vectorize_particles=False``).

        ``record``: the vectorised pass takes the lean path (traces of the sample sites
        only, :func:`~lvm_pyro.inference.program.trace_guide_then_model`); when its
        structure differs from the pair's previous pass (a site appears, disappears or
        changes shape or type), the contract is checked again on this batch
        (:func:`~lvm_pyro.inference.program.discover`)."""
        K = self.num_particles
        if self.vectorize_particles:
            mt, gt = trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx,
                                            num_particles=K, max_plate_nesting=nesting,
                                            record=record)
            if record:
                self._recheck_if_changed(model, guide, x, num_data, idx, mt, gt)
            return [(mt, gt, K)]
        return [(*trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx), 1)
                for _ in range(K)]
