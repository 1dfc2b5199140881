"""Importance-weight diagnostics of a guide, per datapoint (Yao et al. 2018).

For each datapoint x_i the engine (:func:`lvm_pyro.inference.log_weights`) gives
S log weights ``log w_k = log p(x_i, z_k) - log q(z_k | x_i)``, z_k ~ q(. | x_i). From them:

* the Pareto k-hat of the weights' right tail (Vehtari et al. 2024, "Pareto smoothed
  importance sampling", and Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?:
  evaluating variational inference", section 3), fitted by ArviZ's PSIS. k-hat < 0.5: the
  weights have finite variance, the guide covers the posterior; 0.5 < k-hat < 0.7: usable
  but slow; k-hat above min(1 - 1 / log10(S), 0.7): the importance-sampled estimates (and
  the guide as a posterior approximation) are unreliable;
* the importance-sampling effective sample size ``1 / sum_k w~_k^2`` of the normalised
  weights w~ (Kong 1992; not the MCMC ESS of autocorrelated draws), between 1 and S;
* the estimate ``log (1/S) sum_k w_k`` of log p(x_i) (Burda et al. 2015, eq. 8).

ArviZ's PSIS (``arviz_stats`` 1.x, ``psislw``) is written for leave-one-out
cross-validation, whose importance ratios are 1 / p(y_i | theta): it *negates* its input
before smoothing the right tail. We therefore pass ``-log w``; the test on Gaussian
proposals with known tail index (k = 1 - s^2 for target N(0, 1) and proposal N(0, s^2),
s < 1) checks the sign.

A guide equal to the exact posterior gives S equal log weights (all equal log p(x_i)). The
Pareto fit is then undefined (ArviZ raises "All tail values are the same" or returns
nonsense), so when the spread ``max_k log w_k - min_k log w_k`` is at most ``exact_tol``
nats we report k-hat = -inf and ESS = S without calling ArviZ. With a spread delta the
normalised weights lie within a factor e^delta of 1/S, so the ESS is at least
S * 4 e^delta / (1 + e^delta)^2 ~ S (1 - delta^2 / 4): for the default 1e-4 nats, S to
nine digits.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..inference import guess_max_plate_nesting, iter_log_weights, log_weights, logmeanexp
from ..inference.importance import effective_sample_size
from ..inference.program import latent_sites, trace_program
from ..sites import LATENT
from .errors import NotApplicableError

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "sample_log_weights",
           "pareto_khat", "importance_ess", "khat_threshold", "summarize_khat",
           "particles_by_datapoint", "check_stochastic_guide",
           "EXACT_TOL", "MIN_SAMPLES"]

#: spread of the log weights (nats) at or below which the guide counts as exact
EXACT_TOL = 1e-4
#: fewest draws ArviZ's Pareto fit accepts (it needs 5 tail draws, S / 5 for S <= 225)
MIN_SAMPLES = 25


def khat_threshold(num_samples: int) -> float:
    """ArviZ's sample-size-dependent k-hat threshold ``min(1 - 1 / log10(S), 0.7)``
    (Vehtari et al. 2024, section 3.2.4): above it, S draws are too few for a reliable
    importance-sampling estimate. Requires S >= 11 (log10(S) > 1)."""
    if num_samples <= 10:
        raise ValueError(f"num_samples must be > 10 for the k-hat threshold, got {num_samples}")
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _as_numpy_sb(log_w: torch.Tensor | np.ndarray) -> np.ndarray:
    lw = log_w.detach().cpu().double().numpy() if isinstance(log_w, torch.Tensor) \
        else np.asarray(log_w, dtype=np.float64)
    if lw.ndim != 2:
        raise ValueError(f"log_w must have shape (num_samples, batch), got {lw.shape}")
    if not np.all(np.isfinite(lw)):
        raise ValueError("log_w contains NaN or infinite values; check the model's support "
                         "and the guide's scale (a log weight of -inf means p(x, z) = 0 at a "
                         "guide draw)")
    return lw


def pareto_khat(log_w: torch.Tensor | np.ndarray, *, exact_tol: float = EXACT_TOL) -> torch.Tensor:
    """PSIS k-hat of importance weights, per datapoint, through ArviZ.

    Args:
        log_w: (S, batch) log importance weights (nats), S >= 25 independent draws.
        exact_tol: datapoints whose log weights spread by at most this many nats get
            k-hat = -inf without a Pareto fit (exact-posterior guide).

    Returns:
        (batch,) float64 tensor of k-hat values (the GPD shape of the right tail of w;
        -inf for the exact case).

    Raises:
        ValueError: wrong shape, S < 25, or non-finite log weights.
    """
    from arviz_stats.base import array_stats

    lw = _as_numpy_sb(log_w)
    num_samples, batch = lw.shape
    if num_samples < MIN_SAMPLES:
        raise ValueError(f"the Pareto fit needs num_samples >= {MIN_SAMPLES} draws per "
                         f"datapoint, got {num_samples}")
    khat = np.full(batch, -np.inf)
    fit = (lw.max(0) - lw.min(0)) > exact_tol  # (batch,)
    if fit.any():
        # ArviZ's psislw smooths the right tail of -input (LOO ratios are 1 / p(y | theta)),
        # so we hand it -log w to fit the right tail of w.  r_eff = 1: independent draws.
        _, k = array_stats.psislw(-lw[:, fit].T, r_eff=1.0, axis=-1)  # (n_fit,)
        khat[fit] = np.asarray(k, dtype=np.float64)
    return torch.from_numpy(khat)


def importance_ess(log_w: torch.Tensor | np.ndarray, *, exact_tol: float = EXACT_TOL) -> torch.Tensor:
    """Importance-sampling effective sample size ``1 / sum_k w~_k^2`` per datapoint (Kong
    1992), w~ the self-normalised weights; in [1, S].

    Args:
        log_w: (S, batch) log importance weights.
        exact_tol: spread (nats) at or below which the ESS is reported as exactly S.

    Returns:
        (batch,) float64 tensor.
    """
    lw = torch.from_numpy(_as_numpy_sb(log_w))
    num_samples = lw.shape[0]
    ess = effective_sample_size(lw, dim=0)
    exact = (lw.max(0).values - lw.min(0).values) <= exact_tol
    return torch.where(exact, torch.full_like(ess, float(num_samples)), ess)


def sample_log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, *,
                       latent: Optional[str | Sequence[str]] = LATENT,
                       chunk_size: Optional[int] = None,
                       max_plate_nesting: Optional[int] = None,
                       vectorize_particles: bool = True
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor | dict]]:
    """Log weights and (optionally) the guide's draws of one latent site, in chunks.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        x: (batch, ...) observations.
        num_samples: S draws z_k ~ q(. | x_i) per datapoint.
        latent: guide site whose values to return (``None``: none; a list of names:
            a dict name -> draws).
        chunk_size: particles per vectorised pass (default: keep particles x elements of x
            under :func:`lvm_pyro.inference.evaluation.default_element_budget`).
        vectorize_particles: ``False`` runs the particles one at a time, for programs
            that do not broadcast over a leading particle dimension (slower, same weights).

    Returns:
        ``(log_w, z)``: log_w (S, batch) detached, nats; z (S, batch, *site_shape) detached
        or ``None``.

    Raises:
        ValueError: ``num_samples < 1``, a missing ``latent`` site in the guide, or any
        error of :func:`lvm_pyro.inference.log_weights`.
    """
    names = [] if latent is None else [latent] if isinstance(latent, str) else list(latent)
    with torch.no_grad():
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, guide, x)
        lws, zs = [], {n: [] for n in names}
        for out in iter_log_weights(model, guide, x, num_samples, chunk_size=chunk_size,
                                    max_plate_nesting=max_plate_nesting,
                                    vectorize_particles=vectorize_particles):
            k = out.log_w.shape[0]
            lws.append(out.log_w.detach())
            for name in names:
                if name not in out.guide_trace.nodes:
                    raise ValueError(f"the guide has no sample site {name!r}; pass "
                                     "latent=<the name of its latent site>")
                site = out.guide_trace.nodes[name]
                zs[name].append(particles_by_datapoint(site["value"].detach(),
                                                       site["fn"].event_dim, k, x.shape[0],
                                                       max_plate_nesting, name))
            del out  # the chunk's traces: freed before the next chunk runs
    draws = {n: torch.cat(v, 0) for n, v in zs.items()}
    if latent is None:
        return torch.cat(lws, 0), None
    return torch.cat(lws, 0), (draws[latent] if isinstance(latent, str) else draws)


def particles_by_datapoint(value: torch.Tensor, event_dim: int, num_particles: int,
                           batch: int, max_plate_nesting: int, name: str = LATENT) -> torch.Tensor:
    """Reshape a site value of a vectorised run to (num_particles, batch, *event_shape).

    Raises:
        ValueError: if the site has a batch dimension other than the particle and data
        plates (a latent in a nested plate; declare it with ``.to_event``).
    """
    ndim = value.dim() - event_dim
    event_shape = value.shape[ndim:]
    batch_shape = value.shape[:ndim]
    full = (1,) * (max_plate_nesting + 1 - len(batch_shape)) + tuple(batch_shape)
    if len(full) != max_plate_nesting + 1 or any(s != 1 for s in full[1:-1]):
        raise ValueError(f"site {name!r} has batch shape {tuple(batch_shape)}; diagnostics need "
                         "latents whose only batch dims are the particle and 'data' plates "
                         "(declare other dims with .to_event(...))")
    return value.reshape(full[0], full[-1], *event_shape).expand(num_particles, batch,
                                                                *event_shape)


@torch.no_grad()
def check_stochastic_guide(model: Callable, guide: Callable, x: torch.Tensor, *,
                           vectorize_particles: bool = True) -> None:
    """Raise when every latent site of the guide is a point mass (e.g. the VQ-VAE's
    one-hot code posterior): all log weights are then equal because q has no spread, not
    because q is the exact posterior, and k-hat / ESS would be meaningless.

    Runs the engine once with 2 particles on ``x`` (all rows: a guide with
    per-datapoint parameters, such as an ``AutoNormal`` with local latents, is set up
    for exactly those rows).

    Raises:
        ValueError: the guide's draws do not vary between particles.
    """
    if vectorize_particles:
        out = log_weights(model, guide, x, 2)
        draws = [{n: s["value"] for n, s in latent_sites(out.guide_trace)}]
        pairs = [(v[0], v[1]) for v in draws[0].values() if v.dim() > 0 and v.shape[0] == 2]
    else:  # one particle per run: compare two runs of the guide
        runs = [{n: s["value"] for n, s in latent_sites(trace_program(guide, x))}
                for _ in range(2)]
        pairs = [(runs[0][n], runs[1][n]) for n in runs[0] if n in runs[1]]
    varies = any(not torch.equal(a, b) for a, b in pairs)
    if not varies:
        raise NotApplicableError("the guide's latent draws do not vary (a point-mass / deterministic "
                         "guide such as the VQ-VAE's one-hot codes): importance weights are "
                         "all equal by construction, so PSIS k-hat and ESS say nothing about "
                         "posterior quality")


class ImportanceDiagnostics(NamedTuple):
    """Per-datapoint importance diagnostics (see :func:`importance_diagnostics`).

    Attributes:
        khat: (batch,) float64 PSIS k-hat (-inf for an exact guide).
        ess: (batch,) float64 importance-sampling ESS, in [1, S].
        log_marginal: (batch,) float64 estimate of log p(x_i), nats.
        log_w: (S, batch) the log weights the diagnostics were computed from, nats.
        num_samples: S.
        threshold: min(1 - 1 / log10(S), 0.7).
    """

    khat: torch.Tensor
    ess: torch.Tensor
    log_marginal: torch.Tensor
    log_w: torch.Tensor
    num_samples: int
    threshold: float

    def summary(self, bins: Sequence[float] | int = 20) -> dict[str, Any]:
        """JSON-able summary: :func:`summarize_khat` plus ESS and log p(x) statistics."""
        out = summarize_khat(self.khat, self.num_samples, bins=bins)
        ess = self.ess.double()
        out.update({
            "ess_mean": float(ess.mean()), "ess_min": float(ess.min()),
            "ess_median": float(ess.median()),
            "relative_ess_mean": float(ess.mean() / self.num_samples),
            "log_marginal_mean": float(self.log_marginal.double().mean()),
        })
        return out


def summarize_khat(khat: torch.Tensor | np.ndarray, num_samples: int,
                   bins: Sequence[float] | int = 20) -> dict[str, Any]:
    """Counts of k-hat above 0.5, 0.7 and ArviZ's threshold, quantiles and a histogram.

    Args:
        khat: (batch,) k-hat values (-inf allowed: exact guide).
        num_samples: S the k-hats were fitted on (for the threshold).
        bins: histogram bins (numpy semantics) over the finite values.

    Returns:
        dict with ``num_points``, ``num_exact`` (k-hat = -inf), ``above_0.5``,
        ``above_0.7``, ``above_threshold``, ``threshold``, ``fraction_above_0.7``,
        ``khat_mean`` / ``khat_median`` / ``khat_max`` over finite values (``None`` when
        none), and ``histogram`` = {``counts``, ``edges``}.
    """
    k = np.asarray(khat.detach().cpu() if isinstance(khat, torch.Tensor) else khat,
                   dtype=np.float64).ravel()
    thr = khat_threshold(num_samples)
    finite = k[np.isfinite(k)]
    counts, edges = np.histogram(finite, bins=bins) if finite.size else (np.zeros(0), np.zeros(0))
    n = int(k.size)
    return {
        "num_points": n, "num_samples": int(num_samples), "num_exact": int(np.sum(k == -np.inf)),
        "above_0.5": int(np.sum(k > 0.5)), "above_0.7": int(np.sum(k > 0.7)),
        "above_threshold": int(np.sum(k > thr)), "threshold": thr,
        "fraction_above_0.7": float(np.mean(k > 0.7)) if n else float("nan"),
        "khat_mean": float(finite.mean()) if finite.size else None,
        "khat_median": float(np.median(finite)) if finite.size else None,
        "khat_max": float(finite.max()) if finite.size else None,
        "histogram": {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]},
    }


def importance_diagnostics(model: Callable, guide: Callable, x: torch.Tensor,
                           num_samples: int = 1000, *, exact_tol: float = EXACT_TOL,
                           chunk_size: Optional[int] = None,
                           log_w: Optional[torch.Tensor] = None,
                           vectorize_particles: bool = True) -> ImportanceDiagnostics:
    """PSIS k-hat, importance ESS and log p(x) estimate of a guide, per datapoint.

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites` (any pair: the engine
            :func:`lvm_pyro.inference.log_weights` computes the weights).
        x: (batch, ...) observations.
        num_samples: S >= 25 draws z_k ~ q(. | x_i) per datapoint (1000 or more for
            stable k-hats; one k-hat scatters by about 0.1-0.15 at S = 1000, measured).
        exact_tol: log-weight spread (nats) at or below which k-hat = -inf and ESS = S.
        chunk_size: particles per vectorised pass (see :func:`sample_log_weights`).
        log_w: optionally precomputed (S, batch) log weights (then model, guide and x are
            not run).
        vectorize_particles: ``False`` runs the particles one at a time (see
            :func:`sample_log_weights`).

    Returns:
        :class:`ImportanceDiagnostics` with ``khat``, ``ess``, ``log_marginal`` of shape
        (batch,).

    Raises:
        ValueError: ``num_samples < 25``, ``exact_tol < 0``, non-finite log weights, or any
        error of the engine.
    """
    if exact_tol < 0:
        raise ValueError(f"exact_tol must be >= 0 nats, got {exact_tol}")
    if log_w is None:
        if num_samples < MIN_SAMPLES:
            raise ValueError(f"num_samples must be >= {MIN_SAMPLES} (the Pareto fit needs 5 "
                             f"tail draws), got {num_samples}")
        check_stochastic_guide(model, guide, x, vectorize_particles=vectorize_particles)
        log_w, _ = sample_log_weights(model, guide, x, num_samples, latent=None,
                                      chunk_size=chunk_size,
                                      vectorize_particles=vectorize_particles)
    log_w = log_w.detach().double().cpu()
    num_samples = log_w.shape[0]
    khat = pareto_khat(log_w, exact_tol=exact_tol)
    ess = importance_ess(log_w, exact_tol=exact_tol)
    log_marginal = logmeanexp(log_w, 0)
    return ImportanceDiagnostics(khat, ess, log_marginal, log_w, num_samples,
                                 khat_threshold(num_samples))
