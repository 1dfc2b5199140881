"""A lean trace path: run a guide and its model replayed on it, recording only what an
estimator reads, and Pyro's ``Trace_ELBO`` computed from it.

``poutine.trace`` builds a :class:`~pyro.poutine.trace_struct.Trace` per run (a copy of
every message, param and input / return nodes), and ``Trace_ELBO`` then copies both
traces again to drop the plates' subsample sites, before it reads each sample site's
``fn``, ``value``, ``scale`` and ``mask``. :class:`SiteRecorder` keeps just those
messages (the dicts Pyro already made, no copies) and replays the guide's latents into
the model (as ``poutine.replay``).

:class:`LeanTrace_ELBO` is ``pyro.infer.Trace_ELBO`` (Wingate & Weber 2013; Ranganath
et al. 2014: the single-sample ELBO with score-function terms for non-reparameterised
guide sites) on that path. It checks the program's structure once, on the full path:
the recorded sites become Pyro traces and go through ``Trace_ELBO``'s own checks (with
validation on: model / guide match, enumeration) and its own surrogate. While later
steps have the same structure (site names, observed or not, value shapes, distribution
types, reparameterisation) the lean path computes the same terms with the same torch
operations; a step whose structure differs (a site appears, disappears or changes
shape or type) takes the full path again and its structure is checked anew. Values and
gradients equal ``Trace_ELBO``'s on the same draws (``tests/test_lean_trace.py``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, warn_if_nan

__all__ = ["SiteRecorder", "run_recorded", "structure_of", "LeanTrace_ELBO"]


class SiteRecorder(Messenger):
    """Records the sample sites of one run of a program (Pyro's own message dicts, no
    copies; plates' subsample sites left out) and, given ``replay`` (name -> message of
    another run), sets each unobserved site of that name to the recorded value, as
    ``poutine.replay`` does.

    Attributes:
        sites: name -> message, in program order.
        saw_params: whether the run read any ``pyro.param`` (Pyro's ``Trace_ELBO`` steps
            only programs that have parameters).

    Raises:
        RuntimeError: two sample sites of one name (as ``poutine.trace``).
    """

    def __init__(self, replay: Optional[dict] = None):
        super().__init__()
        self.sites: dict[str, dict] = {}
        self.replay = replay
        self.saw_params = False

    def _pyro_sample(self, msg) -> None:
        if self.replay is None or msg["is_observed"]:
            return
        recorded = self.replay.get(msg["name"])
        if recorded is not None:
            msg["done"] = True
            msg["value"] = recorded["value"]
            msg["infer"] = recorded["infer"]

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            return
        name = msg["name"]
        if name in self.sites:
            raise RuntimeError(f"Multiple sample sites named '{name}'")
        self.sites[name] = msg

    def _pyro_post_param(self, msg) -> None:
        self.saw_params = True

    def trace(self) -> Trace:
        """The recorded sample sites as a :class:`~pyro.poutine.trace_struct.Trace` (the
        same message dicts, no copies; no param, input or return nodes)."""
        trace = Trace()
        trace.nodes = self.sites
        return trace


def run_recorded(model: Callable, guide: Callable, args: tuple = (),
                 kwargs: Optional[dict] = None) -> tuple[SiteRecorder, SiteRecorder]:
    """Run ``guide(*args, **kwargs)``, then ``model(*args, **kwargs)`` replayed on it,
    recording both (as ``Trace_ELBO`` calls them; bind the site convention's
    ``num_data`` / ``idx`` with :func:`lvm_pyro.inference.program.adapt_program` first).
    Returns ``(model_recorder, guide_recorder)``."""
    kwargs = kwargs or {}
    g = SiteRecorder()
    with g:
        guide(*args, **kwargs)
    m = SiteRecorder(replay=g.sites)
    with m:
        model(*args, **kwargs)
    return m, g


def structure_of(sites: dict) -> tuple:
    """What the lean path relies on, per sample site (``sites``: name -> message, e.g. a
    trace's ``nodes``): name, observed, value shape, the distribution's type and whether
    it is reparameterised, enumeration. Two runs with equal structures need the same
    checks."""
    return tuple((name, msg["is_observed"], getattr(msg["value"], "shape", None),
                  type(msg["fn"]), getattr(msg["fn"], "has_rsample", None),
                  msg["infer"].get("enumerate")) for name, msg in sites.items())


class LeanTrace_ELBO(Trace_ELBO):
    """``pyro.infer.Trace_ELBO`` on the lean trace path (module docstring): the same
    constructor, loss, surrogate and gradients, computed from recorded sites instead of
    full traces once the program's structure has been checked.

    ``loss_and_grads(model, guide, *args, **kwargs)`` takes the programs' arguments as
    Pyro's does. Only the single-particle, unvectorised estimator is lean; other
    settings (``num_particles > 1``, ``vectorize_particles``) run ``Trace_ELBO``'s own
    path. :meth:`from_elbo` makes one with a given ``Trace_ELBO``'s settings.

    Raises:
        ValueError / RuntimeError: as ``Trace_ELBO`` (Pyro's messages), on the full path.
    """

    #: reads param sites only to learn whether any were read
    #: (:func:`lvm_pyro.registration.objective_allows_cached_registration`)
    param_sites_read = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._structures: dict = {}

    @classmethod
    def from_elbo(cls, elbo: Trace_ELBO) -> "LeanTrace_ELBO":
        """A ``LeanTrace_ELBO`` with the settings of ``elbo`` (a ``Trace_ELBO``)."""
        lean = cls.__new__(cls)
        lean.__dict__.update(elbo.__dict__)
        lean._structures = {}
        return lean

    def _lean(self) -> bool:
        return self.num_particles == 1 and not self.vectorize_particles

    def _terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """(loss tensor, float64, or a float; surrogate loss tensor; trainable?) of one
        draw."""
        m, g = run_recorded(model, guide, args, kwargs)
        key = (id(model), id(guide))
        shape = (structure_of(m.sites), structure_of(g.sites))
        trainable = m.saw_params or g.saw_params
        if self._structures.get(key) == shape:
            out = self._lean_terms(m.sites, g.sites)
            if out is not None:
                return (*out, trainable)
        # the full path: Pyro's checks and Trace_ELBO's own surrogate on traces
        model_trace, guide_trace = m.trace(), g.trace()
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        loss, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
        lean = all(is_identically_zero(s["score_parts"].score_function)
                   for s in guide_trace.nodes.values())
        if lean and not any(s["infer"].get("enumerate") for s in guide_trace.nodes.values()):
            if len(self._structures) >= 16:
                self._structures.clear()
            self._structures[key] = shape
        else:
            self._structures.pop(key, None)
        return loss, surrogate, trainable

    @staticmethod
    def _lean_terms(model_sites: dict, guide_sites: dict):
        """Trace_ELBO's terms for reparameterised guides, with the same torch operations
        (``fn.log_prob`` / ``fn.score_parts``, ``scale_and_mask``, ``sum``); ``None``
        when a guide site has a score-function term."""
        value = None  # float64: Trace_ELBO sums the terms as Python floats
        surrogate = 0
        for msg in model_sites.values():
            lp = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
            lp = scale_and_mask(lp, msg["scale"], msg["mask"]).sum()
            value = lp.detach().double() if value is None else value + lp.detach().double()
            surrogate = surrogate + lp
        for msg in guide_sites.values():
            parts = msg["fn"].score_parts(msg["value"], *msg["args"], **msg["kwargs"])
            parts = parts.scale_and_mask(msg["scale"], msg["mask"])
            if not is_identically_zero(parts.score_function):
                return None
            lq = parts.log_prob.sum()
            value = -lq.detach().double() if value is None else value - lq.detach().double()
            if not is_identically_zero(parts.entropy_term):
                surrogate = surrogate - parts.entropy_term.sum()
        if value is None:
            return 0.0, 0
        return -value, -surrogate

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Back-propagate ``Trace_ELBO``'s surrogate into the parameters' ``.grad`` and
        return the loss (-ELBO, a float in nats; one host sync)."""
        if not self._lean():
            return super().loss_and_grads(model, guide, *args, **kwargs)
        loss, surrogate, trainable = self._terms(model, guide, args, kwargs)
        if trainable and getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        loss = float(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """As ``Trace_ELBO.differentiable_loss``: a scalar tensor whose value is the loss
        and whose gradient is the estimator's."""
        if not self._lean():
            return super().differentiable_loss(model, guide, *args, **kwargs)
        loss, surrogate, _ = self._terms(model, guide, args, kwargs)
        if not isinstance(surrogate, torch.Tensor):
            return torch.tensor(float(loss))
        warn_if_nan(surrogate, "loss")
        return float(loss) + (surrogate - surrogate.detach())
