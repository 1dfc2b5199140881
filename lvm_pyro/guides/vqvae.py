"""VQ-VAE's encoder as a guide: a point mass at the nearest codes (van den Oord et al.
2017, section 3.1: q(z = k | x) = 1 for k = argmin_j ||z_e(x) - e_j||)."""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nn.quantizer import QuantizerOutput, VectorQuantizer
from ..sites import CODES, QUANTIZED, auxiliary_factor, data_plate
from ..registration import CachedPyroModule

__all__ = ["VQEncoderGuide", "CODEBOOK_FACTOR", "COMMITMENT_FACTOR"]

#: auxiliary factor sites of the two VQ loss terms (left out of every likelihood estimate)
CODEBOOK_FACTOR, COMMITMENT_FACTOR = "vq_codebook", "vq_commitment"


class VQEncoderGuide(CachedPyroModule):
    """Guide of :class:`lvm_pyro.models.VQVAEModel`::

        z_e = encoder(x)                                  (batch, D, h, w)
        codes = argmin_k ||z_e - e_k||                     site "codes" (Delta, int64)
        z_q = e_codes + (z_e - sg z_e)                     site "z_q" (Delta; value e_codes,
                                                           straight-through gradient to z_e)
        codebook term   sum ||sg[z_e] - e||^2              auxiliary site "vq_codebook"
        commitment term beta sum ||z_e - sg[e]||^2         auxiliary site "vq_commitment"

    (paper eq. 3, summed over the h x w positions and the D dims per datapoint), inside
    ``pyro.plate("data", num_data, subsample=idx)``. Both Deltas have log q = 0, so the
    log-weight engine sees log p(x | z_q) + log p(codes).

    The loss terms are :func:`lvm_pyro.sites.auxiliary_factor` sites: the engine and every
    likelihood estimate leave them out, while Pyro's ``Trace_ELBO`` adds them to its
    loss. In a *guide* a factor's log-density is part of log q, which the ELBO subtracts,
    so the terms go in with a plus sign: Trace_ELBO's loss per datapoint is
    -log p(x | z_q) - log p(codes) + codebook + beta commitment. (Objectives that only
    read model factors would miss them; ``TraceMeanField_ELBO`` is one.)

    Args:
        encoder: torch module (..., C, H, W) -> (..., D, h, w) (e.g.
            :class:`lvm_pyro.nn.VQConvEncoder`).
        quantizer: the :class:`lvm_pyro.nn.VectorQuantizer` shared with the model.

    ``forward(x, *, num_data=None, idx=None)`` returns the :class:`QuantizerOutput`.
    EMA statistics are gathered only in training mode with gradients on (see
    :mod:`lvm_pyro.nn.quantizer`).
    """

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer):
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer

    def encode(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantise the encoder output of x (batch, *event_shape): indices (batch, h, w),
        quantized (batch, D, h, w), per-position losses (batch, h, w)."""
        z_e = self.encoder(x)  # (batch, D, h, w)
        if z_e.dim() < 4:
            raise ValueError(f"encoder must output (batch, D, h, w), got {tuple(z_e.shape)}")
        return self.quantizer(z_e)

    def check_data(self, x: torch.Tensor) -> None:
        """This guide runs no data checks of its own (the model checks x); present so
        that a caller who validated the data set once may skip the model's per-call
        checks (:mod:`lvm_pyro.checks`)."""

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> QuantizerOutput:
        out = self.encode(x)
        with data_plate(x, num_data, idx):
            pyro.sample(CODES, dist.Delta(out.indices, event_dim=2))
            pyro.sample(QUANTIZED, dist.Delta(out.quantized, event_dim=3))
            auxiliary_factor(CODEBOOK_FACTOR, out.losses.codebook.sum((-2, -1)))
            auxiliary_factor(COMMITMENT_FACTOR, out.losses.commitment.sum((-2, -1)))
        return out
