"""beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018, "Isolating sources of disentanglement in
VAEs") as a Pyro ``ELBO``.

With the data index n uniform on the N training points, q(z, n) = q(z | x_n) / N and the
aggregate posterior q(z) = (1/N) sum_n q(z | x_n), the KL term of the ELBO splits (eq. 2) as

    E_n KL(q(z | x_n) || p(z)) = I_q(z; n)                          index-code MI
                               + KL(q(z) || prod_d q(z_d))           total correlation
                               + sum_d KL(q(z_d) || p(z_d))          dimension-wise KL

for a factorised prior p(z) = prod_d p(z_d), and beta-TCVAE maximises (eq. 4)

    E_q[log p(x | z)] - alpha I_q(z; n) - beta KL(q(z) || prod_d q(z_d))
                      - gamma sum_d KL(q(z_d) || p(z_d)).

Per draw z_i ~ q(z | x_i) of a minibatch {x_1..x_B} the terms are
log q(z_i | x_i) - log q(z_i), log q(z_i) - sum_d log q(z_id) and
sum_d (log q(z_id) - log p(z_id)); log q(z_i) and log q(z_id) are unknown (mixtures over
all N points) and are estimated from the minibatch, with the B x B matrix
log q(z_i | x_j) (and its per-dimension version):

* ``"mws"``, minibatch weighted sampling (section 4, the equation after eq. 4):
  log q(z_i) ~= logsumexp_j log q(z_i | x_j) - log(N B). Biased: its expectation over
  minibatches, (q(z_i | x_i) + (B - 1) E_j q(z_i | x_j)) / (N B), is not q(z_i).
* ``"mss"``, minibatch stratified sampling (appendix C.2): with M = B - 1,
  q(z_i) ~= q(z_i | x_i) / N + sum_{j != i, j != i+1} q(z_i | x_j) / M
  + q(z_i | x_{i+1}) (N - M) / (N M)   (indices mod B; the weights sum to 1).
  Unbiased for q(z_i) (not for its log) when the batch is a uniform draw without
  replacement; exact when q(z | x) does not depend on x. (The authors' released code
  fills the matrix with flat strides of B, which puts 1/N in column 0 and the stratum
  weight in column 1 of every row instead of on each row's own and next point, and gives
  row B - 2 weights summing to more than 1; we follow the paper.)

The same weights give log q(z_id) from the per-dimension matrix. With alpha = beta =
gamma = 1 the terms telescope to log p(x, z) - log q(z | x) whatever the estimator, so
the objective is the ELBO itself, draw for draw (``Trace_ELBO``'s value).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional

import pyro.distributions as dist
import torch
from pyro.poutine.trace_struct import Trace

from ..sites import LATENT
from .log_weights import run_vectorized, site_log_prob_per_datapoint, weights_from_traces
from .program import latent_sites
from .particle_elbo import ParticleELBO, auxiliary_log_factor

__all__ = ["TCVAE_ELBO", "TCVAEForward", "TC_ESTIMATORS", "log_importance_weight_matrix"]

#: the minibatch estimators of log q(z) of :class:`TCVAE_ELBO`
TC_ESTIMATORS = ("mss", "mws")


def log_importance_weight_matrix(batch_size: int, num_data: int, estimator: str = "mss",
                                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """log W (B, B): log q(z_i) ~= logsumexp_j (log W_ij + log q(z_i | x_j)) (module
    docstring; Chen et al. 2018, section 4 and appendix C.2).

    Args:
        batch_size: B >= 2 (``"mss"``) or >= 1 (``"mws"``).
        num_data: N >= B, the data-set size.
        estimator: ``"mss"`` or ``"mws"``.

    Raises:
        ValueError: an unknown estimator, B < 2 for ``"mss"``, or N < B.
    """
    if estimator not in TC_ESTIMATORS:
        raise ValueError(f"estimator must be one of {TC_ESTIMATORS}, got {estimator!r}")
    if num_data < batch_size:
        raise ValueError(f"num_data={num_data} is smaller than the batch size {batch_size}; "
                         "pass the size of the whole training set")
    if estimator == "mws":
        return torch.full((batch_size, batch_size), -math.log(num_data * batch_size), dtype=dtype)
    if batch_size < 2:
        raise ValueError("the stratified estimator ('mss') needs a batch of at least 2 "
                         "datapoints; use a larger batch or estimator='mws'")
    n, m = num_data, batch_size - 1
    w = torch.full((batch_size, batch_size), 1.0 / m, dtype=dtype)
    rows = torch.arange(batch_size)
    w[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    w[rows, rows] = 1.0 / n
    return w.log()  # (B, B); every weight > 0 since N >= B = M + 1


class TCVAEForward(NamedTuple):
    """One vectorised pass of :class:`TCVAE_ELBO`, per particle and datapoint (K, B), nats.

    Attributes:
        log_w: log p(x, z) - log q(z | x) (the ELBO's integrand).
        log_q_cond: log q(z_i | x_i) of the latent site.
        log_q_agg: estimate of log q(z_i) (aggregate posterior).
        log_q_marginals: estimate of sum_d log q(z_id) (product of its marginals).
        log_prior: log p(z_i).
        objective: the beta-TCVAE integrand (equals ``log_w`` when alpha = beta = gamma = 1).
        auxiliary: scaled auxiliary factors, averaged over particles (scalar).
        data_scale: N / B of the data plate.
        model_trace, guide_trace: the vectorised traces.
    """

    log_w: torch.Tensor
    log_q_cond: torch.Tensor
    log_q_agg: torch.Tensor
    log_q_marginals: torch.Tensor
    log_prior: torch.Tensor
    objective: torch.Tensor
    auxiliary: torch.Tensor
    data_scale: float
    model_trace: Trace
    guide_trace: Trace

    @property
    def mutual_information(self) -> torch.Tensor:
        """Per-draw index-code MI term log q(z|x) - log q(z), (K, B)."""
        return self.log_q_cond - self.log_q_agg

    @property
    def total_correlation(self) -> torch.Tensor:
        """Per-draw total-correlation term log q(z) - sum_d log q(z_d), (K, B)."""
        return self.log_q_agg - self.log_q_marginals

    @property
    def dimensionwise_kl(self) -> torch.Tensor:
        """Per-draw dimension-wise KL term sum_d log q(z_d) - log p(z), (K, B)."""
        return self.log_q_marginals - self.log_prior


def _normal_base(fn, role: str, name: str):
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if len(base.event_shape) != 0:
        raise ValueError(
            f"TCVAE_ELBO needs a factorised latent: the {role} distribution of site '{name}' "
            f"is {type(base).__name__} with event shape {tuple(base.event_shape)}; use "
            "Normal(loc, scale).to_event(1)")
    if role == "guide" and not isinstance(base, torch.distributions.Normal):
        raise ValueError(
            f"TCVAE_ELBO needs a factorised Gaussian guide at site '{name}' (Normal(loc, "
            f"scale).to_event(...)); got {type(base).__name__}")
    return base


class TCVAE_ELBO(ParticleELBO):
    """beta-TCVAE objective (Chen et al. 2018, eq. 4) for any model / guide pair whose latent
    site ``"z"`` is a factorised Gaussian in the guide (``Normal(loc, scale).to_event(...)``,
    read from the trace) with a factorised prior in the model (any univariate distribution
    under ``.to_event``), inside the ``"data"`` plate. See the module docstring for the
    decomposition and the two estimators of log q(z).

    ``loss(model, guide, x, num_data=N, idx=idx)`` returns
    ``-(N / B) sum_i mean_k objective_ik`` (float, nats) minus any auxiliary factors;
    ``loss_and_grads`` back-propagates its pathwise gradient (every guide latent must be
    reparameterisable). Other latent sites of the programs (if any) enter as in
    ``Trace_ELBO`` (their log p - log q is part of the reconstruction term).

    Args:
        num_data: N, the size of the training set the minibatches are drawn from (>= 1).
        alpha: weight of the index-code mutual information (>= 0).
        beta: weight of the total correlation (>= 0; Chen et al. use alpha = gamma = 1).
        gamma: weight of the dimension-wise KL (>= 0).
        estimator: ``"mss"`` (minibatch stratified sampling, default) or ``"mws"``
            (minibatch weighted sampling).
        num_particles: K >= 1 draws per datapoint (vectorised; the aggregate posterior of
            each particle's draws uses that particle's batch).
        latent: the latent site (default ``"z"``).
        max_plate_nesting: batch dims of the programs; guessed on the first call when None.

    Raises:
        ValueError: at construction, bad arguments; on a call, a missing / non-Gaussian /
            non-factorised latent site, a batch larger than ``num_data`` (or of 1 with
            ``"mss"``), a call whose ``num_data`` differs from the constructor's, a
            non-reparameterisable guide latent, or a scaled site (``poutine.scale``).
    """

    def __init__(self, num_data: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 estimator: str = "mss", *, num_particles: int = 1, latent: str = LATENT,
                 max_plate_nesting: Optional[int] = None):
        if isinstance(num_data, bool) or int(num_data) != num_data or num_data < 1:
            raise ValueError(f"num_data must be the training-set size, an integer >= 1; got "
                             f"{num_data!r}")
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if estimator not in TC_ESTIMATORS:
            raise ValueError(f"estimator must be one of {TC_ESTIMATORS}, got {estimator!r}")
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)
        self.num_data = int(num_data)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.estimator = estimator
        self.latent = latent

    def __repr__(self) -> str:
        return (f"TCVAE_ELBO(num_data={self.num_data}, alpha={self.alpha}, beta={self.beta}, "
                f"gamma={self.gamma}, estimator={self.estimator!r}, "
                f"num_particles={self.num_particles})")

    def forward(self, model: Callable, guide: Callable, *args, **kwargs) -> TCVAEForward:
        """One vectorised pass: every term per particle and datapoint (:class:`TCVAEForward`)."""
        x, num_data, idx, model, guide, nesting = self._prepare(model, guide, args, kwargs)
        if num_data is not None and num_data != self.num_data:
            raise ValueError(f"the call's num_data={num_data} differs from TCVAE_ELBO's "
                             f"num_data={self.num_data}; construct it with the training-set size")
        K, B = self.num_particles, x.shape[0]
        log_w_matrix = log_importance_weight_matrix(B, self.num_data, self.estimator)
        model_trace, guide_trace = run_vectorized(model, guide, x, K, nesting, num_data, idx)
        lw = weights_from_traces(model_trace, guide_trace, B, K, nesting)
        name = self.latent
        for site_name, site in latent_sites(guide_trace):
            if not site["is_observed"] and not getattr(site["fn"], "has_rsample", False):
                raise ValueError(f"guide site '{site_name}' ({type(site['fn']).__name__}) is not "
                                 "reparameterisable; TCVAE_ELBO uses pathwise gradients")
        if name not in guide_trace.nodes or name not in model_trace.nodes:
            raise ValueError(f"TCVAE_ELBO needs a latent site '{name}' in model and guide "
                             "(pass latent=<its name>)")
        g, m = guide_trace.nodes[name], model_trace.nodes[name]
        q = _normal_base(g["fn"], "guide", name)
        _normal_base(m["fn"], "model", name)
        z = g["value"]
        event = g["fn"].event_shape
        d = max(1, math.prod(event))
        if z.numel() != K * B * d:
            raise ValueError(f"site '{name}' must hold one latent vector per particle and "
                             f"datapoint ({K} x {B} x {d} values); got shape {tuple(z.shape)}")
        z = z.reshape(K, B, d)  # (K, B, D)
        loc = q.loc.expand(g["value"].shape).reshape(K, B, d)
        scale = q.scale.expand(g["value"].shape).reshape(K, B, d)
        # log q(z_ki,d | x_kj): (K, B_i, B_j, D)
        mat = dist.Normal(loc.unsqueeze(1), scale.unsqueeze(1)).log_prob(z.unsqueeze(2))
        lwm = log_w_matrix.to(mat.dtype).reshape(1, B, B)
        log_q_agg = torch.logsumexp(mat.sum(-1) + lwm, dim=2)  # (K, B)
        log_q_marg = torch.logsumexp(mat + lwm.unsqueeze(-1), dim=2).sum(-1)  # (K, B)
        log_q_cond = site_log_prob_per_datapoint(g, K, B, nesting)
        log_prior = site_log_prob_per_datapoint(m, K, B, nesting)
        obj = (lw.log_w
               - (self.alpha - 1.0) * (log_q_cond - log_q_agg)
               - (self.beta - 1.0) * (log_q_agg - log_q_marg)
               - (self.gamma - 1.0) * (log_q_marg - log_prior))
        aux = auxiliary_log_factor((model_trace, guide_trace), K, lw.log_w)
        return TCVAEForward(lw.log_w, log_q_cond, log_q_agg, log_q_marg, log_prior, obj, aux,
                            lw.data_scale, model_trace, guide_trace)

    @staticmethod
    def _value(f: TCVAEForward) -> torch.Tensor:
        return f.data_scale * f.objective.mean(0).sum() + f.auxiliary

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """The loss as a scalar tensor (nats) with pathwise gradients."""
        return -self._value(self.forward(model, guide, *args, **kwargs))

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """``-(N/B) sum_i mean_k objective_ik`` (float, nats); no gradients."""
        with torch.no_grad():
            value = float(self.differentiable_loss(model, guide, *args, **kwargs))
        if math.isnan(value):
            warnings.warn("TCVAE_ELBO loss is NaN", RuntimeWarning)
        return value

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Back-propagate the loss into the parameters' ``.grad``; return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        value = float(loss.detach())
        if math.isnan(value):
            warnings.warn("TCVAE_ELBO loss is NaN", RuntimeWarning)
        return value
