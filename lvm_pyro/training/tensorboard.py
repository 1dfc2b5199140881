"""TensorBoard logging of a run (``lvm-pyro fit --logger tensorboard``), through
``torch.utils.tensorboard``: a Trainer callback writing under ``RUN_DIR/tensorboard/``.

Per epoch: ``train/loss`` (nats per datapoint), ``test/elbo``, ``test/reconstruction``,
``test/kl`` and ``test/nll`` (importance-sampled, nats per example) on a fixed subset of
the test split, ``test/kl_per_dim/<d>`` (KL of each coordinate of the root latent,
:func:`lvm_pyro.diagnostics.kl_per_dimension`, when it applies) and, for image data, the
``samples`` (decoder means at prior draws) and ``reconstructions`` grids. With
``offset_nats`` (D log L for a density on uniformly dequantised data) the loss, ELBO,
reconstruction term and NLL are on the discrete data's scale, as in ``metrics.json``.

The callback draws its random numbers from a fixed seed and restores every RNG afterwards,
so a logged run trains exactly as an unlogged one (and resumes exactly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pyro
import torch

from .checkpoint import get_rng_state, set_rng_state

__all__ = ["TENSORBOARD_DIR", "LOGGERS", "TensorBoardLogger"]

TENSORBOARD_DIR = "tensorboard"
LOGGERS = ("none", "tensorboard")


class TensorBoardLogger:
    """Trainer callback ``cb(trainer, metrics)`` writing one TensorBoard event file.

    Args:
        run_dir: the run directory; events go to ``run_dir/tensorboard/``.
        model, guide: the programs being trained.
        x_test: (n, ...) fixed test points (transformed as evaluated), a few hundred.
        num_samples: importance samples K for ``test/nll``.
        seed: seed of the callback's own draws.
        offset_nats: nats added to the density's -log p to bound the discrete -log P
            (:func:`lvm_pyro.inference.bits_per_dim_offset`; 0 for discrete likelihoods).
        reconstructions: also log test images above their reconstructions (``False`` for
            an invertible flow, whose only latent is dequantisation noise).

    Raises:
        ValueError: ``num_samples < 1`` or empty ``x_test``.
    """

    def __init__(self, run_dir: str | Path, model: Callable, guide: Callable,
                 x_test: torch.Tensor, *, num_samples: int = 100, seed: int = 0,
                 offset_nats: float = 0.0, reconstructions: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if len(x_test) == 0:
            raise ValueError("x_test is empty; pass at least one test point")
        self.model, self.guide, self.x = model, guide, x_test
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.offset = float(offset_nats)
        self.reconstructions = bool(reconstructions)
        self.path = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.path))
        self._latent = None

    def __call__(self, trainer, metrics) -> None:
        epoch = metrics.epoch
        rng = get_rng_state()
        try:
            pyro.set_rng_seed(self.seed + epoch)
            self._log(epoch, metrics.loss)
        finally:
            set_rng_state(rng)
        self.writer.flush()

    @torch.no_grad()
    def _log(self, epoch: int, loss: float) -> None:
        from .. import diagnostics as D
        from ..inference import elbo_parts, log_marginal_likelihood
        from .diagnose import resolve_latent
        from .pictures import prior_samples, reconstruct

        w, x = self.writer, self.x
        c = self.offset
        w.add_scalar("train/loss", loss + c, epoch)
        parts = elbo_parts(self.model, self.guide, x)
        w.add_scalar("test/elbo", float(parts.elbo.mean()) - c, epoch)
        w.add_scalar("test/reconstruction", float(parts.reconstruction.mean()) - c, epoch)
        w.add_scalar("test/kl", float(parts.kl.mean()), epoch)
        nll = -log_marginal_likelihood(self.model, self.guide, x, num_samples=self.num_samples)
        w.add_scalar("test/nll", float(nll.mean()) + c, epoch)
        try:
            if self._latent is None:
                self._latent = resolve_latent(self.guide, x[:2])
            kl = D.kl_per_dimension(self.model, self.guide, x, latent=self._latent)
            for d, v in enumerate(kl.double().mean(0).flatten().tolist()):
                w.add_scalar(f"test/kl_per_dim/{d}", v, epoch)
        except ValueError:  # no single root latent with per-coordinate KL (NotApplicableError)
            pass
        if x.dim() == 4:  # images (N, C, H, W)
            from torchvision.utils import make_grid

            grid = make_grid(prior_samples(self.model, x[:64]).clamp(0, 1).float().cpu(), nrow=8)
            w.add_image("samples", grid, epoch)
        if x.dim() == 4 and self.reconstructions:
            xs = x[:32]
            rec = reconstruct(self.model, self.guide, xs)
            pairs = torch.stack([xs, rec], 1).flatten(0, 1)  # original, reconstruction, ...
            w.add_image("reconstructions", make_grid(pairs.clamp(0, 1).float().cpu(), nrow=8),
                        epoch)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
