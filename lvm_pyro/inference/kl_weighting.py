"""KL weighting for any model and guide: beta (beta-VAE), linear KL warm-up, free bits,
controlled capacity.

beta and warm-up (Higgins et al. 2017; Bowman et al. 2015) multiply the latent terms of
the ELBO. With every latent site of model and guide scaled by beta,

    elbo_beta = E_q[ log p(x | z) + beta (log p(z) - log q(z | x)) ]
              = E_q[ log p(x | z) ] - beta KL(q(z | x) || p(z))        (Higgins et al. 2017, eq. 4)

which is ``poutine.scale`` applied to the *latent* sites only (observations keep scale
1): :class:`LatentScaleMessenger`, :func:`scale_latents`. beta_t is a schedule, a pure
function of the number t of optimiser steps already taken (:mod:`.schedules`), e.g. the
linear warm-up

    beta_t = beta * min(1, t / T_warmup)          (beta_t = beta when T_warmup = 0)

so the first step (t = 0) has no KL term and beta is reached after T_warmup steps.
:class:`KLWeighted_ELBO` wraps any Pyro ``ELBO`` with a schedule and keeps t as its
state (:meth:`KLWeighted_ELBO.state_dict`, part of the training checkpoint).

Free bits (Kingma et al. 2016, "Improved variational inference with inverse
autoregressive flow", appendix C.8, eq. 15) cannot be written as a scale: for each
latent dimension j the KL, averaged over the minibatch, is clamped from below,

    L_lambda = E_q[ log p(x | z) ] - sum_j max(lambda, E_batch[ KL_j(x) ])

with KL_j(x) = KL(q(z_j | x) || p(z_j | ...)) in closed form where torch registers it
(``torch.distributions.kl_divergence``, e.g. Normal-Normal, Bernoulli-Bernoulli) and the
one-particle-per-draw Monte-Carlo estimate log q(z_j | x) - log p(z_j | ...) otherwise.
:class:`FreeBits_ELBO` implements it; it needs fully factorised latent sites (a
univariate base distribution under ``.to_event``), else it raises.

Controlled capacity (Burgess et al. 2018, sec. 5, eq. 8) replaces the KL term by
gamma |KL - C_t|, the KL target C_t rising linearly to C_max over training
(:class:`~lvm_pyro.inference.schedules.CapacitySchedule`); :class:`Capacity_ELBO`
implements it on the same per-dimension KLs as free bits.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from ..sites import DATA_PLATE
from .kl import per_dimension_kl
from .log_weights import is_auxiliary_site, plate_scale, site_log_prob_per_datapoint
from .program import (bind_program, data_plate_frame, discover, observed_sites, program_root,
                      trace_guide_then_model, warn_if_nan)
from .schedules import (CapacitySchedule, ConstantSchedule, LinearWarmup, Schedule,
                        schedule_to_dict)

__all__ = ["LatentScaleMessenger", "scale_latents",
           "KLWeighted_ELBO", "FreeBits_ELBO", "Capacity_ELBO"]


def _is_latent(msg: dict) -> bool:
    return (msg["type"] == "sample" and not msg["is_observed"]
            and not isinstance(msg["fn"], _Subsample) and not is_auxiliary_site(msg))


class LatentScaleMessenger(Messenger):
    """``poutine.scale`` restricted to latent sites: multiplies the log density of every
    unobserved sample site (names in ``sites``, or all) by ``scale``; observed sites and
    auxiliary factors keep theirs. Unlike ``poutine.scale`` it accepts ``scale = 0`` (the
    start of a KL warm-up).

    Args:
        scale: a float >= 0, or a callable returning one (read at every site).
        sites: latent site names to scale, or ``None`` for all.

    Raises:
        ValueError: a negative scale.
    """

    def __init__(self, scale: Union[float, Callable[[], float]],
                 sites: Optional[Sequence[str]] = None):
        super().__init__()
        if not callable(scale) and not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = scale
        self.sites = None if sites is None else frozenset(sites)

    def _process_message(self, msg: dict) -> None:
        if _is_latent(msg) and (self.sites is None or msg["name"] in self.sites):
            s = self.scale() if callable(self.scale) else self.scale
            if not s >= 0:
                raise ValueError(f"latent scale must be >= 0, got {s}")
            msg["scale"] = s * msg["scale"]


def scale_latents(fn: Callable, scale: Union[float, Callable[[], float]],
                  sites: Optional[Sequence[str]] = None) -> Callable:
    """``fn`` with its latent sites' log densities multiplied by ``scale`` (see
    :class:`LatentScaleMessenger`); apply it to model *and* guide for beta-weighting.
    The wrapper passes its arguments through unchanged and reports ``fn``'s signature."""

    def scaled(*args, **kwargs):
        with LatentScaleMessenger(scale, sites):
            return fn(*args, **kwargs)

    scaled.__wrapped__ = fn  # type: ignore[attr-defined]  # inspect.signature follows it
    return scaled


class KLWeighted_ELBO(ELBO):
    """Any Pyro ``ELBO`` with the latent terms weighted by a schedule beta_t (beta-VAE,
    KL warm-up, cyclical annealing): model and guide run with their latent sites scaled by

        beta_t = schedule(t),    t = the number of :meth:`loss_and_grads` calls so far

    (one per optimiser step). t is this object's state: :meth:`state_dict` /
    :meth:`load_state_dict` carry it (and the schedule, for a check) through training
    checkpoints, so a resumed run continues the schedule exactly.

    With beta_t = 1 it is the wrapped objective itself (same values and gradients); with
    Trace_ELBO its loss is -E_q[log p(x|z)] + beta_t * KL estimate. ``loss`` and
    ``differentiable_loss`` do not advance t.

    Args:
        elbo: the objective to weight (``Trace_ELBO``, ``TraceMeanField_ELBO``,
            ``TraceGraph_ELBO``, :class:`FreeBits_ELBO`, ...). Importance-weighted
            objectives (IWAE, VIMCO) reject scaled sites.
        beta: shorthand for ``schedule=ConstantSchedule(beta)`` (or, with
            ``kl_warmup_steps`` T > 0, for ``LinearWarmup(beta, T)``); default 1.
        schedule: a :class:`~lvm_pyro.inference.schedules.Schedule` of t; exclusive with
            ``beta`` / ``kl_warmup_steps``.
        kl_warmup_steps: T >= 0 optimiser steps of linear warm-up to ``beta`` (0: none).
        sites: latent sites to weight (default: all).

    Raises:
        ValueError: negative ``beta`` or ``kl_warmup_steps``, ``schedule`` given with
            ``beta`` / ``kl_warmup_steps``, or a ``schedule`` that is not a ``Schedule``.
    """

    def __init__(self, elbo: ELBO, beta: Optional[float] = None, kl_warmup_steps: int = 0, *,
                 schedule: Optional[Schedule] = None, sites: Optional[Sequence[str]] = None):
        if schedule is not None:
            if beta is not None or kl_warmup_steps:
                raise ValueError("give either schedule= or beta= (with kl_warmup_steps=), not "
                                 "both: e.g. schedule=LinearWarmup(beta, kl_warmup_steps)")
            if not isinstance(schedule, Schedule):
                raise ValueError(f"schedule must be a lvm_pyro.inference.schedules.Schedule "
                                 f"(ConstantSchedule, LinearWarmup, ...), got "
                                 f"{type(schedule).__name__}")
        else:
            beta = 1.0 if beta is None else beta
            if not beta >= 0:
                raise ValueError(f"beta must be >= 0, got {beta}")
            if int(kl_warmup_steps) != kl_warmup_steps or kl_warmup_steps < 0:
                raise ValueError(f"kl_warmup_steps must be an integer >= 0, got {kl_warmup_steps}")
            schedule = (LinearWarmup(float(beta), int(kl_warmup_steps)) if kl_warmup_steps
                        else ConstantSchedule(float(beta)))
        super().__init__(num_particles=elbo.num_particles,
                         max_plate_nesting=elbo.max_plate_nesting)
        self.elbo = elbo
        self.schedule = schedule
        self.sites = None if sites is None else list(sites)
        self.step = 0

    def __repr__(self) -> str:
        return f"KLWeighted_ELBO({self.elbo!r}, schedule={self.schedule!r})"

    @property
    def beta(self) -> float:
        """The schedule's final (or top) weight, ``schedule.value``."""
        return float(self.schedule.value)

    @property
    def kl_warmup_steps(self) -> int:
        """T of a :class:`LinearWarmup` schedule, else 0."""
        return int(getattr(self.schedule, "warmup_steps", 0))

    @property
    def current_beta(self) -> float:
        """beta_t = schedule(t) at the current step t."""
        return self.schedule(self.step)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"step": t, "schedule": schedule as a dict, "elbo": the wrapped objective's
        state_dict (when it has one)}``, weights_only-safe."""
        inner = getattr(self.elbo, "state_dict", None)
        return {"step": int(self.step), "schedule": schedule_to_dict(self.schedule),
                "elbo": inner() if callable(inner) else {}}

    def load_state_dict(self, state: dict) -> None:
        """Restore t (and the wrapped objective's state) from :meth:`state_dict`.

        Raises:
            ValueError: the saved schedule differs from this object's (the run would not
                continue the same schedule).
        """
        saved = state.get("schedule")
        if saved is not None and saved != schedule_to_dict(self.schedule):
            raise ValueError(f"the saved KL schedule {saved} differs from this objective's "
                             f"{schedule_to_dict(self.schedule)}; resume with the same schedule")
        step = state["step"]
        if int(step) != step or step < 0:
            raise ValueError(f"saved step must be an integer >= 0, got {step!r}")
        self.step = int(step)
        inner = getattr(self.elbo, "load_state_dict", None)
        if callable(inner) and state.get("elbo"):
            inner(state["elbo"])

    # -- objective -------------------------------------------------------------------------
    def _wrap(self, model, guide):
        b = self.current_beta
        return scale_latents(model, b, self.sites), scale_latents(guide, b, self.sites)

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(*self._wrap(model, guide), args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The wrapped objective's loss with beta_t-weighted latent terms (float, nats)."""
        return self.elbo.loss(*self._wrap(model, guide), *args, **kwargs)

    @property
    def differentiable_loss(self) -> Callable[..., torch.Tensor]:
        """``differentiable_loss(model, guide, *args, **kwargs)``: the wrapped objective's,
        with beta_t-weighted latent terms. Present only when the wrapped objective has one
        (``TraceGraph_ELBO`` has none): ``AttributeError`` otherwise, so ``hasattr`` tells."""
        if not hasattr(self.elbo, "differentiable_loss"):
            raise AttributeError(f"{type(self.elbo).__name__} has no differentiable_loss, so "
                                 "KLWeighted_ELBO wrapping it has none either")

        def differentiable_loss(model, guide, *args, **kwargs) -> torch.Tensor:
            return self.elbo.differentiable_loss(*self._wrap(model, guide), *args, **kwargs)

        return differentiable_loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """One training step's loss and gradients at beta_t; then t += 1."""
        loss = self.elbo.loss_and_grads(*self._wrap(model, guide), *args, **kwargs)
        self.step += 1
        return loss


class _SiteKL(NamedTuple):
    """One latent site's KL in a minibatch: ``site`` (the guide's), ``kl_bar``
    (*event_shape,) the mean of KL_j over particles, datapoints and other plates, and
    ``count`` the datapoints times other plate elements it averages over."""

    site: dict
    kl_bar: torch.Tensor
    count: float


class _PerDimensionKL_ELBO(ELBO):
    """Base of the objectives that replace the ELBO's KL term by a function of the
    minibatch-averaged KL per latent dimension (free bits, capacity):

        loss = -(N/B) sum_i mean_k log p(x_i | z_ik) + kl_term(KL-bar of every latent site)

    with the auxiliary factors and guide factors of the programs as in ``Trace_ELBO``.
    KL_j(x) is in closed form where torch registers it, else the one-particle Monte-Carlo
    estimate (:func:`~lvm_pyro.inference.kl.per_dimension_kl`). A subclass implements
    ``_kl_term(terms, batch)``.

    Args:
        num_particles: K >= 1 (vectorised).
        max_plate_nesting: plate dims of the programs; guessed once when ``None``.

    Raises:
        ValueError: at construction, bad arguments; on a call, a non-factorised latent
            site, a non-reparameterisable guide site, a model latent the guide lacks, or a
            latent outside the ``"data"`` plate.
    """

    def __init__(self, num_particles: int = 1, *, max_plate_nesting: Optional[int] = None):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles),
                         max_plate_nesting=float("inf") if max_plate_nesting is None
                         else int(max_plate_nesting))

    def _kl_term(self, terms: list[_SiteKL], batch: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _traces(self, model, guide, args, kwargs):
        args_model, args_guide = program_root(model), program_root(guide)
        if not args:
            raise ValueError(f"{type(self).__name__} needs the observations as the first "
                             "positional argument: loss(model, guide, x, num_data=..., idx=...)")
        x = args[0]
        extra = dict(kwargs)
        num_data, idx = extra.pop("num_data", None), extra.pop("idx", None)
        rest = tuple(args[1:])
        checked = getattr(self, "_checked", [])
        seen = any(m is args_model and g is args_guide for m, g in checked)
        model, guide = bind_program(model, rest, extra), bind_program(guide, rest, extra)
        if not seen or self.max_plate_nesting == float("inf"):
            info = discover(model, guide, x, num_data=num_data, idx=idx)  # contract checks
            if self.max_plate_nesting == float("inf"):
                self.max_plate_nesting = info.max_plate_nesting
            self._checked = (checked + [(args_model, args_guide)])[-16:]
        return x, trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx,
                                         num_particles=self.num_particles,
                                         max_plate_nesting=int(self.max_plate_nesting))

    def _get_trace(self, model, guide, args, kwargs):
        _, (model_trace, guide_trace) = self._traces(model, guide, args, kwargs)
        return model_trace, guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The objective's loss as a differentiable scalar tensor (nats)."""
        x, (model_trace, guide_trace) = self._traces(model, guide, args, kwargs)
        K, batch, nesting = self.num_particles, x.shape[0], int(self.max_plate_nesting)
        loss, terms = 0.0, []
        for trace in (model_trace, guide_trace):  # auxiliary factors, averaged over particles
            for site in trace.nodes.values():
                if site["type"] == "sample" and is_auxiliary_site(site):
                    lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
                    loss = loss - torch.as_tensor(scale_and_mask(lp, site["scale"], site["mask"])).sum() / K
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or is_auxiliary_site(site) or isinstance(site["fn"], _Subsample):
                continue
            if site["is_observed"]:
                lp = site_log_prob_per_datapoint(site, K, batch, nesting, strict_scale=False)
                scale = _data_scale(site) * _extra_scale(site)  # lp has the inner plates'
                loss = loss - scale * lp.sum() / K
                continue
            if name not in guide_trace.nodes:
                raise ValueError(f"model latent site '{name}' has no site of the same name in "
                                 "the guide")
            g = guide_trace.nodes[name]
            if DATA_PLATE not in {f.name for f in g["cond_indep_stack"]}:
                raise ValueError(f"latent site '{name}' is outside the '{DATA_PLATE}' plate; "
                                 f"{type(self).__name__} averages KL over the minibatch of "
                                 "datapoints")
            if not getattr(g["fn"], "has_rsample", False):
                raise ValueError(f"guide site '{name}' ({type(g['fn']).__name__}) is not "
                                 f"reparameterisable; {type(self).__name__} uses pathwise gradients. Use "
                                 "beta / KL warm-up (KLWeighted_ELBO) with a score-function "
                                 "objective instead")
            kl, _ = per_dimension_kl(g["fn"], site["fn"], g["value"], name)
            if g["mask"] is not None:  # poutine.mask
                m = torch.as_tensor(g["mask"], device=kl.device)
                kl = torch.where(m.reshape(m.shape + (1,) * len(g["fn"].event_shape)), kl,
                                 kl.new_zeros(()))
            n_batch = len(g["fn"].batch_shape)
            kl_bar = kl.mean(dim=tuple(range(n_batch)))  # (*event_shape): E over particles, batch
            count = math.prod(g["fn"].batch_shape) / K  # datapoints (x other plate elements)
            terms.append(_SiteKL(g, kl_bar, count))
        if terms:
            loss = loss + self._kl_term(terms, batch)
        for name, site in observed_sites(guide_trace):  # guide factors: part of log q
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(f"guide site '{name}' is an observed / factor site without a "
                                 "reparameterised log density (has_rsample=False); "
                                 f"{type(self).__name__} uses pathwise gradients only")
            lp = site_log_prob_per_datapoint(site, K, batch, nesting, strict_scale=False)
            loss = loss + _data_scale(site) * _extra_scale(site) * lp.sum() / K
        return torch.as_tensor(loss)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The objective's loss (float, nats); no gradients."""
        with torch.no_grad():
            value = float(self.differentiable_loss(model, guide, *args, **kwargs))
        return warn_if_nan(value, f"{type(self).__name__} loss")

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the loss into ``.grad``; return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return warn_if_nan(float(loss.detach()), f"{type(self).__name__} loss")




class FreeBits_ELBO(_PerDimensionKL_ELBO):
    """Free bits (Kingma et al. 2016, appendix C.8): the ELBO with each latent
    dimension's minibatch-averaged KL clamped from below by ``free_bits`` (lambda, nats).

        loss = -(N/B) sum_i mean_k log p(x_i | z_ik)
               + (N/B) * B * sum_sites beta_site * sum_j max(lambda, KL-bar_j)

    KL-bar_j = the mean of KL_j over the K particles, the B datapoints (and any other
    plate) of the minibatch, per coordinate j of the site's event; KL_j in closed form
    where registered, else Monte Carlo (:func:`~lvm_pyro.inference.kl.per_dimension_kl`); beta_site is any extra
    scale the site carries (e.g. from :class:`KLWeighted_ELBO`, so beta and warm-up
    compose with free bits). With ``free_bits = 0`` and closed-form KLs the loss and its
    gradient equal ``TraceMeanField_ELBO``'s. Gradients are pathwise: every guide latent
    must be reparameterisable. ``loss`` returns this objective (an upper bound on the
    negative ELBO when the KLs are analytic), not the ELBO.

    Args:
        free_bits: lambda >= 0, nats per latent dimension.
        num_particles: K >= 1 (vectorised).
        max_plate_nesting: plate dims of the programs; guessed once when ``None``.

    Raises:
        ValueError: at construction, bad arguments; on a call, a non-factorised latent
            site, a non-reparameterisable guide site, a model latent the guide lacks, or a
            latent outside the ``"data"`` plate.
    """

    def __init__(self, free_bits: float, num_particles: int = 1, *,
                 max_plate_nesting: Optional[int] = None):
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0 (nats per latent dimension), got {free_bits}")
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)
        self.free_bits = float(free_bits)

    def __repr__(self) -> str:
        return f"FreeBits_ELBO(free_bits={self.free_bits}, num_particles={self.num_particles})"

    def _kl_term(self, terms: list[_SiteKL], batch: int) -> torch.Tensor:
        """(N/B) * B * sum_sites beta_site * sum_j max(lambda, KL-bar_j)."""
        return sum(plate_scale(t.site) * _extra_scale(t.site) * t.count
                   * t.kl_bar.clamp_min(self.free_bits).sum() for t in terms)


class Capacity_ELBO(_PerDimensionKL_ELBO):
    """The controlled-capacity objective of Burgess et al. 2018 ("Understanding
    disentangling in beta-VAE", sec. 5, eq. 8):

        E_q[log p(x | z)] - gamma |KL(q(z | x) || p(z)) - C_t|

    with the KL target C_t a schedule of the optimiser step t
    (:class:`~lvm_pyro.inference.schedules.CapacitySchedule`: rising linearly from 0 to
    C_max). As in the authors' and disentanglement_lib's implementations the KL inside the
    absolute value is the minibatch mean, over datapoints, of the whole latent's KL
    (summed over coordinates and latent sites; closed form where torch registers it, else
    Monte Carlo), in nats per datapoint; on the data set of N points:

        loss = -(N/B) sum_i mean_k log p(x_i | z_ik) + N gamma |KL-bar - C_t|

    t is this object's state (the number of :meth:`loss_and_grads` calls, one per
    optimiser step; :meth:`state_dict` / :meth:`load_state_dict` carry it through
    training checkpoints). With C = 0 and gamma = 1 the loss and its gradient equal
    ``TraceMeanField_ELBO``'s (the KL is >= 0). ``loss`` returns this objective, not the
    ELBO. Gradients are pathwise: every guide latent must be reparameterisable.

    Args:
        capacity: a :class:`~lvm_pyro.inference.schedules.Schedule` of C_t in nats (e.g.
            ``CapacitySchedule(25.0, 100000)``), or a number >= 0 for a constant C.
        weight: gamma > 0 (Burgess et al. use 1000 on dSprites).
        num_particles: K >= 1 (vectorised).
        max_plate_nesting: plate dims of the programs; guessed once when ``None``.

    Raises:
        ValueError: at construction, a negative / non-finite capacity, a ``weight`` that
            is not a finite number > 0, or bad ``num_particles``; on a call, the errors of
            :class:`FreeBits_ELBO` and a latent site with a scale of its own
            (``poutine.scale`` / :class:`KLWeighted_ELBO`: gamma is the weight here).
    """

    def __init__(self, capacity: Union[Schedule, float], weight: float = 1000.0,
                 num_particles: int = 1, *, max_plate_nesting: Optional[int] = None):
        if not isinstance(capacity, Schedule):
            if isinstance(capacity, bool) or not isinstance(capacity, (int, float)):
                raise ValueError(f"capacity must be a Schedule (e.g. CapacitySchedule(25.0, "
                                 f"100000)) or a number of nats >= 0, got {capacity!r}")
            capacity = CapacitySchedule(float(capacity), 0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight (gamma) must be a finite number > 0, got {weight!r}")
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)
        self.schedule = capacity
        self.weight = float(weight)
        self.step = 0

    def __repr__(self) -> str:
        return (f"Capacity_ELBO(capacity={self.schedule!r}, weight={self.weight}, "
                f"num_particles={self.num_particles})")

    @property
    def current_capacity(self) -> float:
        """C_t = schedule(t) at the current step t, nats."""
        return self.schedule(self.step)

    def state_dict(self) -> dict:
        """``{"step": t, "schedule": the schedule as a dict}``, weights_only-safe."""
        return {"step": int(self.step), "schedule": schedule_to_dict(self.schedule)}

    def load_state_dict(self, state: dict) -> None:
        """Restore t from :meth:`state_dict`.

        Raises:
            ValueError: the saved schedule differs from this object's, or a bad step.
        """
        saved = state.get("schedule")
        if saved is not None and saved != schedule_to_dict(self.schedule):
            raise ValueError(f"the saved capacity schedule {saved} differs from this "
                             f"objective's {schedule_to_dict(self.schedule)}; resume with the "
                             "same schedule")
        step = state["step"]
        if int(step) != step or step < 0:
            raise ValueError(f"saved step must be an integer >= 0, got {step!r}")
        self.step = int(step)

    def _kl_term(self, terms: list[_SiteKL], batch: int) -> torch.Tensor:
        """N gamma |KL-bar - C_t|, KL-bar the minibatch mean of each datapoint's total KL."""
        kl = 0.0
        for t in terms:
            if _extra_scale(t.site) != 1.0:
                raise ValueError(f"latent site '{t.site['name']}' carries a scale of "
                                 f"{_extra_scale(t.site)} (poutine.scale / KLWeighted_ELBO); "
                                 "Capacity_ELBO weighs the KL by its own weight gamma: drop "
                                 "the scale (beta = 1)")
            kl = kl + t.kl_bar.sum() * (t.count / batch)  # nats per datapoint
        num_data = _data_scale(terms[0].site) * batch  # N
        return num_data * self.weight * (kl - self.current_capacity).abs()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """One training step's loss and gradients at C_t; then t += 1."""
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        self.step += 1
        return loss


def _data_scale(site: dict) -> float:
    """N / B of the site's ``"data"`` plate (1 outside it)."""
    frame = data_plate_frame(site)
    return 1.0 if frame is None else (frame.full_size or frame.size) / frame.size


def _extra_scale(site: dict) -> float:
    """The site's scale beyond its plates' subsampling factor (e.g. a beta), a float."""
    extra = torch.as_tensor(site["scale"] / plate_scale(site))
    if extra.numel() != 1:
        raise ValueError(f"site '{site['name']}' has a non-scalar scale; free bits needs one "
                         "weight per site")
    return float(extra)
