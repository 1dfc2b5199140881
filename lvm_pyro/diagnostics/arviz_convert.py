"""Guide draws (and MCMC draws) as ArviZ 1.x data structures (``xarray.DataTree``).

Layout of :func:`to_datatree`::

    /posterior        z            (chain, draw, datapoint, z_dim)     guide draws z ~ q(z | x_i)
    /observed_data    x            (datapoint, *x dims)                the observations
    /sample_stats     log_weight   (chain, draw, datapoint)            log p(x_i, z) - log q(z | x_i)
    /importance       khat, ess, log_marginal   (datapoint,)          :func:`importance_diagnostics`

The guide's draws are independent, so they form one chain (``chain = 1``): bulk/tail ESS
and MCSE from ArviZ are meaningful, R-hat is not (ArviZ reports NaN with one chain). The
draws differ per datapoint (each row has its own posterior), so there is deliberately no
``log_likelihood`` group: PSIS-LOO over them would mean nothing.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..inference.program import discover, latent_sites
from ..sites import LATENT, OBS
from .importance import EXACT_TOL, MIN_SAMPLES, importance_diagnostics, sample_log_weights

__all__ = ["to_datatree", "draws_to_datatree", "latent_dims", "observed_dims"]

#: attrs stored on the posterior group of guide draws
GUIDE_DRAWS_NOTE = ("independent draws z ~ q(z | x_i) from the amortised guide, one chain per "
                    "datapoint row; R-hat is undefined (one chain), ESS/MCSE are valid")


def latent_dims(name: str, event_shape: Sequence[int]) -> list[str]:
    """Dimension names of one latent draw: ``["z_dim"]`` for a vector, ``["z_dim_0",
    "z_dim_1", ...]`` for an array-valued latent (``name`` replaces ``z``)."""
    if len(event_shape) == 1:
        return [f"{name}_dim"]
    return [f"{name}_dim_{i}" for i in range(len(event_shape))]


def observed_dims(shape: Sequence[int]) -> list[str]:
    """Dimension names of one observation: ``["channel", "height", "width"]`` for images
    (C, H, W), otherwise ``["x_dim_0", ...]``."""
    if len(shape) == 3:
        return ["channel", "height", "width"]
    if len(shape) == 1:
        return ["x_dim"]
    return [f"x_dim_{i}" for i in range(len(shape))]


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def draws_to_datatree(z: torch.Tensor | np.ndarray, *, x: Optional[torch.Tensor] = None,
                      log_w: Optional[torch.Tensor] = None, num_chains: Optional[int] = None,
                      datapoint_index: Optional[Sequence[int]] = None, latent: str = LATENT,
                      attrs: Optional[dict] = None, sample_stats: Optional[dict] = None):
    """Build an ArviZ ``DataTree`` from draws of a per-datapoint latent.

    Args:
        z: draws of shape (S, batch, *event_shape) (one chain; guide draws) or
            (num_chains, draws, batch, *event_shape) when ``num_chains`` is given
            (MCMC chains).
        x: optional (batch, *x_shape) observations -> ``observed_data`` group.
        log_w: optional (S, batch) log weights -> ``sample_stats.log_weight`` (one chain).
        num_chains: number of chains when z has a leading chain dimension.
        datapoint_index: coordinate values of the ``datapoint`` dim (default 0..batch-1),
            e.g. the rows' indices in the test set.
        latent: variable name (and dim prefix) of the latent.
        attrs: attributes of the posterior group.
        sample_stats: more (chains, draws, batch) arrays for ``sample_stats`` (e.g.
            ``diverging``).

    Returns:
        ``xarray.DataTree`` with groups ``posterior`` (+ ``observed_data``,
        ``sample_stats`` when given); dims ``chain, draw, datapoint, <latent>_dim...``.

    Raises:
        ValueError: inconsistent shapes.
    """
    import arviz as az

    zn = _np(z)
    if num_chains is None:
        if zn.ndim < 2:
            raise ValueError(f"z must be (num_samples, batch, ...), got shape {zn.shape}")
        zn = zn[None]
    elif zn.ndim < 3 or zn.shape[0] != num_chains:
        raise ValueError(f"z must be (num_chains={num_chains}, draws, batch, ...), got {zn.shape}")
    batch = zn.shape[2]
    event_shape = zn.shape[3:]
    if len(event_shape) == 0:
        zn = zn[..., None]
        event_shape = (1,)
    index = np.arange(batch) if datapoint_index is None else np.asarray(datapoint_index)
    if index.shape != (batch,):
        raise ValueError(f"datapoint_index must have {batch} entries, got {index.shape}")
    zdims = latent_dims(latent, event_shape)
    dims = {latent: ["datapoint", *zdims]}
    coords = {"datapoint": index, **{d: np.arange(n) for d, n in zip(zdims, event_shape)}}
    data = {"posterior": {latent: zn}}
    if x is not None:
        xn = _np(x)
        if xn.shape[0] != batch:
            raise ValueError(f"x has {xn.shape[0]} rows but z has {batch} datapoints")
        xdims = observed_dims(xn.shape[1:])
        dims[OBS] = ["datapoint", *xdims]
        coords.update({d: np.arange(n) for d, n in zip(xdims, xn.shape[1:])})
        data["observed_data"] = {OBS: xn}
    stats = {}
    if log_w is not None:
        lw = _np(log_w).astype(np.float64)
        if lw.shape != (zn.shape[1], batch) or zn.shape[0] != 1:
            raise ValueError(f"log_w must be (num_samples={zn.shape[1]}, batch={batch}) for one "
                             f"chain of draws, got {lw.shape}")
        stats["log_weight"] = lw[None]
        dims["log_weight"] = ["datapoint"]
    for name, value in (sample_stats or {}).items():
        value = _np(value)
        if value.shape[:3] != zn.shape[:3]:
            raise ValueError(f"sample_stats[{name!r}] must be (chains, draws, batch), got "
                             f"{value.shape}")
        stats[name] = value
        dims[name] = ["datapoint"]
    if stats:
        data["sample_stats"] = stats
    dt = az.from_dict(data, dims=dims, coords=coords)
    dt["posterior"].attrs.update({"latent_site": latent, **(attrs or {})})
    return dt


def to_datatree(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int = 500, *,
                latent: str = LATENT, datapoint_index: Optional[Sequence[int]] = None,
                diagnostics: bool = True, exact_tol: float = EXACT_TOL,
                chunk_size: Optional[int] = None):
    """Draw from the guide for every datapoint and return an ArviZ ``DataTree``.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        x: (batch, ...) observations.
        num_samples: S independent guide draws per datapoint (the ``draw`` dim).
        latent: the guide's main latent site (``"z"``); every other latent site of the
            guide (e.g. z2 of a hierarchical guide q(z1 | x) q(z2 | z1, x)) is kept too,
            as its own ``posterior`` variable with ``<name>_dim`` dims.
        datapoint_index: coordinates of the ``datapoint`` dim (default 0..batch-1).
        diagnostics: add the ``importance`` group (k-hat, ESS, log p(x) estimate per
            datapoint, from the same log weights; needs S >= 25).
        exact_tol, chunk_size: see :func:`importance_diagnostics`.

    Returns:
        ``xarray.DataTree``: ``posterior.z`` (chain=1, draw=S, datapoint, z_dim),
        ``observed_data.x``, ``sample_stats.log_weight`` (chain, draw, datapoint) and,
        with ``diagnostics``, ``importance.{khat, ess, log_marginal}`` (datapoint). Ready
        for ``az.summary``, ``az.ess``, ``az.plot_dist``, ``az.plot_forest``.

    Raises:
        ValueError: a guide without site ``latent``, S < 25 with ``diagnostics``, or any
        error of the engine.
    """
    import xarray as xr

    if diagnostics and num_samples < MIN_SAMPLES:
        raise ValueError(f"num_samples must be >= {MIN_SAMPLES} with diagnostics=True, got "
                         f"{num_samples}; pass diagnostics=False for fewer draws")
    names = [latent] + [n for n, _ in latent_sites(discover(model, guide, x).guide_trace)
                        if n != latent]
    log_w, draws = sample_log_weights(model, guide, x, num_samples, latent=names,
                                      chunk_size=chunk_size)
    dt = draws_to_datatree(draws[latent], x=x, log_w=log_w, datapoint_index=datapoint_index,
                           latent=latent, attrs={"draws": GUIDE_DRAWS_NOTE})
    coord = dt["posterior"]["datapoint"].values
    for name in names[1:]:
        zn = _np(draws[name])  # (S, batch, *event)
        if zn.ndim == 2:
            zn = zn[..., None]
        zdims = latent_dims(name, zn.shape[2:])
        dt["posterior"][name] = xr.DataArray(
            zn[None], dims=["chain", "draw", "datapoint", *zdims],
            coords={"chain": dt["posterior"]["chain"].values,
                    "draw": dt["posterior"]["draw"].values, "datapoint": coord,
                    **{d: np.arange(n) for d, n in zip(zdims, zn.shape[2:])}})
    if diagnostics:
        d = importance_diagnostics(model, guide, x, log_w=log_w, exact_tol=exact_tol)
        coord = dt["posterior"]["datapoint"].values
        ds = xr.Dataset({name: ("datapoint", _np(getattr(d, name)))
                         for name in ("khat", "ess", "log_marginal")},
                        coords={"datapoint": coord},
                        attrs={"num_samples": d.num_samples, "khat_threshold": d.threshold,
                               "exact_tol_nats": exact_tol, "units": "nats"})
        dt["importance"] = xr.DataTree(ds)
    return dt
