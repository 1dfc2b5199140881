"""KL weighting for any model and guide: beta (beta-VAE), linear KL warm-up, free bits.

beta and warm-up (Higgins et al. 2017; Bowman et al. 2015) multiply the latent terms of
the ELBO. With every latent site of model and guide scaled by beta,

    elbo_beta = E_q[ log p(x | z) + beta (log p(z) - log q(z | x)) ]
              = E_q[ log p(x | z) ] - beta KL(q(z | x) || p(z))        (lecture, section 10)

which is ``poutine.scale`` applied to the *latent* sites only (observations keep scale
1): :class:`LatentScaleMessenger`, :func:`scale_latents`. The warm-up schedule is a pure
function of the number t of optimiser steps already taken (:func:`kl_warmup_factor`):

    beta_t = beta * min(1, t / T_warmup)          (beta_t = beta when T_warmup = 0)

so the first step (t = 0) has no KL term and beta is reached after T_warmup steps.
:class:`KLWeighted_ELBO` wraps any Pyro ``ELBO`` with it.

Free bits (Kingma et al. 2016, "Improved variational inference with inverse
autoregressive flow", appendix C.8, eq. 15) cannot be written as a scale: for each
latent dimension j the KL, averaged over the minibatch, is clamped from below,

    L_lambda = E_q[ log p(x | z) ] - sum_j max(lambda, E_batch[ KL_j(x) ])

with KL_j(x) = KL(q(z_j | x) || p(z_j | ...)) in closed form where torch registers it
(``torch.distributions.kl_divergence``, e.g. Normal-Normal, Bernoulli-Bernoulli) and the
one-particle-per-draw Monte-Carlo estimate log q(z_j | x) - log p(z_j | ...) otherwise.
:class:`FreeBits_ELBO` implements it; it needs fully factorised latent sites (a
univariate base distribution under ``.to_event``), else it raises.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import kl_divergence

from ..sites import DATA_PLATE
from .log_weights import is_auxiliary_site, plate_scale, site_log_prob_per_datapoint
from .program import (bind_program, data_plate_frame, discover, observed_sites, program_root,
                      trace_guide_then_model, warn_if_nan)

__all__ = ["kl_warmup_factor", "beta_schedule", "LatentScaleMessenger", "scale_latents",
           "KLWeighted_ELBO", "FreeBits_ELBO", "per_dimension_kl"]


def kl_warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear KL warm-up (Bowman et al. 2015, section 3.1): min(1, step / warmup_steps).

    Args:
        step: optimiser steps already taken, t >= 0.
        warmup_steps: T >= 0; 0 means no warm-up (factor 1 from the start).

    Returns:
        a float in [0, 1].

    Raises:
        ValueError: negative ``step`` or ``warmup_steps``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def beta_schedule(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """beta_t = beta * min(1, t / T_warmup): the KL weight at optimiser step t."""
    return beta * kl_warmup_factor(step, warmup_steps)


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
    """Any Pyro ``ELBO`` with the latent terms weighted by beta_t (beta-VAE with linear
    KL warm-up): model and guide run with their latent sites scaled by

        beta_t = beta * min(1, t / kl_warmup_steps),

    t = the number of :meth:`loss_and_grads` calls so far (optimiser steps), or
    ``step_source()`` when set (e.g. ``lambda: trainer.step``, so the schedule follows
    the trainer's step counter exactly across checkpoints and resumes).

    With ``beta = 1`` and no warm-up it is the wrapped objective itself (same values and
    gradients); with Trace_ELBO its loss is -E_q[log p(x|z)] + beta_t * KL estimate.
    ``loss`` and ``differentiable_loss`` do not advance t.

    Args:
        elbo: the objective to weight (``Trace_ELBO``, ``TraceMeanField_ELBO``,
            ``TraceGraph_ELBO``, :class:`FreeBits_ELBO`, ...). Importance-weighted
            objectives (IWAE, VIMCO) reject scaled sites.
        beta: final KL weight, >= 0.
        kl_warmup_steps: T >= 0 optimiser steps of linear warm-up (0: none).
        sites: latent sites to weight (default: all).

    Raises:
        ValueError: negative ``beta`` or ``kl_warmup_steps``.
    """

    def __init__(self, elbo: ELBO, beta: float = 1.0, kl_warmup_steps: int = 0,
                 sites: Optional[Sequence[str]] = None):
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if int(kl_warmup_steps) != kl_warmup_steps or kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be an integer >= 0, got {kl_warmup_steps}")
        super().__init__(num_particles=elbo.num_particles,
                         max_plate_nesting=elbo.max_plate_nesting)
        self.elbo = elbo
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.sites = None if sites is None else list(sites)
        self.step = 0
        self.step_source: Optional[Callable[[], int]] = None

    def __repr__(self) -> str:
        return (f"KLWeighted_ELBO({self.elbo!r}, beta={self.beta}, "
                f"kl_warmup_steps={self.kl_warmup_steps})")

    @property
    def current_step(self) -> int:
        """t: ``step_source()`` when set, else the count of :meth:`loss_and_grads` calls."""
        return int(self.step_source()) if self.step_source is not None else self.step

    @property
    def current_beta(self) -> float:
        """beta_t = beta * min(1, t / kl_warmup_steps) at the current step."""
        return beta_schedule(self.current_step, self.beta, self.kl_warmup_steps)

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


def _strip_mask(fn):
    """(distribution without its ``.mask(...)`` wrappers, the combined mask or None)."""
    mask = None
    while isinstance(fn, dist.MaskedDistribution):
        m = fn._mask
        mask = m if mask is None else (torch.as_tensor(mask) & torch.as_tensor(m))
        fn = fn.base_dist
    return fn, mask


def _factorised_base(fn, role: str, name: str):
    """(univariate base distribution, number of reinterpreted event dims) of a site's
    distribution, or ValueError for a non-factorised one."""
    base = fn
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if len(base.event_shape) != 0:
        raise ValueError(
            f"free bits needs a factorised latent site: the {role} distribution of site "
            f"'{name}' is {type(base).__name__} with event shape {tuple(base.event_shape)} "
            "(not univariate under .to_event). Use a diagonal distribution "
            "(e.g. Normal(loc, scale).to_event(1)) or plain beta / KL warm-up instead")
    return base


def per_dimension_kl(guide_fn, model_fn, value: torch.Tensor, name: str = "z"
                     ) -> tuple[torch.Tensor, bool]:
    """KL(q(z_j) || p(z_j)) for every coordinate j of a factorised latent site.

    Args:
        guide_fn, model_fn: the site's distributions in guide and model, each a
            univariate distribution, possibly under ``.to_event(...)`` and
            ``.mask(...)`` (a coordinate masked in either has no KL, as in Pyro's KL of
            masked distributions); batch shapes broadcast.
        value: the sampled z (batch_shape + event_shape), used for the Monte-Carlo
            estimate when no closed form is registered.
        name: site name for error messages.

    Returns:
        ``(kl, analytic)``: ``kl`` of shape ``guide_fn.batch_shape + guide_fn.event_shape``
        in nats (closed form when ``torch.distributions.kl_divergence`` is registered for
        the pair of base distributions, ``analytic=True``; else the one-sample estimate
        log q(z_j) - log p(z_j) at ``value``, ``analytic=False``).

    Raises:
        ValueError: a non-factorised distribution (e.g. ``MultivariateNormal``).
    """
    guide_fn, mask = _strip_mask(guide_fn)
    model_fn, model_mask = _strip_mask(model_fn)
    if model_mask is not None:  # as Pyro's KL of two masked distributions: both masks
        mask = model_mask if mask is None else torch.as_tensor(mask) & torch.as_tensor(model_mask)
    q = _factorised_base(guide_fn, "guide", name)
    p = _factorised_base(model_fn, "model", name)
    shape = guide_fn.batch_shape + guide_fn.event_shape
    try:
        kl = kl_divergence(q, p)
        analytic = True
    except NotImplementedError:
        kl = q.log_prob(value) - p.log_prob(value)
        analytic = False
    kl = torch.as_tensor(kl, dtype=value.dtype, device=value.device).expand(shape)
    if mask is not None:  # .mask(m) on the batch dims: masked coordinates have no KL
        m = torch.as_tensor(mask, device=value.device)
        m = m.reshape(m.shape + (1,) * len(guide_fn.event_shape))
        kl = torch.where(m, kl, kl.new_zeros(()))
    return kl, analytic


class FreeBits_ELBO(ELBO):
    """Free bits (Kingma et al. 2016, appendix C.8): the ELBO with each latent
    dimension's minibatch-averaged KL clamped from below by ``free_bits`` (lambda, nats).

        loss = -(N/B) sum_i mean_k log p(x_i | z_ik)
               + (N/B) * B * sum_sites beta_site * sum_j max(lambda, KL-bar_j)

    KL-bar_j = the mean of KL_j over the K particles, the B datapoints (and any other
    plate) of the minibatch, per coordinate j of the site's event; KL_j in closed form
    where registered, else Monte Carlo (:func:`per_dimension_kl`); beta_site is any extra
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
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles}")
        super().__init__(num_particles=int(num_particles),
                         max_plate_nesting=float("inf") if max_plate_nesting is None
                         else int(max_plate_nesting))
        self.free_bits = float(free_bits)

    def __repr__(self) -> str:
        return f"FreeBits_ELBO(free_bits={self.free_bits}, num_particles={self.num_particles})"

    def _traces(self, model, guide, args, kwargs):
        args_model, args_guide = program_root(model), program_root(guide)
        if not args:
            raise ValueError("FreeBits_ELBO needs the observations as the first positional "
                             "argument: loss(model, guide, x, num_data=..., idx=...)")
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
        """The free-bits loss as a differentiable scalar tensor (nats)."""
        x, (model_trace, guide_trace) = self._traces(model, guide, args, kwargs)
        K, batch, nesting = self.num_particles, x.shape[0], int(self.max_plate_nesting)
        loss = 0.0
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
                raise ValueError(f"latent site '{name}' is outside the '{DATA_PLATE}' plate; free "
                                 "bits averages KL over the minibatch of datapoints")
            if not getattr(g["fn"], "has_rsample", False):
                raise ValueError(f"guide site '{name}' ({type(g['fn']).__name__}) is not "
                                 "reparameterisable; FreeBits_ELBO uses pathwise gradients. Use "
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
            clamped = kl_bar.clamp_min(self.free_bits).sum()
            loss = loss + plate_scale(g) * _extra_scale(g) * count * clamped
        for name, site in observed_sites(guide_trace):  # guide factors: part of log q
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(f"guide site '{name}' is an observed / factor site without a "
                                 "reparameterised log density (has_rsample=False); "
                                 "FreeBits_ELBO uses pathwise gradients only")
            lp = site_log_prob_per_datapoint(site, K, batch, nesting, strict_scale=False)
            loss = loss + _data_scale(site) * _extra_scale(site) * lp.sum() / K
        return torch.as_tensor(loss)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The free-bits loss (float, nats); no gradients."""
        with torch.no_grad():
            value = float(self.differentiable_loss(model, guide, *args, **kwargs))
        return warn_if_nan(value, "FreeBits_ELBO loss")

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the free-bits loss into ``.grad``; return its value."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return warn_if_nan(float(loss.detach()), "FreeBits_ELBO loss")


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
