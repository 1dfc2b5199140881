"""Pictures a person would rather see: sample grids, reconstructions, loss curves.
Image grids via torchvision, curves via matplotlib (Agg backend, files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pyro.poutine as poutine
import torch
from torchvision.utils import save_image

from ..inference.program import trace_guide_then_model, trace_program
from ..sites import OBS

__all__ = ["save_grid", "reconstruct", "prior_samples", "prior_draws", "save_scatter", "save_reconstructions", "save_loss_curve"]


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, min_size: int = 28) -> Path:
    """Save (n, C, H, W) images in [0, 1] as a PNG grid (torchvision.utils.save_image);
    images smaller than ``min_size`` pixels are enlarged by an integer factor (nearest
    neighbour) so that 8x8 digits stay visible."""
    path = Path(path)
    images = images.detach().float().clamp(0, 1).cpu()
    factor = -(-min_size // images.shape[-2])
    if factor > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=factor, mode="nearest")
    save_image(images, path, nrow=nrow, padding=2, pad_value=0.5)
    return path


def _picture(fn) -> torch.Tensor:
    """What a picture shows of an observation distribution: its mean; for the density of
    a dequantised model (v = L y, :class:`lvm_pyro.models.DequantizedModel`) that of the
    density over y in [0, 1]; a draw when no mean is known (a flow)."""
    try:
        return fn.mean
    except NotImplementedError:
        if isinstance(fn, torch.distributions.TransformedDistribution):
            ts = fn.transforms
            if (len(ts) == 1 and isinstance(ts[0], torch.distributions.AffineTransform)
                    and float(torch.as_tensor(ts[0].loc).abs().max()) == 0.0):
                return _picture(fn.base_dist)  # v = L y: show y
        return fn.sample()


@torch.no_grad()
def reconstruct(model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) at z ~ q(z | x), for any model / guide with an ``"x"`` site whose
    distribution has a ``mean``: (batch, ...) -> (batch, ...)."""
    mt, _ = trace_guide_then_model(model, guide, x, block=True)
    return _picture(mt.nodes[OBS]["fn"]).reshape(x.shape)


@torch.no_grad()
def prior_samples(model: Callable, x_like: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) at z ~ p(z), one per row of ``x_like`` (a batch of valid data used
    only for its shape; the observation is uncondition-ed)."""
    mt = trace_program(poutine.uncondition(model), x_like, keywords_of=model)
    return _picture(mt.nodes[OBS]["fn"]).reshape(x_like.shape)


@torch.no_grad()
def prior_draws(model: Callable, x_like: torch.Tensor) -> torch.Tensor:
    """Draws x ~ p(x) = int p(x | z) p(z) dz from the program itself (the observation
    uncondition-ed), one per row of ``x_like`` (used only for its shape)."""
    mt = trace_program(poutine.uncondition(model), x_like, keywords_of=model)
    return mt.nodes[OBS]["value"].reshape(x_like.shape)


def save_scatter(data: torch.Tensor, samples: torch.Tensor, path: str | Path) -> Path:
    """Scatter plot of 2-D data (n, 2) and model samples (m, 2) on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    d, m = data.detach().cpu().numpy(), samples.detach().cpu().numpy()
    ax.scatter(d[:, 0], d[:, 1], s=6, alpha=0.5, label="test data")
    ax.scatter(m[:, 0], m[:, 1], s=6, alpha=0.5, label="model samples")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_reconstructions(model, guide, x: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Originals (odd rows) above their reconstructions (even rows)."""
    rec = reconstruct(model, guide, x)
    rows = []
    for i in range(0, len(x), nrow):
        rows += [x[i:i + nrow], rec[i:i + nrow]]
    return save_grid(torch.cat(rows), path, nrow=nrow)


def save_loss_curve(history: Sequence[dict], path: str | Path, ylabel: str = "loss (nats / example)") -> Path:
    """Plot per-epoch training loss (and any ``test_*`` keys present) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["loss"] for h in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")  # "best" placement warns when slow
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
