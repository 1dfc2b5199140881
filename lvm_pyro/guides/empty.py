"""The empty guide: for models whose latents are all enumerated or are point parameters."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["EmptyGuide"]


class EmptyGuide:
    """A guide with no sample sites, following the site convention's signature.

    With ``TraceEnum_ELBO`` and a model whose only latent is enumerated (e.g.
    :class:`lvm_pyro.models.GaussianMixtureModel`) the loss is then exactly -log p(x) of
    the minibatch, scaled by N / batch. It accepts ``num_data`` / ``idx`` so that the
    training loop reports the loss per datapoint (a plain ``lambda x: None`` would not).
    """

    def __call__(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                 idx: Optional[torch.Tensor] = None) -> None:
        return None

    def __repr__(self) -> str:
        return "EmptyGuide()"
