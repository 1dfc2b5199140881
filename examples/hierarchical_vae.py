"""A two-level hierarchical VAE written as a user would, trained by the command line::

    lvm-pyro fit --model examples.hierarchical_vae:build --z-dim 4 --hidden-dim 64 \
        --model-arg z2_dim=2 --out runs/hvae

(run from the repository root: ``lvm-pyro`` imports ``examples`` from the current
directory when it is not installed). Generative story (Sønderby et al. 2016, ladder VAE
without the ladder; Burda et al. 2015, sec. 5, two stochastic layers)::

    z2 ~ N(0, I)                       site "z2", (z2_dim,)
    z1 | z2 ~ N(mu(z2), sigma(z2))     site "z1", (z_dim,)
    x | z1 ~ p(x | decoder(z1))        site "x"

with the bottom-up guide q(z1 | x) q(z2 | z1): z2's guide distribution depends on the
latent z1, so per-latent diagnostics (KL per dimension, active units, mutual
information) apply to the root latent z1 and refuse z2 with a clear error.

Every network is a ``torch.nn`` module held by a ``PyroModule``, so its parameters are
registered in Pyro's param store when the program runs and the optimiser moves them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from lvm_pyro.models import make_likelihood
from lvm_pyro.nn import MLP
from lvm_pyro.sites import OBS, data_plate

__all__ = ["HierarchicalVAEModel", "HierarchicalVAEGuide", "build"]


def _normal(params: torch.Tensor, min_scale: float = 1e-3) -> dist.Distribution:
    """N(loc, softplus(raw) + min_scale) from params (..., 2, d), event dims 1."""
    loc, raw = params.unbind(-2)
    return dist.Normal(loc, nn.functional.softplus(raw) + min_scale).to_event(1)


class HierarchicalVAEModel(PyroModule):
    """p(z2) p(z1 | z2) p(x | z1), every site in the ``"data"`` plate.

    Args:
        prior_net: (..., z2_dim) -> (..., 2, z_dim), loc and raw scale of p(z1 | z2).
        decoder: (..., z_dim) -> (..., P, *event_shape), the likelihood's parameters.
        z_dim, z2_dim: sizes of z1 and z2.
        event_shape: shape of one observation.
        likelihood: a :class:`lvm_pyro.models.likelihoods.Likelihood`.
    """

    def __init__(self, prior_net: nn.Module, decoder: nn.Module, z_dim: int, z2_dim: int,
                 event_shape: Sequence[int], likelihood):
        super().__init__()
        self.prior_net, self.decoder = prior_net, decoder
        self.z_dim, self.z2_dim = int(z_dim), int(z2_dim)
        self.event_shape, self.likelihood = tuple(event_shape), likelihood

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        self.likelihood.check_support(x, OBS)
        zero = x.new_zeros(())
        with data_plate(x, num_data, idx):
            z2 = pyro.sample("z2", dist.Normal(zero, 1.0).expand([self.z2_dim]).to_event(1))
            z1 = pyro.sample("z1", _normal(self.prior_net(z2)))
            pyro.sample(OBS, self.likelihood(self.decoder(z1), len(self.event_shape)), obs=x)

    @torch.no_grad()
    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """Decoder mean E[x | z1]: (..., z_dim) -> (..., *event_shape)."""
        return self.likelihood.mean(self.decoder(z1), len(self.event_shape))


class HierarchicalVAEGuide(PyroModule):
    """q(z1 | x) q(z2 | z1), bottom up, in the ``"data"`` plate.

    Args:
        encoder: (..., *event_shape) -> (..., 2, z_dim).
        upper: (..., z_dim) -> (..., 2, z2_dim).
    """

    def __init__(self, encoder: nn.Module, upper: nn.Module):
        super().__init__()
        self.encoder, self.upper = encoder, upper

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        with data_plate(x, num_data, idx):
            z1 = pyro.sample("z1", _normal(self.encoder(x)))
            pyro.sample("z2", _normal(self.upper(z1)))


def build(config, event_shape: Sequence[int]):
    """The builder ``lvm-pyro fit --model examples.hierarchical_vae:build`` imports.

    Args:
        config: the run's model configuration, a
            :class:`lvm_pyro.training.config.UserModelConfig`: ``z_dim`` (z1),
            ``hidden_dim`` (one tanh hidden layer per network), ``likelihood`` and
            ``options["z2_dim"]`` (default 2, ``--model-arg z2_dim=N``).
        event_shape: shape of one observation, e.g. (1, 8, 8).

    Returns:
        (model, guide).
    """
    z_dim, h = config.z_dim, [config.hidden_dim]
    z2_dim = int(config.options.get("z2_dim", 2))
    lik = make_likelihood(config.likelihood)
    event_shape = tuple(event_shape)
    model = HierarchicalVAEModel(MLP((z2_dim,), h, (2, z_dim)),
                                 MLP((z_dim,), h, (lik.num_params, *event_shape)),
                                 z_dim, z2_dim, event_shape, lik)
    guide = HierarchicalVAEGuide(MLP(event_shape, h, (2, z_dim)), MLP((z_dim,), h, (2, z2_dim)))
    return model, guide
