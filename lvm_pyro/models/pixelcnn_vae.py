"""VAE with an autoregressive PixelCNN decoder (PixelVAE, Gulrajani et al. 2016) and, with a
small receptive field, the local decoder of the variational lossy autoencoder (VLAE, Chen et
al. 2016, Sec. 3).

The decoder is the gated PixelCNN of :class:`lvm_pyro.nn.pixelcnn.GatedPixelCNN` (vertical
and horizontal stacks, no blind spot) conditioned on z as in the conditional PixelCNN (van
den Oord et al. 2016, Eq. 4 with h = z: a learnt linear map of z added to the vertical and
horizontal pre-activations of every layer). When the decoder's receptive field covers what
the data's pixels depend on, the best ELBO is reached with q(z | x) = p(z) and z carries
nothing (posterior collapse, Chen et al. 2016, Sec. 2.2); a decoder that sees only a small
causal window has to route the global structure of the image through z.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch

from ..nn.pixelcnn import GatedPixelCNN
from ..nn.pixelcnn_sampling import inverse_cdf, sample_cached, sample_naive
from ..registration import CachedPyroModule
from ..sites import LATENT, OBS, data_plate
from ..checks import data_checks_enabled
from .likelihoods import (BernoulliLikelihood, DiscretizedLogisticLikelihood, Likelihood,
                          ObservationChecks, make_likelihood)

__all__ = ["PixelCNNDecoderVAE"]

#: images per decoder call when particle and data dimensions are folded into one batch
DEFAULT_MAX_BATCH = 4096


class PixelCNNDecoderVAE(ObservationChecks, CachedPyroModule):
    """VAE whose decoder is a PixelCNN over the pixels, conditioned on z::

        z ~ N(0, I_{z_dim})                                        site "z"
        x_ij | x_<ij, z ~ p(x_ij | PixelCNN(x_<ij, z)[i, j])        raster order
        p(x | z) = prod_ij p(x_ij | x_<ij, z)                       site "x", event (1, H, W)

    both inside ``pyro.plate("data", num_data, subsample=idx)``. Pair it with
    :class:`lvm_pyro.guides.AmortizedNormalGuide` (same ``z_dim``). The log-weight engine,
    :func:`lvm_pyro.inference.log_marginal_likelihood`, ``IWAE_ELBO`` and the diagnostics
    run it unchanged: a leading particle dimension of z is folded into the decoder's batch
    (in chunks of ``max_batch`` images), so p(x | z_k) costs one decoder pass per particle.

    Pixels: ``"bernoulli"`` (binary images, x in {0, 1}; the network's two-way softmax,
    so the cached sampler applies) or ``"discretized_logistic"`` (L-level images on the
    grid k / (L - 1), one logistic per pixel, Salimans et al. 2017, Eq. 2; the network
    embeds the L levels and outputs location and log-scale). One image channel.

    Args:
        z_dim: latent size (>= 1).
        event_shape: (1, H, W), the shape of one image.
        likelihood: ``"bernoulli"``, ``"discretized_logistic"``, or a
            :class:`BernoulliLikelihood` / :class:`DiscretizedLogisticLikelihood`.
        channels: width of the gated stacks (default 32).
        num_layers: gated layers L (default 5).
        kernel_size: odd k >= 3 (default 3). The receptive field reaches
            ``(k // 2) * L`` pixels up, left and right (:attr:`receptive_radius`); the
            VLAE local decoder is ``num_layers=1, kernel_size=3`` (or 5).
        head_dim: width of the 1x1 output head (default 2 * channels).
        max_batch: images per decoder call (memory bound when particles are folded in).

    ``forward(x, *, num_data=None, idx=None)``: x (batch, 1, H, W) float.

    Raises:
        ValueError: sizes out of range, an event shape other than (1, H, W), an unknown
            likelihood; at ``forward``, x of the wrong shape or outside the likelihood's
            support (e.g. non-binary data for ``"bernoulli"``).
    """

    def __init__(self, z_dim: int, event_shape: Sequence[int],
                 likelihood: Union[str, Likelihood] = "bernoulli", channels: int = 32,
                 num_layers: int = 5, kernel_size: int = 3, head_dim: Optional[int] = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        event_shape = tuple(int(s) for s in event_shape)
        if len(event_shape) != 3 or event_shape[0] != 1 or min(event_shape) < 1:
            raise ValueError(f"event_shape must be (1, H, W) (one image channel; colour needs "
                             f"the channel masks of van den Oord et al. 2016), got {event_shape}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if isinstance(likelihood, str):
            likelihood = make_likelihood(likelihood)
        if isinstance(likelihood, BernoulliLikelihood):
            num_codes, num_outputs = 2, 2
        elif isinstance(likelihood, DiscretizedLogisticLikelihood):
            num_codes, num_outputs = likelihood.num_levels, likelihood.num_params
        else:
            raise ValueError("likelihood must be 'bernoulli' or 'discretized_logistic' (a "
                             f"discrete pixel likelihood), got {type(likelihood).__name__}")
        self.z_dim, self.event_shape = int(z_dim), event_shape
        self.likelihood = likelihood
        self.max_batch = int(max_batch)
        self.net = GatedPixelCNN(num_codes, channels, num_layers, kernel_size, head_dim=head_dim,
                                 cond_dim=self.z_dim, num_outputs=num_outputs)
        self.hyperparameters: dict[str, Any] = {
            "z_dim": self.z_dim, "event_shape": list(event_shape), "likelihood": likelihood.name,
            "channels": int(channels), "num_layers": int(num_layers),
            "kernel_size": int(kernel_size), "head_dim": self.net.head[1].out_channels}

    # -- receptive field ---------------------------------------------------------------
    @property
    def receptive_radius(self) -> int:
        """Pixels the conditional of x_ij reaches up, left and right: (k // 2) * L."""
        return self.net.receptive_radius

    @property
    def receptive_field(self) -> int:
        """Number of earlier pixels the conditional p(x_ij | x_<ij, z) depends on, for a
        pixel at least :attr:`receptive_radius` away from the top, left and right borders:
        R (2R + 1) above plus R to the left, R = :attr:`receptive_radius` (e.g. 4 for the
        one-layer 3x3 local decoder, 60 for five layers)."""
        r = self.receptive_radius
        return r * (2 * r + 1) + r

    @property
    def covers_image(self) -> bool:
        """Whether every pixel's conditional sees all earlier pixels (R >= H - 1 and R >=
        W - 1): the decoder can then model any image distribution without z."""
        _, height, width = self.event_shape
        return self.receptive_radius >= max(height, width) - 1

    # -- decoder -----------------------------------------------------------------------
    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values (..., 1, H, W) float -> symbols (..., H, W) int64."""
        if isinstance(self.likelihood, BernoulliLikelihood):
            return x[..., 0, :, :].round().long()
        top = self.likelihood.num_levels - 1
        return (x[..., 0, :, :] * top).round().long()

    def _to_params(self, out: torch.Tensor) -> torch.Tensor:
        """Network output (B, K, H, W) -> likelihood params (B, P, 1, H, W)."""
        if isinstance(self.likelihood, BernoulliLikelihood):
            # Bernoulli logit = difference of the two-way softmax logits
            return (out[:, 1] - out[:, 0])[:, None, None]  # (B, 1, 1, H, W)
        return out[:, :, None]  # (B, P, 1, H, W)

    def decoder_params(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Parameters of p(x_ij | x_<ij, z) for every pixel (teacher forcing).

        Args:
            x: (*batch_x, 1, H, W) float images.
            z: (*batch_z, z_dim) float latents; ``batch_x`` and ``batch_z`` broadcast (a
                leading particle dimension of z over a data batch of x).

        Returns:
            (*batch, P, 1, H, W) float, P = ``likelihood.num_params``, ``batch`` the
            broadcast batch shape; the entry at (i, j) depends only on z and on the pixels
            before (i, j) in raster order.
        """
        if z.shape[-1] != self.z_dim:
            raise ValueError(f"z must be (..., {self.z_dim}), got {tuple(z.shape)}")
        batch = torch.broadcast_shapes(x.shape[:-3], z.shape[:-1])
        codes = self._codes(x).expand(*batch, *self.event_shape[1:]).reshape(-1, *self.event_shape[1:])
        zf = z.expand(*batch, self.z_dim).reshape(-1, self.z_dim)  # (B', z_dim)
        out = [self._to_params(self.net(codes[s:s + self.max_batch], zf[s:s + self.max_batch]))
               for s in range(0, codes.shape[0], self.max_batch)]
        params = torch.cat(out) if len(out) > 1 else out[0]  # (B', P, 1, H, W)
        return params.reshape(*batch, *params.shape[1:])

    def conditional(self, x: torch.Tensor, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) as a distribution with event shape (1, H, W), evaluated at the pixels of
        ``x`` (teacher forcing; its ``log_prob(x)`` is log p(x | z) in nats). Shapes as
        :meth:`decoder_params`."""
        return self.likelihood(self.decoder_params(x, z), len(self.event_shape))

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None) -> None:
        if data_checks_enabled():
            self.check_data(x)
        zero = x.new_zeros(())
        with data_plate(x, num_data, idx):
            z = pyro.sample(LATENT, dist.Normal(zero, 1.0).expand([self.z_dim]).to_event(1))
            pyro.sample(OBS, self.conditional(x, z), obs=x)

    # -- sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def sample_x(self, z: torch.Tensor, *, method: Optional[str] = None,
                 uniforms: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ancestral draw x ~ p(x | z), pixel by pixel in raster order.

        Args:
            z: (B, z_dim) latents.
            method: ``"cached"`` (Bernoulli pixels only, the default there: the cached
                sampler of Ramachandran et al. 2017, about one forward pass of work) or
                ``"naive"`` (H * W forward passes; the default, and the only method, for
                discretised-logistic pixels, whose level probabilities are not a softmax
                of the network's outputs). Both consume the same uniforms by inverse-CDF
                sampling, so they give the same images.
            uniforms: optional (B, H, W) in [0, 1) in the network's dtype and device.
            generator: RNG for the uniforms when not given.

        Returns:
            (B, 1, H, W) float images (values in {0, 1}, or on the grid k / (L - 1)).

        Raises:
            ValueError: bad shapes, an unknown method, ``"cached"`` with a discretised
                logistic.
        """
        bernoulli = isinstance(self.likelihood, BernoulliLikelihood)
        method = ("cached" if bernoulli else "naive") if method is None else method
        if method not in ("cached", "naive"):
            raise ValueError(f"method must be 'cached' or 'naive', got {method!r}")
        if method == "cached" and not bernoulli:
            raise ValueError("the cached sampler draws from the network's softmax; sample a "
                             "discretised-logistic decoder with method='naive'")
        if z.dim() != 2 or z.shape[-1] != self.z_dim:
            raise ValueError(f"z must be (batch, {self.z_dim}), got {tuple(z.shape)}")
        p = next(self.net.parameters())
        shape = (z.shape[0], *self.event_shape[1:])
        if uniforms is None:
            uniforms = torch.rand(shape, generator=generator, dtype=p.dtype, device=p.device)
        elif tuple(uniforms.shape) != shape:
            raise ValueError(f"uniforms must have shape {shape}, got {tuple(uniforms.shape)}")
        z = z.to(dtype=p.dtype, device=p.device)
        if bernoulli:
            fn = sample_cached if method == "cached" else sample_naive
            return fn(self.net, uniforms, z).codes[:, None].to(p.dtype)
        return self._sample_levels_naive(z, uniforms)

    def _sample_levels_naive(self, z: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        top = self.likelihood.num_levels - 1
        b, height, width = uniforms.shape
        codes = torch.zeros(b, height, width, dtype=torch.long, device=uniforms.device)
        levels = torch.arange(top + 1, dtype=uniforms.dtype, device=uniforms.device) / top
        for i in range(height):
            for j in range(width):
                params = self.net(codes, z)[:, :, i, j]  # (B, P)
                d = self.likelihood.dist(params, 0)  # batch (B,)
                log_p = d.log_prob(levels[:, None]).t()  # (B, L)
                codes[:, i, j] = inverse_cdf(log_p, uniforms[:, i, j])
        return (codes.to(uniforms.dtype) / top)[:, None]

    @torch.no_grad()
    def sample(self, num_samples: int, *, generator: Optional[torch.Generator] = None,
               method: Optional[str] = None) -> torch.Tensor:
        """Images from the model: z ~ N(0, I), x ~ p(x | z) by :meth:`sample_x`;
        (num_samples, 1, H, W) float.

        Raises:
            ValueError: ``num_samples < 1`` or an error of :meth:`sample_x`.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        p = next(self.net.parameters())
        z = torch.randn(num_samples, self.z_dim, generator=generator, dtype=p.dtype, device=p.device)
        return self.sample_x(z, method=method, generator=generator)
