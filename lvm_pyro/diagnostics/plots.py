"""Matplotlib figures of the diagnostics (no ArviZ styling needed; they work headless).

Every function returns a ``matplotlib.figure.Figure`` and, given ``path``, also saves it
(PNG, 120 dpi) and closes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .importance import khat_threshold

__all__ = ["plot_khat_histogram", "plot_kl_per_dimension", "plot_guide_vs_reference",
           "plot_sbc_ranks"]


def _figure(*args, **kwargs):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(*args, **kwargs)


def _finish(fig, path: Optional[str | Path]):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)


def plot_khat_histogram(khat, num_samples: int, *, path: Optional[str | Path] = None,
                        title: str = "PSIS k-hat of the guide, per datapoint"):
    """Histogram of k-hat values with lines at 0.5, 0.7 and ArviZ's threshold
    min(1 - 1/log10(S), 0.7); -inf values (exact guide) are counted in the legend."""
    k = _np(khat).ravel()
    finite = k[np.isfinite(k)]
    fig = _figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    if finite.size:
        ax.hist(finite, bins=40, color="0.55")
    thr = khat_threshold(num_samples)
    for v, style, label in ((0.5, ":", "0.5"), (0.7, "--", "0.7"),
                            (thr, "-", f"threshold {thr:.2f} (S={num_samples})")):
        ax.axvline(v, color="C3", ls=style, lw=1, label=f"k = {label}: {int(np.sum(k > v))} above")
    if np.any(k == -np.inf):
        ax.plot([], [], " ", label=f"{int(np.sum(k == -np.inf))} exact (k = -inf)")
    ax.set_xlabel("k-hat")
    ax.set_ylabel("datapoints")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")  # "best" warns when slow
    return _finish(fig, path)


def plot_kl_per_dimension(kl, *, active=None, path: Optional[str | Path] = None,
                          title: str = "E_x KL(q(z_d | x) || p(z_d)) per latent dimension"):
    """Bar chart of the mean KL (nats) per latent coordinate, sorted, active units (Burda
    et al.) in colour.

    Args:
        kl: (batch, num_dims) or (num_dims,) KL values (nats).
        active: optional (num_dims,) bool mask of active units.
    """
    kl = _np(kl)
    kl = kl.reshape(-1, kl.shape[-1]).mean(0) if kl.ndim > 1 else kl
    order = np.argsort(-kl)
    fig = _figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    colors = "0.6"
    if active is not None:
        act = _np(active).astype(bool).ravel()
        colors = ["C0" if act[d] else "0.7" for d in order]
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="C0", label=f"active ({int(act.sum())})"),
                           Patch(color="0.7", label=f"inactive ({int((~act).sum())})")],
                  fontsize=8, loc="upper right")
    ax.bar(np.arange(kl.size), kl[order], color=colors)
    ax.set_xticks(np.arange(kl.size))
    ax.set_xticklabels([str(d) for d in order], fontsize=6, rotation=90)
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(title + f"; total {kl.sum():.1f} nats", fontsize=10)
    return _finish(fig, path)


def plot_guide_vs_reference(reference, comparison, *, x=None, dims: Optional[Sequence[int]] = None,
                            max_dims: int = 4, labels: Optional[Sequence[str]] = None,
                            path: Optional[str | Path] = None):
    """Marginals of the guide's draws against the NUTS reference, one row per datapoint.

    Args:
        reference: :class:`~lvm_pyro.diagnostics.mcmc_reference.MCMCReference`.
        comparison: :class:`~lvm_pyro.diagnostics.mcmc_reference.GuideComparison`.
        x: optional (batch, C, H, W) images, drawn in the first column.
        dims: latent coordinates to show (default: per datapoint, the ``max_dims`` with
            the smallest reference sd, i.e. the ones the datapoint informs most).
        labels: optional text per datapoint (e.g. its index and k-hat), shown above the
            image (or the first panel).
    """
    ref = reference.samples.double()  # (C, D, batch, k)
    num_chains, num_draws, batch = ref.shape[:3]
    pooled = ref.reshape(num_chains * num_draws, batch, -1)
    q_datatree = comparison.guide_datatree
    name = q_datatree["posterior"].attrs.get("latent_site", "z")
    zq = np.asarray(q_datatree["posterior"][name].values)[0]  # (S, batch, ...)
    zq = zq.reshape(zq.shape[0], batch, -1)
    show_image = x is not None and x.dim() == 4 and x.shape[1] in (1, 3)
    ncols = (dims is not None and len(dims) or max_dims) + int(show_image)
    fig = _figure(figsize=(2.3 * ncols, 1.9 * batch))
    axes = np.asarray(fig.subplots(batch, ncols, squeeze=False))
    for i in range(batch):
        col = 0
        if show_image:
            img = x[i].detach().cpu().permute(1, 2, 0).squeeze(-1).numpy()
            axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[i, 0].set_axis_off()
            head = f"{labels[i]}\n" if labels is not None else ""
            axes[i, 0].set_title(head + f"ED {float(comparison.energy_distance[i]):.3f} "
                                 f"(NUTS {float(comparison.energy_distance_chains[i]):.3f})",
                                 fontsize=7)
            col = 1
        sd = pooled[:, i].std(0).numpy()
        chosen = list(dims) if dims is not None else list(np.argsort(sd)[:max_dims])
        for j, d in enumerate(chosen):
            ax = axes[i, col + j]
            r = pooled[:, i, d].numpy()
            q = zq[:, i, d]
            lo, hi = np.quantile(np.concatenate([r, q]), [0.002, 0.998])
            bins = np.linspace(lo, hi, 40)
            ax.hist(r, bins=bins, density=True, color="0.7", label="NUTS")
            ax.hist(q, bins=bins, density=True, histtype="step", color="C3", lw=1.2,
                    label="guide")
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            head = f"{labels[i]}: " if labels is not None and not show_image and j == 0 else ""
            ax.set_title(f"{head}z[{d}]  R-hat {float(reference.rhat[i, d]):.3f}", fontsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("guide q(z|x) (red) vs NUTS p(z|x) (grey); ED = energy distance", fontsize=9)
    return _finish(fig, path)


def plot_sbc_ranks(sbc, *, max_dims: int = 8, path: Optional[str | Path] = None):
    """Rank histograms of simulation-based calibration (Talts et al. 2018, figure 3), with
    the 99% band of a bin count under uniformity (binomial quantiles)."""
    from scipy.stats import binom

    counts = _np(sbc.counts).reshape(sbc.num_bins, -1)  # (bins, dims)
    pvals = _np(sbc.pvalues).ravel()
    n = int(counts[:, 0].sum())
    shown = np.argsort(pvals)[:max_dims]  # the least uniform first
    ncols = min(4, len(shown))
    nrows = int(np.ceil(len(shown) / ncols))
    fig = _figure(figsize=(2.6 * ncols, 2.1 * nrows))
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lo, hi = binom.ppf([0.005, 0.995], n, 1.0 / sbc.num_bins)
    for ax, d in zip(axes, shown):
        ax.axhspan(lo, hi, color="0.85")
        ax.bar(np.arange(sbc.num_bins), counts[:, d], color="C0", width=0.9)
        ax.set_title(f"z[{d}]  p = {pvals[d]:.2g}", fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    fig.suptitle(f"SBC ranks of {n} simulations, {sbc.num_draws} guide draws each "
                 f"(grey: 99% band); combined p = {sbc.pvalue:.2g}", fontsize=9)
    return _finish(fig, path)
