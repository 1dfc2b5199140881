"""Bernoulli encoder guide for the sigmoid belief network, with optional NVIL baselines."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nn import MLP
from ..sites import LATENT, data_plate
from ..registration import CachedPyroModule

__all__ = ["SigmoidBeliefNetGuide", "InputBaseline"]


class InputBaseline(nn.Module):
    """Input-dependent baseline b_psi(x) of NVIL (Mnih & Gregor 2014, section 3.3):
    ``output_scale * MLP(x)``, (..., *in_shape) -> (...,), nats per datapoint.

    ``output_scale`` (default: the number of input elements D) puts the O(1) output of a
    fresh network on the scale of a learning signal that sums D log-likelihood terms.
    """

    def __init__(self, in_shape: Sequence[int], hidden_dims: Sequence[int] = (100,),
                 output_scale: Optional[float] = None):
        super().__init__()
        self.net = MLP(in_shape, hidden_dims, (1,), activation="tanh")
        self.output_scale = float(output_scale if output_scale is not None else math.prod(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) * self.output_scale


class SigmoidBeliefNetGuide(CachedPyroModule):
    """Bernoulli encoder q(z_1, ..., z_L | x), bottom-up::

        z_1 ~ Bernoulli(sigmoid(encoders[0](x)))            site "z"
        z_l ~ Bernoulli(sigmoid(encoders[l-1](z_{l-1})))     site "z<l>", l >= 2

    inside the ``"data"`` plate (site names as :class:`~lvm_pyro.models.
    SigmoidBeliefNetModel`). The sites are not reparameterisable; Pyro's
    ``TraceGraph_ELBO`` estimates their gradients by the score function with each
    site's downstream cost as learning signal.

    With ``baselines`` (one module per layer, e.g. :class:`InputBaseline`) every site
    declares the NVIL input-dependent baseline ``infer={"baseline": {"baseline_value":
    (N/B) * b_l(x)}}`` (Mnih & Gregor 2014, eq. 9-10 without variance normalisation),
    trained by TraceGraph_ELBO's baseline loss sum (f - b)^2; the N/B factor matches
    the data plate's scaling of the downstream cost. The value has the data plate's
    shape (batch,), so TraceGraph_ELBO must run its particles unvectorised
    (``vectorize_particles=False``); other objectives ignore it.

    Args:
        encoders: modules; encoders[0]: (..., *event_shape) -> (..., z_dims[0]);
            encoders[l]: (..., z_dims[l-1]) -> (..., z_dims[l]) (Bernoulli logits).
        z_dims: layer sizes, bottom up.
        baselines: optional, one module b_l(x): (batch, *event_shape) -> (batch,) per
            layer.

    Raises:
        ValueError: mismatched numbers of encoders / baselines and layers.
    """

    def __init__(self, encoders: Sequence[nn.Module], z_dims: Sequence[int],
                 baselines: Optional[Sequence[nn.Module]] = None):
        super().__init__()
        z_dims = [int(d) for d in z_dims]
        if len(encoders) != len(z_dims):
            raise ValueError(f"{len(z_dims)} stochastic layers need {len(z_dims)} encoders, "
                             f"got {len(encoders)}")
        if baselines is not None and len(baselines) != len(z_dims):
            raise ValueError(f"need one baseline per layer ({len(z_dims)}), got {len(baselines)}")
        self.encoders = nn.ModuleList(encoders)
        self.baselines = None if baselines is None else nn.ModuleList(baselines)
        self.z_dims = z_dims
        self.site_names = [LATENT] + [f"{LATENT}{l + 1}" for l in range(1, len(z_dims))]

    def check_data(self, x: torch.Tensor) -> None:
        """This guide runs no data checks of its own (the model checks x); present so
        that a caller who validated the data set once may skip the model's per-call
        checks (:mod:`lvm_pyro.checks`)."""

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        h = x
        with data_plate(x, num_data, idx):
            for l, name in enumerate(self.site_names):
                infer = {}
                if self.baselines is not None:
                    b = scale * self.baselines[l](x.detach())  # (batch,)
                    infer = {"baseline": {"baseline_value": b}}
                h = pyro.sample(name, dist.Bernoulli(logits=self.encoders[l](h)).to_event(1),
                                infer=infer)
        return h

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(z_1 = 1 | x): (batch, z_dims[0]), for pictures and diagnostics."""
        return torch.sigmoid(self.encoders[0](x))
