"""VQ-VAE-2's generative model as a Pyro program (Razavi et al. 2019): a top grid of codes
for global structure, a bottom grid for local detail, a decoder that reads both."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nn.quantizer import VectorQuantizer
from ..sites import CODES_BOTTOM, CODES_TOP, OBS, QUANTIZED_BOTTOM, QUANTIZED_TOP, data_plate
from .codes_prior import ModuleCodesPrior
from ..checks import data_checks_enabled
from .likelihoods import Likelihood, ObservationChecks
from ..registration import CachedPyroModule

__all__ = ["VQVAE2Model"]


def _grid(shape: Sequence[int], name: str) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name} must be (h, w) with h, w >= 1, got {shape}")
    return shape


class VQVAE2Model(ObservationChecks, CachedPyroModule):
    """Two-level VQ-VAE generative model::

        codes_top ~ Uniform{0..K_t-1}^(h_t x w_t)  (or ``prior_top``)          site "codes_top"
        z_q_top = codebook_top[codes_top]                                      site "z_q_top" (Delta)
        codes_bottom | codes_top ~ Uniform{0..K_b-1}^(h_b x w_b) (or ``prior_bottom``)
                                                                               site "codes_bottom"
        z_q_bottom = codebook_bottom[codes_bottom]                             site "z_q_bottom" (Delta)
        x | z_q_top, z_q_bottom ~ p(x | decoder(z_q_top, z_q_bottom))          site "x"

    inside ``pyro.plate("data", num_data, subsample=idx)``. With the sibling guide
    :class:`lvm_pyro.guides.VQVAE2Guide` (point masses at the nearest codes of both
    levels) the engine's log weight is the two-stage bound
    ``log p(x | z_q_top, z_q_bottom) + log p(codes_top) + log p(codes_bottom | codes_top)``
    <= log p(x): with uniform priors the last two terms are the constants
    ``-h_t w_t log K_t - h_b w_b log K_b`` (van den Oord et al. 2017, Sec. 3.1, for each
    level).

    Args:
        decoder: torch module ``(z_q_top (..., D, h_t, w_t), z_q_bottom (..., D, h_b, w_b))
            -> (..., P, *event_shape)`` (e.g. :class:`lvm_pyro.nn.VQVAE2Decoder`).
        quantizer_top, quantizer_bottom: the :class:`lvm_pyro.nn.VectorQuantizer` of each
            level, shared with the guide (same ``embedding_dim`` D).
        top_shape: (h_t, w_t); bottom_shape: (h_b, w_b).
        event_shape: shape of one observation, e.g. (1, 32, 32).
        likelihood: a :class:`~lvm_pyro.models.likelihoods.Likelihood`.
        prior_top: ``None`` (uniform) or a module with ``log_prob(codes (n, h_t, w_t)) ->
            (n,)`` and ``sample(n) -> (n, h_t, w_t)`` (e.g. an unconditional
            :class:`lvm_pyro.models.AttentionPixelCNNPrior`); settable later.
        prior_bottom: ``None`` (uniform) or a module with ``log_prob(codes (n, h_b, w_b), *,
            context (n, h_t, w_t)) -> (n,)`` and ``sample(n, *, context) -> (n, h_b, w_b)``
            (e.g. an unconditional :class:`lvm_pyro.models.ConditionalPixelCNNPrior`);
            settable later.

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape).

    Raises:
        ValueError: bad grid shapes, quantisers of different ``embedding_dim`` (at
            construction); x of the wrong shape or outside the likelihood's support.
    """

    def __init__(self, decoder: nn.Module, quantizer_top: VectorQuantizer,
                 quantizer_bottom: VectorQuantizer, top_shape: Sequence[int],
                 bottom_shape: Sequence[int], event_shape: Sequence[int], likelihood: Likelihood,
                 prior_top: Optional[nn.Module] = None, prior_bottom: Optional[nn.Module] = None):
        super().__init__()
        if quantizer_top.embedding_dim != quantizer_bottom.embedding_dim:
            raise ValueError(f"the two quantizers must share embedding_dim, got "
                             f"{quantizer_top.embedding_dim} and {quantizer_bottom.embedding_dim}")
        self.decoder = decoder
        self.quantizer_top, self.quantizer_bottom = quantizer_top, quantizer_bottom
        self.top_shape = _grid(top_shape, "top_shape")
        self.bottom_shape = _grid(bottom_shape, "bottom_shape")
        self.event_shape = tuple(event_shape)
        self.likelihood = likelihood
        self.prior_top, self.prior_bottom = prior_top, prior_bottom

    @property
    def code_bits(self) -> float:
        """Bits to store one datapoint's codes at a uniform rate:
        h_t w_t log2 K_t + h_b w_b log2 K_b."""
        return (math.prod(self.top_shape) * math.log2(self.quantizer_top.codebook_size)
                + math.prod(self.bottom_shape) * math.log2(self.quantizer_bottom.codebook_size))

    def top_distribution(self) -> dist.TorchDistribution:
        """p(codes_top) over one (h_t, w_t) grid: uniform categorical or ``prior_top``."""
        k = self.quantizer_top.codebook_size
        if self.prior_top is None:
            logits = torch.zeros(*self.top_shape, k, device=self.quantizer_top.codebook.device)
            return dist.Categorical(logits=logits).to_event(2)
        return ModuleCodesPrior(self.prior_top, self.top_shape, k)

    def bottom_distribution(self, codes_top: torch.Tensor) -> dist.TorchDistribution:
        """p(codes_bottom | codes_top) given codes_top (..., h_t, w_t): uniform categorical
        (batch shape ()) or ``prior_bottom`` (batch shape ``codes_top.shape[:-2]``)."""
        k = self.quantizer_bottom.codebook_size
        if self.prior_bottom is None:
            logits = torch.zeros(*self.bottom_shape, k,
                                 device=self.quantizer_bottom.codebook.device)
            return dist.Categorical(logits=logits).to_event(2)
        return ModuleCodesPrior(self.prior_bottom, self.bottom_shape, k, context=codes_top)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if data_checks_enabled():
            self.check_data(x)
        with data_plate(x, num_data, idx):
            codes_top = pyro.sample(CODES_TOP, self.top_distribution())  # (..., batch, h_t, w_t)
            e_top = self.quantizer_top.lookup_grid(codes_top).detach()  # (..., batch, D, h_t, w_t)
            z_top = pyro.sample(QUANTIZED_TOP, dist.Delta(e_top, event_dim=3))
            codes_bottom = pyro.sample(CODES_BOTTOM, self.bottom_distribution(codes_top))
            e_bottom = self.quantizer_bottom.lookup_grid(codes_bottom).detach()
            z_bottom = pyro.sample(QUANTIZED_BOTTOM, dist.Delta(e_bottom, event_dim=3))
            params = self.decoder(z_top, z_bottom)  # (..., batch, P, *event_shape)
            pyro.sample(OBS, self.likelihood(params, len(self.event_shape)), obs=x)

    def reconstruction_log_prob(self, x: torch.Tensor, z_q_top: torch.Tensor,
                                z_q_bottom: torch.Tensor) -> torch.Tensor:
        """log p(x | z_q_top, z_q_bottom) per datapoint (nats): x (batch, *event_shape),
        z_q_top (batch, D, h_t, w_t), z_q_bottom (batch, D, h_b, w_b) -> (batch,)."""
        self.check_data(x)
        params = self.decoder(z_q_top, z_q_bottom)
        return self.likelihood(params, len(self.event_shape)).log_prob(x)

    @torch.no_grad()
    def decode_codes(self, codes_top: torch.Tensor, codes_bottom: torch.Tensor,
                     mean: bool = True) -> torch.Tensor:
        """Images from code grids codes_top (..., h_t, w_t), codes_bottom (..., h_b, w_b)
        int64 -> (..., *event_shape): the likelihood's mean, or a draw."""
        params = self.decoder(self.quantizer_top.lookup_grid(codes_top),
                              self.quantizer_bottom.lookup_grid(codes_bottom))
        if mean:
            return self.likelihood.mean(params, len(self.event_shape))
        return self.likelihood(params, len(self.event_shape)).sample()

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Images from ancestral codes: codes_top ~ p(codes_top), codes_bottom ~
        p(codes_bottom | codes_top), then decoded: (num_samples, *event_shape)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        codes_top = self.top_distribution().sample((num_samples,))  # (n, h_t, w_t)
        bottom = self.bottom_distribution(codes_top)
        codes_bottom = bottom.sample(() if bottom.batch_shape else (num_samples,))
        return self.decode_codes(codes_top, codes_bottom, mean=mean)
