"""How much information the latent carries: KL per dimension, active units, mutual
information I_q(x; z) and the decomposition of the average KL.

Under the guide's joint q(x, z) = pdata(x) q(z | x) (LECTURE.md section 12), with the
aggregate posterior q(z) = E_pdata q(z | x):

    E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z))        (Hoffman & Johnson 2016, eq. 3)

Here pdata is the empirical distribution of the M datapoints passed in, so q(z) is the
mixture (1/M) sum_j q(z | x_j). The mutual-information estimate is the minibatch estimator
of Chen et al. 2018 (beta-TCVAE, section 3) / He et al. 2019 (lagging inference networks,
eq. 4):

    I_hat = mean_{i, l} [ log q(z_il | x_i) - log (1/M) sum_j q(z_il | x_j) ],  z_il ~ q(. | x_i).

It is exactly the MI of the M-point empirical distribution (so at most log M); as an
estimate of the MI for a continuous pdata it is the InfoNCE lower bound (van den Oord et al.
2018; Poole et al. 2019, eq. 12) with the exact critic log q(z | x). Leaving x_i out of the
mixture (1/(M-1) sum_{j != i}) gives an upper bound (Poole et al. 2019, eq. 13,
"leave-one-out"), so the two bracket the population MI in expectation; their gap is the
estimator's bias bound and shrinks as M grows relative to e^{I}.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch.distributions import kl_divergence

from ..inference.evaluation import default_element_budget
from ..inference.kl import NonFactorizedLatentError, coordinate_distribution, per_dimension_kl
from ..inference.program import guide_parents, trace_guide_then_model, trace_program
from ..sites import LATENT
from .errors import NotApplicableError

__all__ = ["guide_distribution", "prior_distribution", "kl_per_dimension", "average_kl",
           "ActiveUnits", "active_units", "MutualInformation", "mutual_information",
           "KLDecomposition", "kl_decomposition", "ACTIVE_UNIT_THRESHOLD"]

#: Burda et al. 2015, section 5.2: a unit is active when Cov_x(E_q[z_i]) exceeds this
ACTIVE_UNIT_THRESHOLD = 0.01


def _site(trace, latent: str, who: str) -> dict:
    if latent not in trace.nodes or trace.nodes[latent]["type"] != "sample":
        raise ValueError(f"the {who} has no sample site {latent!r}; pass latent=<its name>")
    return trace.nodes[latent]


@torch.no_grad()
def guide_distribution(guide: Callable, x: torch.Tensor, latent: str = LATENT):
    """The distribution q(z | x_i) of the guide's latent site, batch shape (batch,).

    Runs ``guide(x)`` once, unvectorised, and returns the site's ``fn``. Only a root
    latent q(z | x) has such a distribution: for a latent whose guide distribution depends
    on another latent (q(z2 | z1) in a hierarchical guide) the fn of one run is
    q(z2 | z1 = one draw), and active units, I(x; z) and the KL decomposition would
    condition on that draw; such a latent is refused.

    Raises:
        ValueError: no site ``latent``; a latent whose guide distribution depends on
            other latents (naming them); a batch shape other than (batch,).
    """
    trace = trace_program(guide, x)
    fn = _site(trace, latent, "guide")["fn"]
    parents = guide_parents(guide, x, latent)
    if parents:
        raise ValueError(
            f"guide site {latent!r} depends on the guide's latent(s) {parents}: its "
            f"q({latent} | x) is a mixture over them, not the distribution of one run; "
            f"these diagnostics take root latents only (e.g. latent={parents[0]!r})")
    if tuple(fn.batch_shape) != (x.shape[0],):
        raise ValueError(f"guide site {latent!r} has batch shape {tuple(fn.batch_shape)}; "
                         f"expected ({x.shape[0]},) (one 'data' plate; declare the latent's "
                         "dims with .to_event)")
    return fn


@torch.no_grad()
def prior_distribution(model: Callable, guide: Callable, x: torch.Tensor, latent: str = LATENT):
    """The model's distribution at site ``latent`` (the prior p(z)) when replayed on one guide
    draw, batch shape (batch,). For a prior that depends on other latents this is the
    conditional at the guide's draw."""
    mt, _ = trace_guide_then_model(model, guide, x, block=True)
    fn = _site(mt, latent, "model")["fn"]
    return fn.expand(torch.Size([x.shape[0]])) if tuple(fn.batch_shape) != (x.shape[0],) else fn


def _mean(fn, num_samples: int = 256) -> torch.Tensor:
    try:
        return fn.mean
    except NotImplementedError:
        return fn.sample((num_samples,)).mean(0)


@torch.no_grad()
def kl_per_dimension(model: Callable, guide: Callable, x: torch.Tensor, *,
                     latent: str = LATENT, num_samples: int = 256) -> torch.Tensor:
    """KL(q(z_d | x_i) || p(z_d)) per datapoint and latent coordinate, nats.

    Closed form for Normal marginals (e.g. the diagonal-Gaussian guide against the standard
    normal prior); otherwise a Monte-Carlo average over ``num_samples`` guide draws of
    log q(z_d | x_i) - log p(z_d). For a guide with a full-covariance Gaussian the values are
    KLs of the *marginals*; their sum is then not the total KL (which is larger).

    Args:
        model, guide: Pyro programs following :mod:`lvm_pyro.sites`.
        x: (batch, ...) observations.
        latent: the latent site.
        num_samples: draws for the Monte-Carlo fallback.

    Returns:
        (batch, *event_shape) float tensor.

    Raises:
        ValueError: a latent whose guide or prior does not factorise over coordinates
        (e.g. a flow) -- use :func:`average_kl` for the total.
    """
    q = guide_distribution(guide, x, latent)
    p = prior_distribution(model, guide, x, latent)
    try:
        kl, _ = per_dimension_kl(q, p, None, latent, marginals=True, num_samples=num_samples)
    except NonFactorizedLatentError as e:
        raise NotApplicableError(str(e)) from e
    return kl


@torch.no_grad()
def average_kl(model: Callable, guide: Callable, x: torch.Tensor, *, latent: str = LATENT,
               num_samples: int = 256) -> torch.Tensor:
    """KL(q(z | x_i) || p(z)) per datapoint, nats: closed form when torch registers one for
    the pair of distributions, else a Monte-Carlo average over ``num_samples`` draws.
    Returns (batch,)."""
    q = guide_distribution(guide, x, latent)
    p = prior_distribution(model, guide, x, latent)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((num_samples,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


class ActiveUnits(NamedTuple):
    """Active units of Burda et al. 2015, section 5.2.

    Attributes:
        num_active: number of coordinates with variance above ``threshold``.
        variance: (*event_shape,) Cov_x(E_q[z_d | x]) over the datapoints.
        active: (*event_shape,) bool mask.
        threshold: the cut-off (0.01 by default).
    """

    num_active: int
    variance: torch.Tensor
    active: torch.Tensor
    threshold: float


@torch.no_grad()
def active_units(guide: Callable, x: torch.Tensor, *, threshold: float = ACTIVE_UNIT_THRESHOLD,
                 latent: str = LATENT, batch_size: int = 1000) -> ActiveUnits:
    """Count the latent coordinates that the data move: A_d = Var_x(E_{q(z|x)}[z_d]) >
    ``threshold`` (Burda, Grosse & Salakhutdinov 2015, section 5.2).

    Args:
        guide: a Pyro guide with latent site ``latent``.
        x: (N, ...) observations (e.g. the test set); N >= 2.
        threshold: variance cut-off (0.01 in the paper).
        batch_size: rows of x per guide call.

    Returns:
        :class:`ActiveUnits`; the variance uses the 1/(N-1) normalisation.

    Raises:
        ValueError: N < 2, ``threshold`` < 0, or any error of :func:`guide_distribution`.
    """
    if x.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 datapoints, got {x.shape[0]}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    means = torch.cat([_mean(guide_distribution(guide, x[s:s + batch_size], latent))
                       for s in range(0, x.shape[0], batch_size)]).double()  # (N, *event)
    var = means.var(0, unbiased=True)
    active = var > threshold
    return ActiveUnits(int(active.sum()), var, active, float(threshold))


def _aggregate_log_q(q, z: torch.Tensor, num_points: int, event_numel: int, *,
                     leave_one_out: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """For draws z (R, *event) with z_r drawn from q(. | x_{r mod M}): log q(z_r | x_own),
    log (1/M) sum_j q(z_r | x_j) and (with ``leave_one_out``, else ``None``)
    log (1/(M-1)) sum_{j != own} q(z_r | x_j), float64.

    ``q`` has batch shape (M, *rest): the guide's q(z | x_j) (rest = (), each output (R,))
    or its coordinates q(z_d | x_j) (rest = event shape, each output (R, *event): the
    marginal mixtures q(z_d) of the total-correlation decomposition). The (R, M, *rest)
    matrix of log q(z_r | x_j) is built in row chunks of at most
    :func:`lvm_pyro.inference.evaluation.default_element_budget` elements and never held
    whole."""
    rows = max(1, default_element_budget(z.device) // max(1, num_points * event_numel))
    log_m = math.log(num_points)
    cond, agg, loo = [], [], []
    for s in range(0, z.shape[0], rows):
        m = q.log_prob(z[s:s + rows].unsqueeze(1)).double()  # (r, M, *rest)
        own = torch.arange(s, s + m.shape[0]) % num_points
        r = torch.arange(m.shape[0])
        cond.append(m[r, own])  # (r, *rest)
        agg.append(torch.logsumexp(m, 1) - log_m)
        if leave_one_out:
            m[r, own] = -math.inf
            loo.append(torch.logsumexp(m, 1) - math.log(num_points - 1))
    return torch.cat(cond), torch.cat(agg), torch.cat(loo) if leave_one_out else None


class MutualInformation(NamedTuple):
    """I_q(x; z) estimates over M datapoints, nats (see module docstring).

    Attributes:
        mi: the minibatch estimator of Chen et al. 2018 / He et al. 2019 (aggregate
            posterior includes x_i): the MI of the M-point empirical distribution, and a
            lower bound on the population MI; at most log M.
        mi_upper: the leave-one-out estimate, an upper bound on the population MI.
        se: Monte-Carlo standard error of ``mi`` over datapoints.
        num_points: M.
        log_num_points: log M, the cap of ``mi``.
        log_q_cond: (L, M) log q(z_il | x_i) of the draws (for reuse).
        log_q_agg: (L, M) log (1/M) sum_j q(z_il | x_j).
        z: (L, M, *event_shape) the draws.
    """

    mi: float
    mi_upper: float
    se: float
    num_points: int
    log_num_points: float
    log_q_cond: torch.Tensor
    log_q_agg: torch.Tensor
    z: torch.Tensor


@torch.no_grad()
def mutual_information(guide: Callable, x: torch.Tensor, *, num_samples: int = 1,
                       latent: str = LATENT) -> MutualInformation:
    """Mutual information I_q(x; z) under the guide's joint, from the aggregate posterior
    over the M rows of ``x`` (Chen et al. 2018; He et al. 2019, eq. 4), with the
    leave-one-out upper bound (Poole et al. 2019, eq. 13).

    Args:
        guide: a Pyro guide whose site ``latent`` has a distribution with batch shape
            (M,) that broadcasts (any torch distribution does).
        x: (M, ...) observations, M >= 2 (e.g. 1000-10000 test points; cost O(L M^2)).
        num_samples: L draws z ~ q(z | x_i) per datapoint.
        latent: the latent site.

    Returns:
        :class:`MutualInformation` (nats).

    Raises:
        ValueError: M < 2 or num_samples < 1.
    """
    num_points = x.shape[0]
    if num_points < 2:
        raise ValueError(f"mutual_information needs at least 2 datapoints, got {num_points}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    q = guide_distribution(guide, x, latent)
    z = q.sample((num_samples,))  # (L, M, *event)
    event_numel = max(1, math.prod(q.event_shape))
    flat = z.reshape(num_samples * num_points, *z.shape[2:])  # row l*M + i from q(.|x_i)
    log_cond, log_agg, log_loo = (t.reshape(num_samples, num_points) for t in
                                  _aggregate_log_q(q, flat, num_points, event_numel))
    per_point = (log_cond - log_agg).mean(0)  # (M,)
    mi = float(per_point.mean())
    se = float(per_point.std(unbiased=True) / math.sqrt(num_points))
    mi_upper = float((log_cond - log_loo).mean())
    return MutualInformation(mi, mi_upper, se, num_points, math.log(num_points),
                             log_cond, log_agg, z)


class KLDecomposition(NamedTuple):
    """E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)) (Hoffman & Johnson 2016), nats.

    Attributes:
        average_kl: E_x KL(q(z|x) || p(z)), closed form per datapoint where torch has one
            (else Monte Carlo), averaged over the M datapoints.
        average_kl_mc: the same from the draws used below, so that
            ``average_kl_mc == mutual_information + marginal_kl`` exactly.
        mutual_information: I_q(x; z), the estimate of :func:`mutual_information`.
        mutual_information_upper: its leave-one-out upper bound.
        marginal_kl: KL(q(z) || p(z)) = E_q(z)[log q(z) - log p(z)] with the aggregate
            posterior over the M points (an upper bound, since ``mutual_information`` is
            a lower one).
        marginal_kl_lower: ``average_kl_mc - mutual_information_upper``.
        se: Monte-Carlo standard error of ``average_kl_mc`` over datapoints.
        mutual_information_se, marginal_kl_se: the same for those two estimates.
        num_points: M.
    """

    average_kl: float
    average_kl_mc: float
    mutual_information: float
    mutual_information_upper: float
    marginal_kl: float
    marginal_kl_lower: float
    se: float
    mutual_information_se: float
    marginal_kl_se: float
    num_points: int


@torch.no_grad()
def kl_decomposition(model: Callable, guide: Callable, x: torch.Tensor, *, num_samples: int = 1,
                     latent: str = LATENT) -> KLDecomposition:
    """Decompose the average KL into mutual information and marginal KL (Hoffman & Johnson
    2016, "ELBO surgery", eq. 3), using the aggregate posterior over the M rows of ``x``.

    Args:
        model: Pyro model whose site ``latent`` is the prior p(z) (independent of x).
        guide: the guide; see :func:`mutual_information`.
        x: (M, ...) observations.
        num_samples: L draws per datapoint.

    Returns:
        :class:`KLDecomposition` (nats).
    """
    mi = mutual_information(guide, x, num_samples=num_samples, latent=latent)
    p = prior_distribution(model, guide, x, latent)
    log_p = p.log_prob(mi.z).double()  # (L, M)
    kl_mc = (mi.log_q_cond - log_p).mean(0)  # (M,)
    kl = average_kl(model, guide, x, latent=latent)
    avg_mc = float(kl_mc.mean())
    marg = (mi.log_q_agg - log_p).mean(0)  # (M,)
    root_m = math.sqrt(x.shape[0])
    return KLDecomposition(
        average_kl=float(kl.double().mean()), average_kl_mc=avg_mc,
        mutual_information=mi.mi, mutual_information_upper=mi.mi_upper,
        marginal_kl=float(marg.mean()), marginal_kl_lower=avg_mc - mi.mi_upper,
        se=float(kl_mc.std(unbiased=True) / root_m), mutual_information_se=mi.se,
        marginal_kl_se=float(marg.std(unbiased=True) / root_m), num_points=x.shape[0])


# -- beta-TCVAE's decomposition of the average KL ---------------------------------------

class TCDecomposition(NamedTuple):
    """E_x KL(q(z|x) || p(z)) = I_q(x; z) + TC + sum_d KL(q(z_d) || p(z_d)) (Chen et al. 2018,
    eq. 2), with the aggregate posterior the exact M-component mixture over the rows of x;
    nats. Every term is a Monte-Carlo average over the same L M draws z ~ q(z | x_i), so
    ``average_kl_mc == mutual_information + total_correlation + dimensionwise_kl`` exactly.

    Attributes:
        mutual_information: index-code MI, E[log q(z | x_i) - log q(z)] (at most log M).
        total_correlation: KL(q(z) || prod_d q(z_d)) = E[log q(z) - sum_d log q(z_d)].
        dimensionwise_kl: sum_d KL(q(z_d) || p(z_d)).
        dimensionwise_kl_per_dim: (*event_shape,) float64, the terms of that sum.
        average_kl_mc: E[log q(z | x_i) - sum_d log p(z_d)] on the same draws.
        mutual_information_se, total_correlation_se, dimensionwise_kl_se: Monte-Carlo
            standard errors (standard deviation over the L M draws / sqrt(L M)).
        num_points: M.
    """

    mutual_information: float
    total_correlation: float
    dimensionwise_kl: float
    dimensionwise_kl_per_dim: torch.Tensor
    average_kl_mc: float
    mutual_information_se: float
    total_correlation_se: float
    dimensionwise_kl_se: float
    num_points: int


@torch.no_grad()
def tc_decomposition(model: Callable, guide: Callable, x: torch.Tensor, *, num_samples: int = 1,
                     latent: str = LATENT) -> TCDecomposition:
    """Index-code mutual information, total correlation and dimension-wise KL of a trained
    model (Chen et al. 2018, "Isolating sources of disentanglement in VAEs", eq. 2), with
    the aggregate posterior q(z) = (1/M) sum_j q(z | x_j) over the M rows of ``x`` evaluated
    exactly (no minibatch estimator) at L draws z ~ q(z | x_i) per row, and its marginals
    q(z_d) = (1/M) sum_j q(z_d | x_j). Cost O(L M^2 D), chunked in memory.

    For M points from a continuous data distribution the MI term is the lower-bound
    estimate of :func:`mutual_information` (at most log M) and the TC / dimension-wise
    terms are those of the M-point mixture.

    Args:
        model: Pyro model whose site ``latent`` has a prior that factorises over the
            latent's coordinates (checked at the draws).
        guide: Pyro guide whose site ``latent`` has batch shape (M,) and coordinates with
            known marginals (``Normal(...).to_event(1)``, ``MultivariateNormal``, any
            univariate distribution under ``.to_event``).
        x: (M, ...) observations, M >= 2.
        num_samples: L >= 1 draws per row.
        latent: the latent site.

    Returns:
        :class:`TCDecomposition` (nats).

    Raises:
        ValueError: M < 2, ``num_samples < 1``, a guide whose coordinates have no known
            marginals, or a prior that does not factorise.
    """
    num_points = x.shape[0]
    if num_points < 2:
        raise ValueError(f"tc_decomposition needs at least 2 datapoints, got {num_points}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    q = guide_distribution(guide, x, latent)
    p = prior_distribution(model, guide, x, latent)
    try:
        qm = coordinate_distribution(q, latent, "guide")
        pm = coordinate_distribution(p, latent, "model")
    except NonFactorizedLatentError as e:
        raise NotApplicableError(f"site {latent!r}: the total-correlation decomposition needs "
                                 f"the marginals q(z_d | x) and p(z_d): {e}") from e
    z = q.sample((num_samples,))  # (L, M, *event)
    log_prior = p.log_prob(z).double()  # (L, M)
    log_prior_d = pm.expand(qm.batch_shape).log_prob(z).double()  # (L, M, *event)
    event_dims = tuple(range(2, z.dim()))
    if not torch.allclose(log_prior_d.sum(event_dims), log_prior, rtol=1e-5, atol=1e-5):
        raise ValueError(f"the prior at site {latent!r} does not factorise over the latent's "
                         "coordinates (log p(z) != sum_d log p(z_d)); the dimension-wise KL "
                         "needs p(z) = prod_d p(z_d)")
    flat = z.reshape(num_samples * num_points, *z.shape[2:])  # (R, *event), row l*M + i
    event_numel = max(1, math.prod(q.event_shape))
    log_cond, log_agg, _ = _aggregate_log_q(q, flat, num_points, event_numel,
                                            leave_one_out=False)
    _, log_agg_d, _ = _aggregate_log_q(qm, flat, num_points, event_numel, leave_one_out=False)
    log_cond = log_cond.reshape(num_samples, num_points)  # log q(z | x_i), (L, M)
    log_agg = log_agg.reshape(num_samples, num_points)  # log q(z), (L, M)
    log_agg_d = log_agg_d.reshape(z.shape)  # log q(z_d), (L, M, *event)
    mi = log_cond - log_agg  # (L, M)
    tc = log_agg - log_agg_d.sum(event_dims)
    dw_d = log_agg_d - log_prior_d  # (L, M, *event)
    dw = dw_d.sum(event_dims)
    n = num_samples * num_points

    def se(t: torch.Tensor) -> float:
        return float(t.std(unbiased=True) / math.sqrt(n))

    return TCDecomposition(
        mutual_information=float(mi.mean()), total_correlation=float(tc.mean()),
        dimensionwise_kl=float(dw.mean()), dimensionwise_kl_per_dim=dw_d.mean((0, 1)),
        average_kl_mc=float((log_cond - log_prior_d.sum(event_dims)).mean()),
        mutual_information_se=se(mi), total_correlation_se=se(tc), dimensionwise_kl_se=se(dw),
        num_points=num_points)


__all__ += ["TCDecomposition", "tc_decomposition"]
