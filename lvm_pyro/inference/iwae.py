"""The importance-weighted bound (IWAE) as a Pyro ``ELBO``, with standard, doubly
reparameterised (DReG) and sticking-the-landing (STL) gradient estimators.

For each datapoint x_i and K particles z_ik ~ q(. | x_i),

    L_K(x_i) = E[ log (1/K) sum_k w_ik ],   log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)

(Burda et al. 2015, eq. 8). :class:`IWAE_ELBO` reads ``log w`` (K, batch) from the
per-datapoint log-weight engine (:mod:`lvm_pyro.inference.log_weights`): the log-mean-exp
is taken over particles *inside* the data plate, and the data plate's N / B factor
multiplies the sum over datapoints outside it. That is what Pyro's
``RenyiELBO(alpha=0)`` does not do (it sums log weights over the whole minibatch before
the log-mean-exp, so for a batch of several datapoints it is a different, looser bound).

Gradient estimators (all unbiased for L_K unless stated), with normalised weights
w~_ik = w_ik / sum_k' w_ik' (a softmax over particles):

* ``"standard"``: the gradient of the reparameterised estimate itself,
  sum_k w~_k grad log w_k, plus a score-function term
  L-hat * sum_k grad log q(z_k) for guide sites that cannot be reparameterised
  (Burda et al. 2015, eq. 14; Mnih & Rezende 2016, eq. 3 without baselines).
* ``"dreg"``: doubly reparameterised gradients (Tucker et al. 2018, eq. 5). Guide
  parameters phi get sum_k w~_k^2 d log w_k / d z_k * d z_k / d phi, with log q re-scored
  at the sampled z under *detached* guide parameters (the guide is re-run under replay
  with its parameters detached, so a hierarchical guide's dependence of q(z2 | z1) on
  the reparameterised z1 is kept; one extra guide pass); model parameters theta keep the
  standard gradient sum_k w~_k grad_theta log p(x, z_k). Implemented with two backward
  passes restricted to the two parameter groups (``torch.autograd.backward(...,
  inputs=...)``), as in the paper's reference code.
* ``"stl"``: sticking the landing (Roeder et al. 2017, eq. 8): the standard estimator
  with log q re-scored under detached guide parameters (the score term dropped). It is
  unbiased at K = 1 only; at K > 1 it is biased (Tucker et al. 2018, section 4), and
  constructing it warns with :class:`BiasedGradientWarning`.

Auxiliary factors (sites made by :func:`lvm_pyro.sites.auxiliary_factor`, e.g. VQ-VAE
codebook / commitment terms) are *not* part of the log weights (the engine leaves them
out). For training, :class:`IWAE_ELBO` adds their scaled log factors, averaged over the K
particles, to the objective and to its surrogates::

    elbo = data_scale * sum_i logmeanexp_k(log w_ik) + (1/K) sum_k sum_sites scale * log_factor

so ``loss`` is ``-(IWAE bound + auxiliary terms)``; with no auxiliary sites (every
ordinary model) it is exactly the negative IWAE bound. Their gradients are the plain
pathwise gradients of the factors, for every estimator.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, NamedTuple, Optional

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from ..sites import PARTICLE_PLATE
from .evaluation import logmeanexp
from .log_weights import site_log_prob_per_datapoint, weights_from_traces
from .particle_elbo import ParticleELBO, auxiliary_log_factor
from .program import ProgramInfo, param_tensors, trace_program, warn_if_nan, weighted_sites

__all__ = ["IWAE_ELBO", "BiasedGradientWarning", "SharedParameterWarning", "GRADIENT_ESTIMATORS",
           "IWAEForward"]

#: the gradient estimators of :class:`IWAE_ELBO`
GRADIENT_ESTIMATORS = ("standard", "dreg", "stl")


class BiasedGradientWarning(UserWarning):
    """A gradient estimator is biased for the objective it is used with (STL at K > 1)."""


class SharedParameterWarning(UserWarning):
    """Model and guide read the same parameters, which DReG / STL cannot treat as guide
    parameters (they get another estimator's gradient; the warning says which)."""


class IWAEForward(NamedTuple):
    """One vectorised pass of :class:`IWAE_ELBO` (returned by :meth:`IWAE_ELBO.forward`).

    Attributes:
        log_w: (K, batch) log weights, nats, unscaled; differentiable by the standard
            (pathwise) route.
        log_w_detached_q: (K, batch) the same values with log q re-scored under detached
            guide parameters (``None`` for ``gradient="standard"``).
        log_q_score: (K, batch) summed log q of the guide sites that are not
            reparameterisable (``None`` when there are none).
        auxiliary: scalar tensor, the scaled auxiliary log factors averaged over particles
            (0 when there are none).
        data_scale: N / batch of the data plate.
        model_trace, guide_trace: the traces.
    """

    log_w: torch.Tensor
    log_w_detached_q: Optional[torch.Tensor]
    log_q_score: Optional[torch.Tensor]
    auxiliary: torch.Tensor
    data_scale: float
    model_trace: Trace
    guide_trace: Trace


def _params(trace: Trace) -> list[torch.Tensor]:
    """Unconstrained leaf tensors of the trace's param sites (as ``pyro.infer.SVI``)."""
    return list(param_tensors(trace).values())


class _DetachedParameters(TorchFunctionMode):
    """Inside this mode every torch operation sees the given tensors detached: a
    program's parameters (nn.Module weights, ``pyro.param`` / ``PyroModule`` values and
    their unconstrained leaves) enter its computations without a gradient path, whatever
    way the program reaches them, while other inputs (replayed latents) keep theirs."""

    def __init__(self, tensors):
        super().__init__()
        self._ids = {id(t) for t in tensors}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) == "__get__":
            # a property of one tensor: metadata (requires_grad, shape...) stays as it is,
            # a tensor-valued one (p.T) is detached
            out = func(*args, **(kwargs or {}))
            if (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)
                    and id(args[0]) in self._ids):
                out = out.detach()
            return out

        def swap(a):
            return a.detach() if isinstance(a, torch.Tensor) and id(a) in self._ids else a

        return func(*tree_map(swap, args), **tree_map(swap, kwargs or {}))


def _rescore_detached(guide: Callable, x: torch.Tensor, guide_trace: Trace,
                      K: Optional[int], nesting: int, num_data, idx) -> Trace:
    """Re-run the guide (under the particle plate when ``K`` is not ``None``), replaying
    the sampled latents (which keep their reparameterised dependence on the parameters)
    with every guide parameter detached. Each site's ``fn`` is then q(. | x, upstream
    latents) with stop-gradient parameters (Tucker et al. 2018, sec. 3), hierarchical
    guides included."""
    with _DetachedParameters(_params(guide_trace)), poutine.block(), \
            contextlib.ExitStack() as stack:
        if K is not None:
            stack.enter_context(pyro.plate(PARTICLE_PLATE, K, dim=-(nesting + 1)))
        return trace_program(guide, x, num_data=num_data, idx=idx, replay=guide_trace,
                             block=False)


class IWAE_ELBO(ParticleELBO):
    """The K-sample importance-weighted bound, summed over datapoints, as a Pyro ``ELBO``.

    Swap it for ``Trace_ELBO()`` in ``pyro.infer.SVI`` or :class:`lvm_pyro.training.Trainer`::

        svi = SVI(model, guide, Adam({"lr": 1e-3}), IWAE_ELBO(num_particles=50, gradient="dreg"))

    ``loss(model, guide, x, num_data=N, idx=idx)`` returns
    ``-(N / B) * sum_i logmeanexp_k log w_ik`` (a float, nats; the bound's value, never a
    surrogate), minus the auxiliary factors if the programs have any (module docstring).
    With K = 1 its value equals ``Trace_ELBO``'s on the same draw; for a single
    datapoint it equals ``RenyiELBO(alpha=0)``'s. ``loss_and_grads`` back-propagates the
    chosen estimator's surrogate into the parameters' ``.grad`` and returns the loss;
    ``differentiable_loss`` returns a scalar tensor whose value is the loss and whose
    gradient is the estimator (for ``"dreg"`` first derivatives only).

    Programs are called as ``model(x, *rest, **extra, num_data=..., idx=...)`` (the last
    two only if accepted); every latent must sit in ``pyro.plate("data", ...)``.

    Args:
        num_particles: K >= 1 (Burda et al.'s k).
        gradient: ``"standard"`` | ``"dreg"`` | ``"stl"`` (module docstring).
        max_plate_nesting: plate dims the programs use; found on the first call when
            ``None`` and cached.
        vectorize_particles: ``True``: the K particles in one plate outside the data
            plate (the programs must broadcast over a leading dim); ``False``: K
            unvectorised runs (slower; same estimator).

    The first call with a (model, guide) pair checks the site contract once
    (:func:`lvm_pyro.inference.program.discover`, ``docs/site_contract.md``).

    Raises:
        ValueError: at construction, ``num_particles < 1`` or an unknown ``gradient``; on
            a call, a contract violation (data-plate size, shapes, a latent outside the
            data plate, a model latent the guide lacks, a program that does not broadcast
            over the particle dim), a non-reparameterisable guide site with ``"dreg"`` /
            ``"stl"``, or a site with a scale other than its plates' (``poutine.scale``,
            e.g. a beta).

    Warns:
        BiasedGradientWarning: ``gradient="stl"`` with K > 1.
        SharedParameterWarning: ``"dreg"`` / ``"stl"`` when model and guide read the same
            parameters (named; once per pair).

    References: Burda, Grosse & Salakhutdinov 2015 (eq. 8, 14); Tucker, Lawson, Gu &
    Maddison 2018, "Doubly reparameterized gradient estimators" (eq. 5); Roeder, Wu &
    Duvenaud 2017, "Sticking the landing" (eq. 8).
    """

    def __init__(self, num_particles: int = 1, gradient: str = "standard", *,
                 max_plate_nesting: Optional[int] = None, vectorize_particles: bool = True):
        if gradient not in GRADIENT_ESTIMATORS:
            raise ValueError(f"gradient must be one of {GRADIENT_ESTIMATORS}, got {gradient!r}")
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)
        self.gradient = gradient
        if gradient == "stl" and num_particles > 1:
            warnings.warn(
                f"IWAE_ELBO(gradient='stl') with num_particles={num_particles} > 1 is a biased "
                "gradient estimator of the IWAE bound (Tucker et al. 2018, sec. 4); use "
                "gradient='dreg' for an unbiased low-variance estimator", BiasedGradientWarning)

    def __repr__(self) -> str:
        return f"IWAE_ELBO(num_particles={self.num_particles}, gradient={self.gradient!r})"

    @property
    def param_sites_read(self) -> bool:
        """DReG and STL detach the parameters the traces' param sites name."""
        return self.gradient != "standard"

    # -- one vectorised pass ---------------------------------------------------------
    def _on_discover(self, info: ProgramInfo) -> None:
        if self.gradient == "standard" or not info.shared_params:
            return
        names = ", ".join(info.shared_params[:8]) + (" ..." if len(info.shared_params) > 8 else "")
        what = ("the standard IWAE gradient, not DReG's" if self.gradient == "dreg" else
                "STL's gradient with their explicit dependence through log q dropped, as "
                "for guide parameters")
        warnings.warn(
            f"IWAE_ELBO(gradient='{self.gradient}'): model and guide share the parameters "
            f"{names}; they get {what}. Give the guide its own copy of these modules to "
            "get the estimator for every guide parameter", SharedParameterWarning,
            stacklevel=2)

    def forward(self, model: Callable, guide: Callable, *args, **kwargs) -> IWAEForward:
        """Run guide and model over K particles (one vectorised pass, or K passes with
        ``vectorize_particles=False``) and gather everything the value and the
        surrogates need. ``args[0]`` is x (batch, ...); ``num_data`` and ``idx``
        keywords go to the data plate. See :class:`IWAEForward`."""
        x, num_data, idx, model, guide, nesting = self._prepare(model, guide, args, kwargs)
        batch = x.shape[0]
        parts = [self._one_pass(guide, x, num_data, idx, nesting, batch, mt, gt, k)
                 for mt, gt, k in self._passes(model, guide, x, num_data, idx, nesting,
                                               record=self.gradient == "standard")]
        first = parts[0]
        if len(parts) == 1:
            return first

        def cat(i):
            return None if first[i] is None else torch.cat([p[i] for p in parts], 0)

        aux = sum(p.auxiliary for p in parts) / len(parts)
        return IWAEForward(cat(0), cat(1), cat(2), aux, first.data_scale,
                           first.model_trace, first.guide_trace)

    def _one_pass(self, guide, x, num_data, idx, nesting, batch, model_trace, guide_trace,
                  K) -> IWAEForward:
        vectorized = self.vectorize_particles
        lw = weights_from_traces(model_trace, guide_trace, batch, K, nesting)
        log_w = lw.log_w  # (K, batch)
        log_w_det, log_q_score, rescored = None, None, None
        for name, site in weighted_sites(guide_trace):  # latents, guide factors
            reparam = getattr(site["fn"], "has_rsample", False)
            if self.gradient != "standard":
                if not reparam:
                    raise ValueError(
                        f"guide site '{name}' ({type(site['fn']).__name__}) is not "
                        f"reparameterisable; gradient='{self.gradient}' needs every guide "
                        "latent to have rsample. Use gradient='standard' (score-function "
                        "terms) or a reparameterisable / relaxed distribution")
                if rescored is None:
                    rescored = _rescore_detached(guide, x, guide_trace, K if vectorized else None,
                                                 nesting, num_data, idx)
                fn = rescored.nodes[name]["fn"]
                lq = site_log_prob_per_datapoint(site, K, batch, nesting)
                lq_det = site_log_prob_per_datapoint(
                    site, K, batch, nesting,
                    log_prob=fn.log_prob(site["value"], *site["args"], **site["kwargs"]))
                log_w_det = (log_w if log_w_det is None else log_w_det) + lq - lq_det
            elif not reparam:
                lq = site_log_prob_per_datapoint(site, K, batch, nesting)
                log_q_score = lq if log_q_score is None else log_q_score + lq
        if self.gradient != "standard" and log_w_det is None:
            log_w_det = log_w  # no guide latents: nothing to re-score (the standard path)
        aux = auxiliary_log_factor((model_trace, guide_trace), K, log_w)
        return IWAEForward(log_w, log_w_det, log_q_score, aux, lw.data_scale,
                           model_trace, guide_trace)

    # -- value -----------------------------------------------------------------------
    @staticmethod
    def bound(log_w: torch.Tensor) -> torch.Tensor:
        """Per-datapoint log (1/K) sum_k w_ik: log_w (K, batch) -> (batch,), nats,
        numerically stable (logsumexp)."""
        return logmeanexp(log_w, dim=0)

    def _elbo(self, f: IWAEForward) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-datapoint bound (batch,), objective value: (N/B) sum + auxiliary)."""
        bound = self.bound(f.log_w)
        return bound, f.data_scale * bound.sum() + f.auxiliary

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative bound, ``-(N/B) sum_i L_K-hat(x_i)`` (minus auxiliary factors),
        a float in nats. No gradients."""
        loss = -float(self._elbo(self.forward(model, guide, *args, **kwargs))[1])
        return warn_if_nan(loss, "IWAE_ELBO loss")

    # -- surrogates ------------------------------------------------------------------
    def _surrogates(self, f: IWAEForward, bound: torch.Tensor, elbo: torch.Tensor
                    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(surrogate elbo for all parameters, or for the model's under "dreg";
        surrogate elbo for the guide's parameters under "dreg", else None). ``bound`` is
        ``self.bound(f.log_w)`` (batch,) and ``elbo`` the objective's value tensor."""
        s = f.data_scale
        if self.gradient == "standard":
            if f.log_q_score is None:
                return elbo, None  # the pathwise estimator is the value's own gradient
            # score-function term for non-reparameterisable guide sites
            return elbo + s * (bound.detach() * f.log_q_score.sum(0)).sum(), None
        if self.gradient == "stl":
            return s * self.bound(f.log_w_detached_q).sum() + f.auxiliary, None
        # dreg: model parameters keep the standard gradient; guide parameters get
        # sum_k w~_k^2 grad log w_k with log q re-scored under detached parameters.
        w2 = torch.softmax(f.log_w.detach(), dim=0).square()  # (K, batch)
        dreg = s * (w2 * f.log_w_detached_q).sum() + f.auxiliary
        return elbo, dreg

    def _groups(self, f: IWAEForward) -> tuple[list, list]:
        """(parameters that get the standard gradient, guide-only parameters that get
        DReG's). A parameter used by both programs gets the standard (unbiased)
        gradient."""
        model_params = _params(f.model_trace)
        seen = {id(p) for p in model_params}
        guide_only = [p for p in _params(f.guide_trace) if id(p) not in seen]
        return [p for p in model_params if p.requires_grad], [p for p in guide_only if p.requires_grad]

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Accumulate the estimator's gradient of the loss into the parameters'
        ``.grad`` and return the loss (float, nats), as ``Trace_ELBO`` does."""
        f = self.forward(model, guide, *args, **kwargs)
        bound, elbo = self._elbo(f)
        loss = -float(elbo.detach())
        surrogate, dreg = self._surrogates(f, bound, elbo)
        if dreg is None:
            if surrogate.requires_grad:
                (-surrogate).backward()
        else:
            model_params, guide_params = self._groups(f)
            if model_params and surrogate.requires_grad:
                torch.autograd.backward(-surrogate, inputs=model_params,
                                        retain_graph=bool(guide_params))
            if guide_params and dreg.requires_grad:
                torch.autograd.backward(-dreg, inputs=guide_params)
        return warn_if_nan(loss, "IWAE_ELBO loss")

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """A scalar tensor whose value is :meth:`loss` and whose gradient with respect
        to the parameters is the estimator's. For ``"dreg"`` the gradients are computed
        here (``torch.autograd.grad``) and attached linearly, so only first derivatives
        are available."""
        f = self.forward(model, guide, *args, **kwargs)
        bound, elbo = self._elbo(f)
        loss = -elbo.detach()
        surrogate, dreg = self._surrogates(f, bound, elbo)
        if dreg is None:
            return loss + (-surrogate - (-surrogate).detach())
        model_params, guide_params = self._groups(f)
        linear = loss.new_zeros(())
        for params, s, retain in ((model_params, surrogate, True), (guide_params, dreg, False)):
            if not params or not s.requires_grad:
                continue
            grads = torch.autograd.grad(-s, params, retain_graph=retain, allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    linear = linear + (p * g.detach()).sum()
        return loss + (linear - linear.detach())
