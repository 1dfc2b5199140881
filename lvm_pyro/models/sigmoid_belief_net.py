"""Sigmoid belief network: every latent is Bernoulli (Neal 1992; lecture, section 1).

With one layer, p(x) = sum_z p(z) p(x | z) is a mixture of 2^d Bernoulli products; with
two, a deep mixture. Trained by score-function estimators (NVIL, Mnih & Gregor 2014;
VIMCO, Mnih & Rezende 2016), since z cannot be reparameterised.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..sites import LATENT, OBS, data_plate
from ..checks import data_checks_enabled
from .likelihoods import BernoulliLikelihood, ObservationChecks
from ..registration import CachedPyroModule

__all__ = ["SigmoidBeliefNetModel", "sbn_site_names"]


def sbn_site_names(num_layers: int) -> list[str]:
    """Latent site names from the layer next to x upwards: ``["z"]`` or ``["z", "z2"]``
    (``"z"`` is the site convention's latent; deeper layers are ``"z2"``, ``"z3"``...)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return [LATENT] + [f"{LATENT}{l + 1}" for l in range(1, num_layers)]


class SigmoidBeliefNetModel(ObservationChecks, CachedPyroModule):
    """Sigmoid belief network with one or more layers of Bernoulli latents::

        z_L ~ Bernoulli(sigmoid(prior_logits))                    top layer, site "z<L>"
        z_l | z_{l+1} ~ Bernoulli(sigmoid(f_l(z_{l+1})))          site "z2", ...
        x | z_1 ~ Bernoulli(sigmoid(decoder(z_1)))                site "z" feeds site "x"

    every site inside ``pyro.plate("data", num_data, subsample=idx)``; latents are
    float tensors in {0, 1} with event shape (z_dims[l],). With linear f_l and decoder
    (``lvm_pyro.nn.MLP`` with no hidden layer) it is the classic SBN of Neal (1992) and
    Mnih & Gregor (2014); hidden layers make the conditionals non-linear.

    Args:
        decoder: module (..., z_dims[0]) -> (..., 1, *event_shape), Bernoulli logits of x.
        z_dims: layer sizes from the layer next to x upwards, e.g. ``(200,)`` or
            ``(200, 200)``.
        event_shape: shape of one observation, e.g. (1, 28, 28).
        layers: modules f_l, l = 1..L-1: (..., z_dims[l]) -> (..., z_dims[l-1]) logits of
            the layer below (empty for one layer).

    ``forward(x, *, num_data=None, idx=None)``: x (batch, *event_shape) in {0, 1};
    raises ValueError for other values or shapes.

    Raises:
        ValueError: at construction, ``len(layers) != len(z_dims) - 1`` or a size < 1.
    """

    def __init__(self, decoder: nn.Module, z_dims: Sequence[int], event_shape: Sequence[int],
                 layers: Sequence[nn.Module] = ()):
        super().__init__()
        z_dims = [int(d) for d in z_dims]
        if not z_dims or min(z_dims) < 1:
            raise ValueError(f"z_dims must be a non-empty list of sizes >= 1, got {z_dims}")
        if len(layers) != len(z_dims) - 1:
            raise ValueError(f"{len(z_dims)} stochastic layers need {len(z_dims) - 1} layer "
                             f"networks between them, got {len(layers)}")
        self.decoder = decoder
        self.layers = nn.ModuleList(layers)
        self.z_dims = z_dims
        self.event_shape = tuple(event_shape)
        self.likelihood = BernoulliLikelihood()
        self.prior_logits = nn.Parameter(torch.zeros(z_dims[-1]))
        self.site_names = sbn_site_names(len(z_dims))

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if data_checks_enabled():
            self.check_data(x)
        names = self.site_names
        with data_plate(x, num_data, idx):
            z = pyro.sample(names[-1], dist.Bernoulli(logits=self.prior_logits).to_event(1))
            for l in reversed(range(len(self.layers))):  # top-down: z_{l+2} -> z_{l+1}
                z = pyro.sample(names[l], dist.Bernoulli(logits=self.layers[l](z)).to_event(1))
            params = self.decoder(z)  # (..., batch, 1, *event_shape)
            pyro.sample(OBS, self.likelihood(params, len(self.event_shape)), obs=x)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Images from p(x): decoder means (``mean``) or binary draws,
        (num_samples, *event_shape) float."""
        probs = torch.sigmoid(self.prior_logits).expand(num_samples, -1)
        z = torch.bernoulli(probs)
        for l in reversed(range(len(self.layers))):
            z = torch.bernoulli(torch.sigmoid(self.layers[l](z)))
        params = self.decoder(z)
        if mean:
            return self.likelihood.mean(params, len(self.event_shape))
        return self.likelihood(params, len(self.event_shape)).sample()
