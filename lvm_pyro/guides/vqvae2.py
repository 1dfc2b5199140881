"""VQ-VAE-2's encoder as a guide: point masses at the nearest codes of the top grid, then
of the bottom grid, whose encoder reads the quantised top grid (Razavi et al. 2019,
Sec. 3.1, Algorithm 1)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nn.quantizer import QuantizerOutput, VectorQuantizer
from ..registration import CachedPyroModule
from ..sites import (CODES_BOTTOM, CODES_TOP, QUANTIZED_BOTTOM, QUANTIZED_TOP, auxiliary_factor,
                     data_plate)

__all__ = ["VQVAE2Guide", "VQVAE2Encoding"]


class VQVAE2Encoding(NamedTuple):
    """The :class:`~lvm_pyro.nn.quantizer.QuantizerOutput` of each level: ``top`` (indices
    (batch, h_t, w_t), quantized (batch, D, h_t, w_t)) and ``bottom`` (the same at
    (h_b, w_b))."""

    top: QuantizerOutput
    bottom: QuantizerOutput


class VQVAE2Guide(CachedPyroModule):
    """Guide of :class:`lvm_pyro.models.VQVAE2Model`::

        h = encoder.features(x);  z_e_top = encoder.top(h)
        codes_top = argmin_k ||z_e_top - e^top_k||              site "codes_top" (Delta)
        z_q_top = e^top_codes_top (straight-through to z_e_top)  site "z_q_top" (Delta)
        z_e_bottom = encoder.bottom(h, z_q_top)
        codes_bottom, z_q_bottom likewise                        sites "codes_bottom", "z_q_bottom"
        codebook and commitment terms of each level (van den Oord et al. 2017, Eq. 3)
                        auxiliary sites "vq_codebook_top", "vq_commitment_top",
                        "vq_codebook_bottom", "vq_commitment_bottom"

    inside ``pyro.plate("data", num_data, subsample=idx)``. Every Delta has log q = 0, so
    the engine sees the model's log p(x | z_q_top, z_q_bottom) + log p(codes); Pyro's
    ``Trace_ELBO`` also adds the four auxiliary terms (a guide factor enters the loss with
    a plus sign, as in :class:`lvm_pyro.guides.VQEncoderGuide`).

    Args:
        encoder: module with ``features``, ``top`` and ``bottom`` as
            :class:`lvm_pyro.nn.VQVAE2Encoder`.
        quantizer_top, quantizer_bottom: the model's quantisers.

    ``forward(x, *, num_data=None, idx=None)`` returns the :class:`VQVAE2Encoding`.
    """

    def __init__(self, encoder: nn.Module, quantizer_top: VectorQuantizer,
                 quantizer_bottom: VectorQuantizer):
        super().__init__()
        self.encoder = encoder
        self.quantizer_top, self.quantizer_bottom = quantizer_top, quantizer_bottom

    def encode(self, x: torch.Tensor) -> VQVAE2Encoding:
        """Quantise both levels for x (batch, *event_shape)."""
        h = self.encoder.features(x)
        top = self.quantizer_top(self.encoder.top(h))
        bottom = self.quantizer_bottom(self.encoder.bottom(h, top.quantized))
        return VQVAE2Encoding(top, bottom)

    def check_data(self, x: torch.Tensor) -> None:
        """This guide runs no data checks of its own (the model checks x); present so
        that a caller who validated the data set once may skip the model's per-call
        checks (:mod:`lvm_pyro.checks`)."""

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> VQVAE2Encoding:
        out = self.encode(x)
        with data_plate(x, num_data, idx):
            for level, q, codes_site, z_site in (("top", out.top, CODES_TOP, QUANTIZED_TOP),
                                                 ("bottom", out.bottom, CODES_BOTTOM,
                                                  QUANTIZED_BOTTOM)):
                pyro.sample(codes_site, dist.Delta(q.indices, event_dim=2))
                pyro.sample(z_site, dist.Delta(q.quantized, event_dim=3))
                auxiliary_factor(f"vq_codebook_{level}", q.losses.codebook.sum((-2, -1)))
                auxiliary_factor(f"vq_commitment_{level}", q.losses.commitment.sum((-2, -1)))
        return out
