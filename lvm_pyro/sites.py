"""The site-name contract shared by every model, guide, estimator and diagnostic.

A user's own Pyro program that follows these conventions works with every estimator
and diagnostic in :mod:`lvm_pyro`:

* ``model(x, *, num_data=None, idx=None)`` and ``guide(x, *, num_data=None, idx=None)``;
  a program that takes only ``x`` still works (unscaled).
* One ``pyro.plate("data", num_data or len(x), subsample=idx)`` wraps every site that
  belongs to a datapoint (use :func:`data_plate`).
* Observation site ``"x"``, latent ``"z"``, VQ code indices ``"codes"``, the quantised
  VQ latent grid ``"z_q"`` (a Delta at the codebook rows of ``"codes"``),
  dequantisation noise ``"u"``; model and guide use the same latent names. A two-level
  VQ-VAE (VQ-VAE-2) names its code grids ``"codes_top"`` / ``"codes_bottom"`` and their
  quantised grids ``"z_q_top"`` / ``"z_q_bottom"``.
* Auxiliary terms that are not part of p(x, z) (VQ codebook / commitment losses) are
  factors added with :func:`auxiliary_factor` (site ``infer={"lvm_auxiliary": True}``):
  training objectives include them, every likelihood estimate leaves them out. (Pyro's
  own ``pyro.factor`` marks *every* factor ``is_auxiliary``, so that flag cannot tell a
  loss term from a factor that is part of a user's p(x, z); ours can.)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pyro
import pyro.distributions as dist
import torch

DATA_PLATE = "data"
OBS = "x"
LATENT = "z"
CODES = "codes"
QUANTIZED = "z_q"
NOISE = "u"
CODES_TOP = "codes_top"
CODES_BOTTOM = "codes_bottom"
QUANTIZED_TOP = "z_q_top"
QUANTIZED_BOTTOM = "z_q_bottom"
PARTICLE_PLATE = "_num_particles_vectorized"
AUXILIARY = "lvm_auxiliary"

__all__ = [
    "DATA_PLATE", "OBS", "LATENT", "CODES", "QUANTIZED", "NOISE", "PARTICLE_PLATE", "AUXILIARY",
    "data_plate", "program_kwargs", "auxiliary_factor",
    "CODES_TOP", "CODES_BOTTOM", "QUANTIZED_TOP", "QUANTIZED_BOTTOM",
]


def data_plate(x: torch.Tensor, num_data: Optional[int] = None,
               idx: Optional[torch.Tensor] = None) -> pyro.plate:
    """The ``"data"`` plate of the site convention.

    Args:
        x: (batch, ...) the minibatch; its first dimension is the plate's subsample size.
        num_data: the dataset size N; sites inside are scaled by N / batch. ``None``
            means the minibatch is the whole data set (scale 1).
        idx: (batch,) int64 indices of the minibatch in the data set, or ``None``.

    Returns:
        ``pyro.plate("data", N, subsample=idx)`` at ``dim=-1``.

    Raises:
        ValueError: if ``idx`` has a length other than ``len(x)``, or ``num_data`` is
            smaller than the batch.
    """
    batch = x.shape[0]
    if idx is not None and len(idx) != batch:
        raise ValueError(f"idx has {len(idx)} entries but x has batch size {batch}; "
                         "pass the minibatch indices of exactly the rows of x")
    if num_data is None:
        return pyro.plate(DATA_PLATE, batch, dim=-1)
    if num_data < batch:
        raise ValueError(f"num_data={num_data} is smaller than the batch size {batch}")
    if idx is None:
        idx = torch.arange(batch, device=x.device)
    return pyro.plate(DATA_PLATE, num_data, subsample=idx, dim=-1)


def auxiliary_factor(name: str, value: torch.Tensor) -> None:
    """Add an auxiliary term ``value`` (nats, shape broadcastable to the enclosing plates)
    that training objectives include and likelihood estimates leave out.

    Like ``pyro.factor``, it adds ``value`` to the log density of the program it is in:
    in a model to log p (so a loss L enters as ``-L``), in a guide to log q, which ELBOs
    subtract (so a loss L enters as ``+L``; the VQ-VAE's codebook and commitment terms
    sit in its guide, the only place that knows z_e).
    """
    unit = dist.Unit(value, has_rsample=True)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True, AUXILIARY: True})


def program_kwargs(fn: Callable, num_data: Optional[int] = None,
                   idx: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Keyword arguments of the site convention that ``fn`` accepts (by ``forward``'s
    signature for modules): :func:`lvm_pyro.inference.program.program_kwargs`, kept here
    for backwards compatibility."""
    from .inference.program import program_kwargs as _program_kwargs  # noqa: PLC0415

    return _program_kwargs(fn, num_data, idx)
