"""VQ-VAE's generative model as a Pyro program (van den Oord et al. 2017)."""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nn.quantizer import VectorQuantizer
from ..sites import CODES, OBS, QUANTIZED, data_plate
from .codes_prior import ModuleCodesPrior
from ..checks import data_checks_enabled
from .likelihoods import Likelihood, ObservationChecks
from ..registration import CachedPyroModule

__all__ = ["VQVAEModel"]


class VQVAEModel(ObservationChecks, CachedPyroModule):
    """VQ-VAE generative model::

        codes ~ Uniform{0..K-1}^(h x w)  (or ``prior``)   site "codes", log p = -h w log K
        z_q = codebook[codes]                             site "z_q" (Delta, (D, h, w))
        x | z_q ~ p(x | decoder(z_q))                     site "x" (the likelihood)

    all inside ``pyro.plate("data", num_data, subsample=idx)``. With the sibling guide
    :class:`lvm_pyro.guides.VQEncoderGuide` (a point mass at the nearest codes, whose
    ``"z_q"`` carries the straight-through gradient) the per-datapoint ELBO is
    log p(x | z_q) + log p(codes) = log p(x | z_q) - h w log K for the uniform prior,
    a lower bound on log p(x) (paper section 3.1: the KL is the constant log K per code).

    Args:
        decoder: torch module (..., D, h, w) -> (..., P, *event_shape), P =
            ``likelihood.num_params`` (e.g. :class:`lvm_pyro.nn.VQConvDecoder`).
        quantizer: the :class:`lvm_pyro.nn.VectorQuantizer` shared with the guide (its
            codebook turns codes into z_q).
        latent_shape: (h, w), the code grid.
        event_shape: shape of one observation, e.g. (1, 28, 28).
        likelihood: a :class:`~lvm_pyro.models.likelihoods.Likelihood` (e.g.
            ``DiscretizedLogisticLikelihood`` for 8-bit pixels).
        prior: ``None`` for the uniform categorical prior, or a module with
            ``log_prob(codes (n, h, w)) -> (n,)`` and ``sample(n) -> (n, h, w)`` (e.g. a
            fitted PixelCNN over codes); settable later (``model.prior = ...``).

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape); raises ValueError
    when x has the wrong shape or lies outside the likelihood's support.
    """

    def __init__(self, decoder: nn.Module, quantizer: VectorQuantizer,
                 latent_shape: Sequence[int], event_shape: Sequence[int],
                 likelihood: Likelihood, prior: Optional[nn.Module] = None):
        super().__init__()
        if len(latent_shape) != 2 or min(latent_shape) < 1:
            raise ValueError(f"latent_shape must be (h, w) with h, w >= 1, got {tuple(latent_shape)}")
        self.decoder = decoder
        self.quantizer = quantizer
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.event_shape = tuple(event_shape)
        self.likelihood = likelihood
        self.prior = prior

    @property
    def codebook_size(self) -> int:
        """K, the number of codes."""
        return self.quantizer.codebook_size

    @property
    def num_codes(self) -> int:
        """h * w code positions per datapoint."""
        return self.latent_shape[0] * self.latent_shape[1]

    def codes_distribution(self) -> dist.TorchDistribution:
        """p(codes) over one (h, w) grid: uniform categorical, or the ``prior`` module."""
        if self.prior is None:
            logits = torch.zeros(*self.latent_shape, self.codebook_size,
                                 device=self.quantizer.codebook.device)
            return dist.Categorical(logits=logits).to_event(2)
        return ModuleCodesPrior(self.prior, self.latent_shape, self.codebook_size)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if data_checks_enabled():
            self.check_data(x)
        with data_plate(x, num_data, idx):
            codes = pyro.sample(CODES, self.codes_distribution())  # (..., batch, h, w)
            e = self.quantizer.lookup_grid(codes).detach()  # (..., batch, D, h, w)
            z_q = pyro.sample(QUANTIZED, dist.Delta(e, event_dim=3))  # guide: straight-through
            params = self.decoder(z_q)  # (..., batch, P, *event_shape)
            pyro.sample(OBS, self.likelihood(params, len(self.event_shape)), obs=x)

    def reconstruction_log_prob(self, x: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """log p(x | z_q) per datapoint (nats): x (batch, *event_shape), z_q
        (batch, D, h, w) -> (batch,)."""
        self.check_data(x)
        params = self.decoder(z_q)
        return self.likelihood(params, len(self.event_shape)).log_prob(x)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Images from code grids (..., h, w) int64 -> (..., *event_shape): the
        likelihood's mean, or a draw from p(x | z_q)."""
        params = self.decoder(self.quantizer.lookup_grid(codes))
        if mean:
            return self.likelihood.mean(params, len(self.event_shape))
        return self.likelihood(params, len(self.event_shape)).sample()

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Images from codes ~ p(codes) (uniform: mostly noise-like textures; a fitted
        ``prior`` gives real samples): (num_samples, *event_shape)."""
        codes = self.codes_distribution().sample((num_samples,))
        return self.decode_codes(codes, mean=mean)
