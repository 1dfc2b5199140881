"""Reference posteriors by MCMC: NUTS on p(z | x_i) with the trained model fixed, and a
comparison of the amortised guide q(z | x_i) against it.

For a handful of datapoints, Pyro's NUTS (Hoffman & Gelman 2014) samples the exact
posterior p(z | x_i) proportional to p(z) p(x_i | z) of the model as trained (its
parameters are constants: gradients are taken with respect to z only). Each datapoint gets
its own sampler (its own step size and mass matrix), and several chains are run *one after
another* in this process: Pyro's parallel chains would start worker processes, which a
2-core machine and a notebook do not want. Chains start from independent uniform(-2, 2)
draws in the unconstrained space (Pyro's ``init_to_uniform``), overdispersed relative to a
concentrated posterior, as R-hat needs (Vehtari et al. 2021). R-hat and bulk ESS are
ArviZ's (rank-normalised split R-hat, ``az.rhat``; ``az.ess``).

The comparison reports, per datapoint and coordinate, the guide's mean error in posterior
standard deviations and its sd ratio, and per datapoint the energy distance
(Szekely & Rizzo 2013) between guide draws and NUTS draws, next to the energy distance
between the two halves of the NUTS chains (the noise level of the estimate). This is the
ground truth that shows what an amortised diagonal Gaussian misses: correlations,
skewness, multiple modes, and the amortisation gap (Cremer et al. 2018).
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
import pyro.distributions as dist
from pyro.distributions import constraints
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value
from pyro.poutine.messenger import Messenger

from ..sites import AUXILIARY, LATENT
from .arviz_convert import GUIDE_DRAWS_NOTE, draws_to_datatree
from ..inference import guess_max_plate_nesting
from ..inference.program import trace_program
from .importance import sample_log_weights
from .errors import NotApplicableError

#: name of the whitened latent NUTS samples when preconditioned by a guide
WHITE = "_lvm_white_noise"

__all__ = ["MCMCReference", "nuts_reference", "GuideComparison", "compare_to_reference",
           "energy_distance"]


class _DropAuxiliary(Messenger):
    """Mask out auxiliary factors (:func:`lvm_pyro.sites.auxiliary_factor`): they are loss
    terms, not part of p(x, z), so NUTS must not see them."""

    def _pyro_sample(self, msg):
        if msg["infer"].get(AUXILIARY, False):
            msg["mask"] = False


class MCMCReference(NamedTuple):
    """NUTS draws from p(z | x_i) for a few datapoints.

    Attributes:
        samples: (num_chains, num_samples, batch, *event_shape) post-warmup draws.
        datatree: ArviZ ``DataTree``: ``posterior.z`` (chain, draw, datapoint, z_dim),
            ``observed_data.x``, ``sample_stats.diverging`` (chain, draw, datapoint).
        rhat: (batch, *event_shape) rank-normalised split R-hat (ArviZ).
        ess_bulk: (batch, *event_shape) bulk ESS over all chains (ArviZ).
        divergences: (batch, num_chains) post-warmup divergent transitions.
        acceptance_rate: (batch, num_chains) mean acceptance probability.
        seconds: wall time of all chains.
    """

    samples: torch.Tensor
    datatree: object
    rhat: torch.Tensor
    ess_bulk: torch.Tensor
    divergences: torch.Tensor
    acceptance_rate: torch.Tensor
    seconds: float


def _guide_loc_scale(model, guide, x, latent, num_samples=256):
    """Mean and sd of the guide's draws, each (batch, *event), from the engine."""
    _, z = sample_log_weights(model, guide, x, num_samples, latent=latent)
    z = z.double()
    return z.mean(0), z.std(0).clamp_min(1e-6)


def nuts_reference(model: Callable, x: torch.Tensor, *, guide: Optional[Callable] = None,
                   num_samples: int = 500, warmup_steps: int = 500, num_chains: int = 4,
                   latent: str = LATENT, seed: int = 0, target_accept_prob: float = 0.8,
                   max_tree_depth: int = 10, init_radius: float = 2.0,
                   datapoint_index: Optional[Sequence[int]] = None,
                   jit_compile: bool = False) -> MCMCReference:
    """Sample the model's exact posterior p(z | x_i) with NUTS, separately per datapoint.

    With a ``guide``, NUTS runs in the guide's whitened coordinates u, z = m_i + s_i * u
    (m_i, s_i: mean and sd of 256 guide draws for x_i), on the density
    p(x_i, m_i + s_i u) -- an affine change of variables with constant Jacobian, so the
    draws of z are still from the exact posterior, whatever the guide's quality; only the
    geometry NUTS sees is better conditioned (the idea of NeuTra, Hoffman et al. 2019, with
    an affine map). A VAE posterior whose coordinates range from sd ~0.05 (active units)
    to ~1 (inactive ones) otherwise needs hundreds of leapfrog steps per draw. Without a
    guide NUTS runs on z directly.

    Args:
        model: Pyro model following :mod:`lvm_pyro.sites` (observes ``x`` itself); its
            parameters are held fixed (NUTS differentiates with respect to z only).
        x: (batch, ...) a handful of observations (each costs ``num_chains x
            (warmup_steps + num_samples)`` NUTS iterations).
        guide: optional guide for the preconditioning above.
        num_samples: post-warmup draws per chain.
        warmup_steps: adaptation steps per chain (step size and diagonal mass matrix).
        num_chains: chains per datapoint, run one after another; >= 2 for R-hat.
        latent: the model's latent site (the one NUTS samples / reports).
        seed: chain c of datapoint i is seeded with ``seed + 1000 i + c``; the global RNG
            state is restored afterwards.
        init_radius: chains start at uniform(-r, r) draws (in guide sds around the guide
            mean with a guide, else Pyro's ``init_to_uniform`` in z), overdispersed for
            R-hat.
        target_accept_prob, max_tree_depth, jit_compile: passed to Pyro's ``NUTS``.
        datapoint_index: ``datapoint`` coordinates (default 0..batch-1).

    Returns:
        :class:`MCMCReference`.

    Raises:
        ValueError: ``num_chains < 1``, ``num_samples < 4``, ``warmup_steps < 0``,
        ``init_radius <= 0``, a model without site ``latent``, or a discrete latent.
    """
    import arviz as az

    if num_chains < 1:
        raise ValueError(f"num_chains must be >= 1, got {num_chains}")
    if num_samples < 4:
        raise ValueError(f"num_samples must be >= 4, got {num_samples}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if init_radius <= 0:
        raise ValueError(f"init_radius must be > 0, got {init_radius}")
    site = trace_program(poutine.uncondition(model), x[:1], keywords_of=model).nodes.get(latent)
    if site is None:
        raise ValueError(f"the model has no sample site {latent!r}")
    if site["fn"].support.is_discrete:
        raise NotApplicableError(f"site {latent!r} is discrete ({type(site['fn']).__name__}): NUTS needs "
                         "continuous latents; enumerate small discrete posteriors instead")
    rng = pyro.util.get_rng_state()
    draws, diverging, divergences, accept = [], [], [], []
    t0 = time.perf_counter()
    try:
        if guide is not None:
            pyro.set_rng_seed(seed)
            loc, scale = _guide_loc_scale(model, guide, x, latent)  # (batch, *event)
            nesting = guess_max_plate_nesting(model, guide, x[:1])
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            if guide is not None:
                loc_i = loc[i:i + 1].to(x.dtype if x.is_floating_point() else torch.float32)
                scale_i = scale[i:i + 1].to(loc_i.dtype)

                def conditioned(xi=xi, loc_i=loc_i, scale_i=scale_i):
                    u = pyro.sample(WHITE, dist.ImproperUniform(constraints.real, (),
                                                                loc_i.shape[1:]))
                    with _DropAuxiliary():
                        poutine.condition(model, data={latent: loc_i + scale_i * u})(xi)
            else:
                def conditioned(xi=xi):
                    with _DropAuxiliary():
                        model(xi)

            chains, div_i, ndiv_i, acc_i = [], [], [], []
            for c in range(num_chains):
                pyro.set_rng_seed(seed + 1000 * i + c)
                if guide is not None:
                    u0 = (torch.rand(loc_i.shape[1:], dtype=loc_i.dtype) * 2 - 1) * init_radius
                    init = init_to_value(values={WHITE: u0})
                else:
                    init = init_to_uniform(radius=init_radius)
                kernel = NUTS(conditioned, target_accept_prob=target_accept_prob,
                              max_tree_depth=max_tree_depth, jit_compile=jit_compile,
                              ignore_jit_warnings=True, init_strategy=init,
                              max_plate_nesting=nesting if guide is not None else None)
                mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                            num_chains=1, disable_progbar=True)
                with poutine.block():
                    mcmc.run()
                samples = mcmc.get_samples()
                if guide is not None:
                    z = loc_i + scale_i * samples[WHITE].detach()  # (num_samples, *event)
                elif latent in samples:
                    z = samples[latent].detach()[:, 0]
                else:
                    raise ValueError(f"the model has no latent site {latent!r}; sites "
                                     f"sampled: {sorted(samples)}")
                chains.append(z)
                diag = mcmc.diagnostics()
                idx = [int(t) for t in diag.get("divergences", {}).get("chain 0", [])
                       if 0 <= int(t) < num_samples]
                flag = np.zeros(num_samples, dtype=bool)
                flag[idx] = True
                div_i.append(flag)
                ndiv_i.append(len(idx))
                acc_i.append(float(diag.get("acceptance rate", {}).get("chain 0", math.nan)))
            draws.append(torch.stack(chains))  # (chains, num_samples, *event)
            diverging.append(np.stack(div_i))
            divergences.append(ndiv_i)
            accept.append(acc_i)
    finally:
        pyro.util.set_rng_state(rng)
    seconds = time.perf_counter() - t0
    samples = torch.stack(draws, 2)  # (chains, num_samples, batch, *event)
    note = ("NUTS draws from p(z | x_i), model parameters fixed; chains run sequentially"
            + ("; run in the guide's whitened coordinates" if guide is not None else ""))
    dt = draws_to_datatree(samples, x=x, num_chains=num_chains, datapoint_index=datapoint_index,
                           latent=latent, attrs={"draws": note},
                           sample_stats={"diverging": np.stack(diverging, -1)})
    if num_chains >= 2:
        rhat = torch.as_tensor(np.asarray(az.rhat(dt)[latent].values), dtype=torch.float64)
    else:
        rhat = torch.full(samples.shape[2:], math.nan, dtype=torch.float64)
    ess = torch.as_tensor(np.asarray(az.ess(dt)[latent].values), dtype=torch.float64)
    return MCMCReference(samples, dt, rhat.reshape(samples.shape[2:]),
                         ess.reshape(samples.shape[2:]),
                         torch.tensor(divergences), torch.tensor(accept, dtype=torch.float64),
                         seconds)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance between two samples (Szekely & Rizzo 2013, eq. 2.1, unbiased
    U-statistic form): 2 E|A - B| - E|A - A'| - E|B - B'|, Euclidean norms.

    Args:
        a: (n, dim) draws; b: (m, dim) draws; n, m >= 2.

    Returns:
        a float in the units of the draws; 0 in expectation when both come from one
        distribution, positive otherwise.
    """
    a = a.double().reshape(a.shape[0], -1)
    b = b.double().reshape(b.shape[0], -1)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("energy_distance needs at least 2 draws in each sample")
    n, m = a.shape[0], b.shape[0]
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).sum() / (n * (n - 1))
    bb = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * ab - aa - bb)


class GuideComparison(NamedTuple):
    """Guide q(z | x_i) against a NUTS reference, per datapoint.

    Attributes:
        guide_mean, guide_sd, reference_mean, reference_sd: (batch, *event_shape).
        mean_error: (guide_mean - reference_mean) / reference_sd.
        sd_ratio: guide_sd / reference_sd (below 1: the guide is over-confident).
        energy_distance: (batch,) guide draws vs NUTS draws.
        energy_distance_chains: (batch,) first half of the chains vs second half (NUTS
            against itself: the noise level; NaN with one chain).
        guide_datatree: ArviZ ``DataTree`` of the guide draws (``posterior.z``) with the
            same dims and coords as the reference, for overlay plots
            (``az.plot_dist({"guide": ..., "NUTS": ...})``).
    """

    guide_mean: torch.Tensor
    guide_sd: torch.Tensor
    reference_mean: torch.Tensor
    reference_sd: torch.Tensor
    mean_error: torch.Tensor
    sd_ratio: torch.Tensor
    energy_distance: torch.Tensor
    energy_distance_chains: torch.Tensor
    guide_datatree: object


def _thin(z: torch.Tensor, n: int) -> torch.Tensor:
    if z.shape[0] <= n:
        return z
    idx = torch.linspace(0, z.shape[0] - 1, n).round().long()
    return z[idx]


@torch.no_grad()
def compare_to_reference(model: Callable, guide: Callable, x: torch.Tensor,
                         reference: MCMCReference, *, num_samples: Optional[int] = None,
                         latent: str = LATENT, max_points: int = 1000) -> GuideComparison:
    """Compare the guide's draws with the NUTS reference of the same datapoints. The
    arguments come in the order of every diagnostic (``model, guide, x, ...``).

    Args:
        model, guide: the pair (the guide draws come from the engine).
        x: (batch, ...) the datapoints of ``reference``.
        reference: output of :func:`nuts_reference` on ``x``.
        num_samples: guide draws per datapoint (default: as many as NUTS draws in all).
        latent: latent site.
        max_points: draws per sample used in the O(n^2) energy distance (evenly thinned).

    Returns:
        :class:`GuideComparison`.

    Raises:
        TypeError: ``reference`` is not an :class:`MCMCReference` (e.g. the arguments in
            the order ``(reference, model, guide, x)`` of earlier versions).
        ValueError: ``reference`` and ``x`` have different numbers of datapoints.
    """
    if isinstance(model, MCMCReference) or not isinstance(reference, MCMCReference):
        raise TypeError("compare_to_reference takes (model, guide, x, reference), the "
                        "argument order of every diagnostic; the reference is the output of "
                        "nuts_reference, passed fourth")
    ref = reference.samples.double()  # (C, D, batch, *event)
    num_chains, num_draws, batch = ref.shape[:3]
    if batch != x.shape[0]:
        raise ValueError(f"reference has {batch} datapoints but x has {x.shape[0]}")
    num_samples = num_samples or num_chains * num_draws
    _, zq = sample_log_weights(model, guide, x, num_samples, latent=latent)
    zq = zq.double()  # (S, batch, *event)
    pooled = ref.reshape(num_chains * num_draws, *ref.shape[2:])
    r_mean, r_sd = pooled.mean(0), pooled.std(0)
    q_mean, q_sd = zq.mean(0), zq.std(0)
    ed, ed_chains = [], []
    half = num_chains // 2
    for i in range(batch):
        ed.append(energy_distance(_thin(zq[:, i], max_points), _thin(pooled[:, i], max_points)))
        if half >= 1:
            a = ref[:half, :, i].reshape(-1, *ref.shape[3:])
            b = ref[half:, :, i].reshape(-1, *ref.shape[3:])
            ed_chains.append(energy_distance(_thin(a, max_points), _thin(b, max_points)))
        else:
            ed_chains.append(math.nan)
    coords = reference.datatree["posterior"]["datapoint"].values
    gdt = draws_to_datatree(zq, datapoint_index=coords, latent=latent,
                            attrs={"draws": GUIDE_DRAWS_NOTE})
    return GuideComparison(q_mean, q_sd, r_mean, r_sd, (q_mean - r_mean) / r_sd, q_sd / r_sd,
                           torch.tensor(ed, dtype=torch.float64),
                           torch.tensor(ed_chains, dtype=torch.float64), gdt)
