"""Evaluation on any model / guide pair: per-datapoint ELBO, importance-sampled log p(x),
and NLL / bits-per-dim summaries with standard errors."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Optional

import pyro
import torch

from ..checks import skip_data_checks
from ..memo import reuse_within
from .log_weights import (LogWeights, guess_max_plate_nesting, log_weights,
                          site_log_prob_per_datapoint)
from .program import check_not_point_mass, latent_sites, observed_sites

__all__ = ["iter_log_weights", "log_marginal_likelihood", "elbo_per_datapoint", "NLLSummary", "summarize_nll",
           "bits_per_dim", "logmeanexp", "BitsPerDimOffset", "bits_per_dim_offset", "NLLReport",
           "nll_report", "ELBOParts", "elbo_parts"]

#: default number of (particle x datapoint x data-element) floats evaluated at once on an
#: accelerator (its caching allocator reuses chunk buffers of any size)
DEFAULT_ELEMENT_BUDGET = 2 ** 24
#: the same on the CPU: 2**22 float32 elements are 16 MiB per tensor, under glibc's largest
#: dynamic mmap threshold (32 MiB), so each chunk's buffers are reused from the heap; above
#: it every buffer is a fresh mmap, page-faulted in and returned on free. At 2**24 those
#: page faults were about 40% of the CPU time of a 200-image x 5000-particle evaluation
#: (``benchmarks/bench_nll_eval.py``)
CPU_ELEMENT_BUDGET = 2 ** 22


def default_element_budget(device: torch.device) -> int:
    """Floats evaluated at once by default on ``device``: :data:`CPU_ELEMENT_BUDGET` on the
    CPU, :data:`DEFAULT_ELEMENT_BUDGET` elsewhere."""
    return CPU_ELEMENT_BUDGET if torch.device(device).type == "cpu" else DEFAULT_ELEMENT_BUDGET


def logmeanexp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Numerically stable log (1/K) sum_k exp(log_w_k) along ``dim`` (K = size of dim)."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def _chunk(num_samples: int, x: torch.Tensor, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(chunk_size, num_samples)
    per_particle = max(1, x.numel())
    return max(1, min(num_samples, default_element_budget(x.device) // per_particle))


def iter_log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, *,
                     chunk_size: Optional[int] = None, num_data: Optional[int] = None,
                     idx: Optional[torch.Tensor] = None,
                     max_plate_nesting: Optional[int] = None,
                     vectorize_particles: bool = True) -> Iterator[LogWeights]:
    """:func:`log_weights` for ``num_samples`` particles per datapoint, in chunks of at most
    ``chunk_size`` particles (default: as many as keep particles x elements of x under
    :func:`default_element_budget`: 2**22 on the CPU, 2**24 elsewhere), so that memory is
    O(chunk x batch). Yields one :class:`LogWeights` per chunk;
    the chunks' ``log_w`` (k, batch) together hold ``num_samples`` rows. Chunks after the
    first run with Pyro's validation and our programs' data checks off (the first one
    checks the programs and x as the caller's setting says), and an amortised guide's
    encoder output is computed once for all chunks (:mod:`lvm_pyro.memo`; without
    gradients only).
    ``vectorize_particles=False`` runs the particles one at a time (see
    :func:`log_weights`).

    Raises:
        ValueError: ``num_samples < 1``, ``chunk_size < 1``, or an error of
        :func:`log_weights`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, num_data, idx)
    chunk = _chunk(num_samples, x, chunk_size)
    done = 0
    memo: dict = {}  # the guide's particle-invariant outputs (lvm_pyro.memo), per call
    while done < num_samples:
        k = min(chunk, num_samples - done)
        # the first chunk runs with Pyro's validation and our programs' data checks as
        # the caller has them; the others, the same programs on the same x with fresh
        # draws of q, without them (the per-draw support checks of every latent; x was
        # checked by the first chunk)
        later = contextlib.ExitStack()
        if done:
            later.enter_context(pyro.validation_enabled(False))
            later.enter_context(skip_data_checks())
        with later, reuse_within(memo):
            out = log_weights(model, guide, x, k, num_data=num_data, idx=idx,
                              max_plate_nesting=max_plate_nesting,
                              vectorize_particles=vectorize_particles)
        yield out
        del out  # hold one chunk's traces at a time (the caller should drop its reference too)
        done += k


@torch.no_grad()
def log_marginal_likelihood(model: Callable, guide: Callable, x: torch.Tensor,
                            num_samples: int = 1000, *, chunk_size: Optional[int] = None,
                            num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None,
                            max_plate_nesting: Optional[int] = None,
                            vectorize_particles: bool = True) -> torch.Tensor:
    """Importance-sampled estimate of log p(x_i) per datapoint, the guide as proposal.

    log p(x_i) ~= log (1/K) sum_k p(x_i, z_k) / q(z_k | x_i), z_k ~ q(. | x_i)
    (Burda et al. 2015, eq. 8: the K-sample IWAE bound; a lower bound in expectation that
    tends to log p(x_i) as K grows).

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        x: (batch, ...) observations.
        num_samples: K >= 1 importance samples per datapoint.
        chunk_size: particles evaluated per vectorised pass (default: as many as keep
            particles x elements under :func:`default_element_budget`, 2**22 on the CPU,
            2**24 elsewhere); chunks are combined with a running logsumexp, so memory is O(chunk x batch) and the result does not depend on it
            beyond floating-point rounding.
        num_data, idx, max_plate_nesting: as for :func:`lvm_pyro.inference.log_weights`.
        vectorize_particles: ``False`` runs the particles one at a time, for programs
            that do not broadcast over a leading particle dimension (slower).

    Returns:
        (batch,) tensor, nats, in the dtype of the programs' log densities (x's floating
        dtype for the shipped models).

    Raises:
        ValueError: ``num_samples < 1``; a guide whose continuous latent is a point mass
        (``Delta``, e.g. ``AutoDelta``: its log q = 0 would turn log p(x, z_MAP) into a
        fake log p(x)); or any error of :func:`lvm_pyro.inference.log_weights`.
    """
    running = None
    for out in iter_log_weights(model, guide, x, num_samples, chunk_size=chunk_size,
                                num_data=num_data, idx=idx, max_plate_nesting=max_plate_nesting,
                                vectorize_particles=vectorize_particles):
        if running is None:
            check_not_point_mass(out.model_trace, out.guide_trace, "log_marginal_likelihood")
        part = torch.logsumexp(out.log_w, dim=0)
        running = part if running is None else torch.logaddexp(running, part)
        del out  # the chunk's traces (decoder outputs): freed before the next chunk runs
    return running - math.log(num_samples)


@torch.no_grad()
def elbo_per_datapoint(model: Callable, guide: Callable, x: torch.Tensor,
                       num_samples: int = 1, **kwargs) -> torch.Tensor:
    """Monte-Carlo ELBO per datapoint, E_q[log p(x_i, z) - log q(z | x_i)] averaged over
    ``num_samples`` draws (Kingma & Welling 2013, eq. 3). Returns (batch,), nats.
    Keyword arguments go to :func:`log_weights`."""
    return log_weights(model, guide, x, num_samples, **kwargs).log_w.mean(0)


class ELBOParts(NamedTuple):
    """The ELBO of each datapoint and its two parts (Kingma & Welling 2013, eq. 7:
    ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z))), nats, each (batch,).

    Attributes:
        elbo: Monte-Carlo ELBO, mean over the draws of log p(x, z) - log q(z | x) (as
            :func:`elbo_per_datapoint`).
        reconstruction: E_q[log p(x | z)], Monte Carlo over the same draws (the
            "distortion" is its negative).
        kl: KL(q(z | x) || p(z)) (the "rate"): in closed form when ``kl_method`` is
            ``"closed_form"``, else Monte Carlo, ``reconstruction - elbo`` on the same
            draws.
        kl_method: ``"closed_form"`` (one latent site whose q and p have a KL registered
            with ``torch.distributions.kl_divergence``) or ``"monte_carlo"``.
    """

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_method: str


@torch.no_grad()
def elbo_parts(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int = 1,
               **kwargs) -> ELBOParts:
    """Per-datapoint ELBO split into expected log-likelihood and KL (Kingma & Welling
    2013, eq. 7), for any model / guide pair following :mod:`lvm_pyro.sites`.

    The KL is in closed form, KL(q(z | x_i) || p(z)) from
    ``torch.distributions.kl_divergence``, when the programs have a single latent site
    whose prior does not depend on anything drawn, and torch registers the pair; with
    several latent sites (a hierarchy: p(z1 | z2) and q(z2 | z1) depend on draws) or no
    registered KL it is the Monte-Carlo estimate E_q[log q(z | x) - log p(z)] over
    ``num_samples`` draws. ``kl_method`` says which.

    Args:
        model, guide: Pyro programs; observed sites (``"x"``) form the reconstruction
            term, latent sites the KL.
        x: (batch, ...) observations.
        num_samples: draws z ~ q(z | x_i) per datapoint, >= 1.
        **kwargs: to :func:`~lvm_pyro.inference.log_weights` (``num_data``, ``idx``,
            ``max_plate_nesting``, ``vectorize_particles``).

    Returns:
        :class:`ELBOParts`, tensors (batch,), nats.

    Raises:
        ValueError: ``num_samples < 1`` or any error of :func:`log_weights`.
    """
    from torch.distributions import kl_divergence

    nesting = kwargs.pop("max_plate_nesting", None)
    if nesting is None:
        nesting = guess_max_plate_nesting(model, guide, x, kwargs.get("num_data"),
                                          kwargs.get("idx"))
    out = log_weights(model, guide, x, num_samples, max_plate_nesting=nesting, **kwargs)
    mt, gt = out.model_trace, out.guide_trace
    k, batch = out.log_w.shape
    rec = None
    for _, site in observed_sites(mt):
        lp = site_log_prob_per_datapoint(site, k, batch, nesting)
        rec = lp if rec is None else rec + lp
    reconstruction = rec.mean(0)
    elbo = out.log_w.mean(0)
    latents = latent_sites(mt)
    if len(latents) == 1:
        name, psite = latents[0]
        qfn, pfn = gt.nodes[name]["fn"], psite["fn"]
        try:
            shape = torch.broadcast_shapes(qfn.batch_shape, pfn.batch_shape)
            kl = kl_divergence(qfn.expand(shape), pfn.expand(shape))
        except (NotImplementedError, RuntimeError, ValueError):  # no closed form registered
            kl = None
        if kl is not None:
            kl = site_log_prob_per_datapoint(psite, k, batch, nesting, log_prob=kl)
            return ELBOParts(elbo, reconstruction, kl.mean(0), "closed_form")
    return ELBOParts(elbo, reconstruction, reconstruction - elbo, "monte_carlo")


class NLLSummary(NamedTuple):
    """Mean negative log-likelihood over test points.

    Attributes:
        nll: mean of -log p(x_i), nats per example.
        nll_se: its standard error over test points (sample sd / sqrt(n)), nats.
        bits_per_dim: nll / (D ln 2) (plus ``offset_bits`` when stated).
        num_points: n, the number of test points.
    """

    nll: float
    nll_se: float
    bits_per_dim: float
    num_points: int


def bits_per_dim(nll_nats: float | torch.Tensor, num_dims: int,
                 offset_nats: float = 0.0) -> float | torch.Tensor:
    """Convert nats per example to bits per dimension: (nll + offset) / (D ln 2).

    ``offset_nats`` is the dequantisation offset for continuous likelihoods on discrete
    data (e.g. D log 256 for 8-bit pixels rescaled to [0, 1]); it is 0 for discrete
    likelihoods (Bernoulli, discretised logistic)."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return (nll_nats + offset_nats) / (num_dims * math.log(2.0))


def summarize_nll(log_px: torch.Tensor, num_dims: int, offset_nats: float = 0.0) -> NLLSummary:
    """Summarise per-datapoint log p(x) estimates (nats, shape (n,)) as an
    :class:`NLLSummary`."""
    log_px = log_px.detach().double().flatten()
    n = log_px.numel()
    if n == 0:
        raise ValueError("no test points")
    nll = float(-log_px.mean())
    se = float(log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return NLLSummary(nll, se, float(bits_per_dim(nll, num_dims, offset_nats)), n)


class BitsPerDimOffset(NamedTuple):
    """What a likelihood's -log p means on a data set, decided by
    :func:`bits_per_dim_offset`.

    Attributes:
        offset_nats: nats added to -log p(y) per example to bound the discrete -log P(k)
            (0 for a discrete likelihood, D log L for a density on uniformly dequantised
            data), or ``None`` when no bound on -log P exists (a density at discrete
            points): then there are no bits/dim.
        num_dims: D, dimensions per example.
        note: one sentence saying which case applies.
    """

    offset_nats: Optional[float]
    num_dims: int
    note: str


def bits_per_dim_offset(likelihood, transform: str, levels: int, num_dims: int, *,
                        model_dequantizes: bool = False) -> BitsPerDimOffset:
    """The one rule for bits/dim offsets: whether an NLL bounds the discrete data's code
    length, and by which offset.

    * a model that dequantises itself (``model_dequantizes``: a noise site ``"u"`` and the
      density scored at v = k + u with its L^-D change of variables,
      :class:`lvm_pyro.models.DequantizedModel`): its log weights already include
      -D log L, so its bounds are on log P(k) directly, offset 0 (Ho et al. 2019, Eq. 12;
      Hoogeboom et al. 2020); the data must be the raw levels (transform ``"none"``);
    * discrete likelihood (Bernoulli on binarised data, discretised logistic on the raw
      levels): -log P(x) is a code length, offset 0;
    * continuous density on uniformly dequantised data y = (k + u) / L (Theis et al. 2016,
      eq. 9): -log P(k) <= E_u[-log p(y)] + D log L, offset D log L;
    * continuous density on anything else (binarised or raw grid values): not a bound on
      -log P, no bits/dim (``offset_nats=None``).

    Args:
        likelihood: an object with a boolean ``discrete`` attribute (an
            :class:`lvm_pyro.models.likelihoods.Likelihood`), or that boolean.
        transform: the data transform of the evaluated split: ``"dynamic"`` /
            ``"static"`` (binarised), ``"none"``, ``"dequantize"``.
        levels: L >= 2, intensity levels of the raw data (17 for digits, 256 for 8 bits).
        num_dims: D >= 1, dimensions per example.
        model_dequantizes: the model adds the dequantisation noise itself (see above).

    Raises:
        ValueError: ``levels < 2``, ``num_dims < 1``, unknown transform, a discrete
            likelihood on dequantised (off-grid) data, or a self-dequantising model on
            data transformed by anything but ``"none"``.
    """
    discrete = likelihood if isinstance(likelihood, bool) else getattr(likelihood, "discrete", None)
    if not isinstance(discrete, bool):
        raise ValueError(f"likelihood must be a bool or have a boolean 'discrete' attribute, "
                         f"got {type(likelihood).__name__}")
    if transform not in ("dynamic", "static", "none", "dequantize"):
        raise ValueError(f"transform must be dynamic, static, none or dequantize, got {transform!r}")
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    if model_dequantizes:
        if transform != "none":
            raise ValueError(f"a model that dequantises itself takes the raw levels (transform "
                             f"'none'), got transform {transform!r}: the noise would be added "
                             "twice, or to binarised data")
        return BitsPerDimOffset(0.0, num_dims, (
            f"dequantised model: its log weights are log p(k + u) - log q(u | x) with the "
            f"-D log {levels} change of variables included, so nll bounds the discrete "
            "-log P(k) with no offset"))
    if discrete:
        if transform == "dequantize":
            raise ValueError("a discrete likelihood on dequantised data: its values are off the "
                             "grid; use the transform 'none' (or a continuous likelihood)")
        return BitsPerDimOffset(0.0, num_dims, "discrete likelihood: nll = -log P(x)")
    if transform == "dequantize":
        offset = num_dims * math.log(levels)
        return BitsPerDimOffset(offset, num_dims, (
            f"continuous likelihood on uniformly dequantised data y = (k + u) / {levels}: "
            f"nll = -log p(y) + D log {levels} (offset {offset:.2f} nats), an upper bound in "
            "expectation on the discrete -log P(k)"))
    return BitsPerDimOffset(None, num_dims, (
        "continuous density evaluated at discrete points: NOT a bound on -log P(x), no "
        "bits/dim; dequantise the data (transform 'dequantize')"))


class NLLReport(NamedTuple):
    """Mean NLL of one bound over test points, with the offset of
    :func:`bits_per_dim_offset` applied.

    Attributes:
        nll: mean -log p(x_i) + offset, nats per example (the density's value when there
            is no offset).
        nll_se: standard error over test points, nats.
        bits_per_dim: nll / (D ln 2), or ``None`` when no bits/dim exist.
        nll_se_bits_per_dim: nll_se / (D ln 2), or ``None``.
        nll_density: mean -log p(x_i) without the offset, nats per example.
        offset_nats: the offset (``None``: no bound on the discrete NLL).
        note: the offset's explanation.
        num_points: n.
    """

    nll: float
    nll_se: float
    bits_per_dim: Optional[float]
    bits_per_dim_se: Optional[float]
    nll_density: float
    offset_nats: Optional[float]
    note: str
    num_points: int


def nll_report(log_px: torch.Tensor, offset: BitsPerDimOffset) -> NLLReport:
    """Summarise per-datapoint log p(x) (or any per-datapoint lower bound on it), nats,
    shape (n,), with the offset decided by :func:`bits_per_dim_offset`: every report of
    one bound (``evaluate``, ``fit-prior``, VQ metrics) goes through here.

    Raises:
        ValueError: no test points.
    """
    s = summarize_nll(log_px, offset.num_dims)
    scale = offset.num_dims * math.log(2.0)
    if offset.offset_nats is None:
        return NLLReport(s.nll, s.nll_se, None, None, s.nll, None, offset.note, s.num_points)
    nll = s.nll + offset.offset_nats
    return NLLReport(nll, s.nll_se, nll / scale, s.nll_se / scale, s.nll, offset.offset_nats,
                     offset.note, s.num_points)
