"""How a model / guide program is called, traced and checked: the site contract in one place.

Every estimator, objective, the training loop, the pictures and the diagnostics run a
user's program through this module (``shared/docs/DESIGN.md``, "Site conventions";
``docs/site_contract.md``):

* **binding**: :func:`program_kwargs` / :func:`adapt_program` pass ``num_data`` and ``idx``
  only to programs that declare them: a plain function by its signature, an
  ``nn.Module`` / ``PyroModule`` by its ``forward``'s;
* **site filters**: :func:`latent_sites`, :func:`observed_sites`, :func:`auxiliary_sites`
  (auxiliary loss factors made by :func:`lvm_pyro.sites.auxiliary_factor`);
* **scales**: :func:`plate_scale` (the subsampling factor of a site's plates) and
  :func:`data_plate_frame` (the ``"data"`` plate, whose N / B callers apply);
* **running**: :func:`trace_program` (one program) and :func:`trace_guide_then_model`
  (the guide, then the model replayed on the guide's trace; unvectorised, or vectorised
  over a particle plate outside every other plate);
* **checks**: :func:`discover` runs both programs once, unvectorised, and checks the
  contract (data-plate size, sequential data plate, sites outside the data plate, model /
  guide shapes, guide factors, dtypes), naming the fix in a one-line ``ValueError``; callers do this once and cache the
  :class:`ProgramInfo`. A vectorised run that fails although the unvectorised one works is
  reported as a program that does not broadcast over the leading particle dimension.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
import weakref
from itertools import zip_longest
from typing import Any, Callable, Iterator, NamedTuple, Optional

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state

from ..sites import AUXILIARY, DATA_PLATE, PARTICLE_PLATE
from .lean_trace import SiteRecorder

__all__ = [
    "ProgramContractError", "ProgramInfo", "accepted_keywords", "program_kwargs",
    "adapt_program", "bind_program", "program_root", "is_auxiliary_site", "latent_sites", "observed_sites",
    "auxiliary_sites", "weighted_sites", "plate_scale", "outside_data_plate",
    "data_plate_frame", "trace_program",
    "trace_guide_then_model", "discover", "check_shapes", "check_not_point_mass",
    "shared_parameters", "param_tensors", "check_dtypes", "check_param_ownership", "guide_parents", "warn_if_nan", "BROADCAST_HINT",
]

KEYWORDS = ("num_data", "idx")

#: the fix for a program that indexes its latents from the left
BROADCAST_HINT = (
    "index latents from the right so that an extra leading particle dimension broadcasts "
    "(write z[..., None, None, None], not z[:, None, None, None]; z.shape[-1], not "
    "z.shape[1]), or pass vectorize_particles=False to run the particles one at a time "
    "(slower)")


class ProgramContractError(ValueError):
    """A program breaks the site contract of ``docs/site_contract.md`` (the message names
    the fix)."""


# -- binding -------------------------------------------------------------------------------
def _signature_target(fn: Callable) -> Callable:
    """The callable whose signature says what ``fn(...)`` accepts: wrappers are followed
    through ``__wrapped__`` (``functools.wraps``, :func:`adapt_program`), and an
    ``nn.Module`` instance answers with its class's ``forward`` (``Module.__call__`` takes
    ``*args, **kwargs``)."""
    for _ in range(64):
        inner = getattr(fn, "__wrapped__", None)
        if inner is None or isinstance(fn, torch.nn.Module):
            break
        fn = inner
    if isinstance(fn, torch.nn.Module):
        forward = type(fn).forward
        own = fn.__dict__.get("forward")  # an instance attribute overrides the class's
        return own if own is not None else forward
    return fn


#: signature answers, keyed weakly by the function (no program is kept alive by it)
_ACCEPTED: "weakref.WeakKeyDictionary[Callable, frozenset]" = weakref.WeakKeyDictionary()


def _accepted(target) -> frozenset:
    try:
        params = inspect.signature(target, follow_wrapped=False).parameters
    except (TypeError, ValueError):  # builtins / C callables: assume they accept all
        return frozenset(KEYWORDS)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(KEYWORDS)
    return frozenset(k for k in KEYWORDS if k in params
                     and params[k].kind is not inspect.Parameter.POSITIONAL_ONLY)


def accepted_keywords(fn: Callable) -> frozenset:
    """The site-convention keywords (``"num_data"``, ``"idx"``) that ``fn`` declares: by
    its ``forward``'s signature for an ``nn.Module`` / ``PyroModule``, else by its own
    (``**kwargs`` accepts both; an uninspectable callable is assumed to accept both).
    Answers are cached per function."""
    target = _signature_target(fn)
    try:
        out = _ACCEPTED.get(target)
    except TypeError:  # not weak-referenceable / unhashable
        return _accepted(target)
    if out is None:
        out = _accepted(target)
        try:
            _ACCEPTED[target] = out
        except TypeError:
            pass
    return out


def program_root(fn: Callable) -> Callable:
    """The program under its wrappers (``__wrapped__`` chain: :func:`adapt_program`,
    :func:`lvm_pyro.inference.scale_latents` ...): objectives remember which programs they
    have checked by it, so a wrapper made afresh every step is checked once."""
    for _ in range(64):
        inner = getattr(fn, "__wrapped__", None)
        if inner is None or isinstance(fn, torch.nn.Module):
            break
        fn = inner
    return fn


def program_kwargs(fn: Callable, num_data: Optional[int] = None,
                   idx: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Keyword arguments of the site convention that ``fn`` accepts.

    A program ``f(x)`` (or a module with ``forward(self, x)``) gets ``{}`` and runs
    unscaled; one that declares ``num_data`` / ``idx`` (or ``**kwargs``) gets those that
    are not ``None``."""
    takes = accepted_keywords(fn)
    out: dict[str, Any] = {}
    if num_data is not None and "num_data" in takes:
        out["num_data"] = num_data
    if idx is not None and "idx" in takes:
        out["idx"] = idx
    return out


def adapt_program(fn: Callable) -> Callable:
    """``fn`` callable as ``fn(x, num_data=..., idx=...)`` even when it takes only ``x``
    (the keywords it does not declare are dropped). The signature is read once here."""
    takes = accepted_keywords(fn)

    def adapted(x, num_data=None, idx=None):
        kw = {}
        if num_data is not None and "num_data" in takes:
            kw["num_data"] = num_data
        if idx is not None and "idx" in takes:
            kw["idx"] = idx
        return fn(x, **kw)

    adapted.__wrapped__ = fn  # type: ignore[attr-defined]
    return adapted


def bind_program(fn: Callable, rest: tuple = (), extra: Optional[dict] = None) -> Callable:
    """``fn`` as a program of the site convention ``f(x, *, num_data, idx)`` with extra
    positional (``rest``) and keyword (``extra``) arguments bound after ``x`` (``fn``
    itself when there are none)."""
    if not rest and not extra:
        return fn
    extra = dict(extra)
    takes = accepted_keywords(fn)

    def bound(x, *, num_data=None, idx=None):
        kw = dict(extra)
        if num_data is not None and "num_data" in takes:
            kw["num_data"] = num_data
        if idx is not None and "idx" in takes:
            kw["idx"] = idx
        return fn(x, *rest, **kw)

    bound.__wrapped__ = fn  # type: ignore[attr-defined]
    return bound


# -- site filters and scales ---------------------------------------------------------------
def is_auxiliary_site(site: dict) -> bool:
    """True for auxiliary loss factors (see :func:`lvm_pyro.sites.auxiliary_factor`)."""
    return bool(site["infer"].get(AUXILIARY, False))


def _sample_sites(trace: Trace) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site) and not is_auxiliary_site(site):
            yield name, site


def latent_sites(trace: Trace) -> list[tuple[str, dict]]:
    """(name, site) of the unobserved sample sites (no auxiliary factors, no plates'
    subsample sites), in program order."""
    return [(n, s) for n, s in _sample_sites(trace) if not s["is_observed"]]


def observed_sites(trace: Trace) -> list[tuple[str, dict]]:
    """(name, site) of the observed sample sites, ``pyro.factor`` sites included
    (auxiliary loss factors excluded), in program order."""
    return [(n, s) for n, s in _sample_sites(trace) if s["is_observed"]]


def weighted_sites(trace: Trace) -> list[tuple[str, dict]]:
    """(name, site) of the latent and observed sample sites (the terms of log p or log q;
    no auxiliary factors, no subsample sites), in program order."""
    return list(_sample_sites(trace))


def auxiliary_sites(trace: Trace) -> list[tuple[str, dict]]:
    """(name, site) of the auxiliary loss factors (:func:`lvm_pyro.sites.auxiliary_factor`)."""
    return [(n, s) for n, s in trace.nodes.items()
            if s["type"] == "sample" and is_auxiliary_site(s)]


def plate_scale(site: dict) -> float:
    """The subsampling factor prod(full_size / size) of a site's plates (N / B for the
    data plate); any scale beyond it comes from ``poutine.scale``."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale *= frame.full_size / frame.size
    return scale


def data_plate_frame(site: dict):
    """The ``"data"`` plate's ``CondIndepStackFrame`` of a site, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


# -- running -------------------------------------------------------------------------------
def trace_program(fn: Callable, x: torch.Tensor, *, num_data: Optional[int] = None,
                  idx: Optional[torch.Tensor] = None, replay: Optional[Trace] = None,
                  block: bool = True, keywords_of: Optional[Callable] = None) -> Trace:
    """Trace one run of ``fn(x, **accepted keywords)``, optionally replayed on ``replay``
    (its sites with the same names take those values). ``block`` hides the run from
    enclosing handlers (no effect on the param store), a plate the caller opened around
    this call included: inside such a plate pass ``block=False`` (and block outside it). ``keywords_of``: the program whose
    signature decides the keywords when ``fn`` wraps it in a handler
    (``poutine.uncondition(model)``)."""
    prog = fn if replay is None else poutine.replay(fn, trace=replay)
    tracer = poutine.trace(prog)
    kw = program_kwargs(fn if keywords_of is None else keywords_of, num_data, idx)
    if block:
        with poutine.block():
            return tracer.get_trace(x, **kw)
    return tracer.get_trace(x, **kw)


def trace_guide_then_model(model: Callable, guide: Callable, x: torch.Tensor, *,
                           num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None,
                           num_particles: Optional[int] = None,
                           max_plate_nesting: Optional[int] = None,
                           block: bool = False, record: bool = False) -> tuple[Trace, Trace]:
    """Run the guide, then the model replayed on the guide's trace.

    Args:
        model, guide: programs of the site convention.
        x: (batch, ...) observations.
        num_data, idx: the data plate's size and the minibatch indices (passed to the
            programs that accept them).
        num_particles: ``None`` for one unvectorised run; else K particles vectorised in
            a plate at ``dim = -(max_plate_nesting + 1)`` (outside every other plate).
        max_plate_nesting: batch dims the programs use (needed with ``num_particles``).
        block: hide the run from enclosing handlers.
        record: with ``num_particles``, the lean path
            (:class:`~lvm_pyro.inference.lean_trace.SiteRecorder`): traces of the sample
            sites only (Pyro's messages, no copies; no param, subsample, input or return
            nodes), for estimators that read only those.

    Returns:
        ``(model_trace, guide_trace)``.

    Raises:
        ProgramContractError: the vectorised run fails while the same run without the
            particle plate works (the program does not broadcast over a leading dim).
    """
    if num_particles is None:
        guide_trace = trace_program(guide, x, num_data=num_data, idx=idx, block=block)
        model_trace = trace_program(model, x, num_data=num_data, idx=idx, replay=guide_trace,
                                    block=block)
        return model_trace, guide_trace
    if max_plate_nesting is None:
        raise ValueError("max_plate_nesting is needed to place the particle plate")
    try:
        with contextlib.ExitStack() as stack:
            if block:  # outside the particle plate, which the programs must see
                stack.enter_context(poutine.block())
            stack.enter_context(pyro.plate(PARTICLE_PLATE, num_particles,
                                           dim=-(max_plate_nesting + 1)))
            if record:
                g = SiteRecorder()
                with g:
                    guide(x, **program_kwargs(guide, num_data, idx))
                m = SiteRecorder(replay=g.sites)
                with m:
                    model(x, **program_kwargs(model, num_data, idx))
                return m.trace(), g.trace()
            guide_trace = trace_program(guide, x, num_data=num_data, idx=idx, block=False)
            model_trace = trace_program(model, x, num_data=num_data, idx=idx,
                                        replay=guide_trace, block=False)
    except ProgramContractError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        _raise_if_broadcast_failure(model, guide, x, num_data, idx, err)
        raise
    return model_trace, guide_trace


def _raise_if_broadcast_failure(model, guide, x, num_data, idx, err: Exception) -> None:
    """After a failed vectorised run: raise the contract error when the same programs run
    without the particle plate (so the particle dimension is what broke them)."""
    rng = get_rng_state()
    try:
        with torch.no_grad():
            trace_guide_then_model(model, guide, x, num_data=num_data, idx=idx, block=True)
    except Exception:  # noqa: BLE001 - the program fails on its own: report the original
        return
    finally:
        set_rng_state(rng)
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise ProgramContractError(
        "the programs run on x alone but fail under a leading particle dimension "
        f"({type(err).__name__}: {first}); {BROADCAST_HINT}") from err


# -- the contract --------------------------------------------------------------------------
class ProgramInfo(NamedTuple):
    """What one checked, unvectorised run of a model / guide pair found (:func:`discover`).

    Attributes:
        max_plate_nesting: the deepest plate nesting (batch dims) of either program, >= 1.
        latents: names of the model's latent sites, in program order.
        shared_params: param-store names read by both model and guide.
        model_trace, guide_trace: the traces of the unvectorised run.
    """

    max_plate_nesting: int
    latents: tuple
    shared_params: tuple
    model_trace: Trace
    guide_trace: Trace


class _DataPlateCheck(Messenger):
    """Checks, as the ``"data"`` plate is entered, that its subsample size is ``len(x)``."""

    def __init__(self, batch: int, who: str, idx: Optional[torch.Tensor] = None):
        super().__init__()
        self.batch, self.who, self.idx = batch, who, idx

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["name"] != DATA_PLATE or not site_is_subsample(msg):
            return
        value = msg["value"]
        size = int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() else None
        if size is not None and size != self.batch:
            raise ProgramContractError(
                f"the {self.who}'s '{DATA_PLATE}' plate has a subsample of {size} datapoints "
                f"but x has {self.batch} rows; x must be exactly the plate's minibatch: pass "
                f"x[idx] with pyro.plate('{DATA_PLATE}', N, subsample=idx) "
                "(lvm_pyro.sites.data_plate(x, num_data, idx)); an autoguide must be "
                "evaluated on the rows it was set up for")
        if (self.idx is not None and size == len(self.idx)
                and not torch.equal(value.to(self.idx.device), self.idx.to(value.dtype))):
            raise ProgramContractError(
                f"the {self.who}'s '{DATA_PLATE}' plate draws its own subsample instead of the "
                f"minibatch indices idx, so its rows are not the rows of x; build the plate "
                f"with pyro.plate('{DATA_PLATE}', num_data, subsample=idx) (for an autoguide: "
                f"AutoNormal(model, create_plates=lambda x, num_data=None, idx=None: "
                f"pyro.plate('{DATA_PLATE}', num_data or len(x), subsample=idx)))")


def _idx_for(fn: Callable, idx: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The minibatch indices a program's data plate must use: ``idx`` when the program
    is passed it, else none to check."""
    return idx if idx is not None and "idx" in accepted_keywords(fn) else None


def _module_dtypes(fn: Callable) -> set:
    """Floating dtypes of a module program's parameters and buffers (through wrappers)."""
    for _ in range(64):
        if isinstance(fn, torch.nn.Module) or getattr(fn, "__wrapped__", None) is None:
            break
        fn = fn.__wrapped__
    if not isinstance(fn, torch.nn.Module):
        return set()
    mod = fn
    return {t.dtype for t in list(mod.parameters()) + list(mod.buffers())
            if torch.is_floating_point(t)}


def check_dtypes(model: Callable, guide: Callable, x: torch.Tensor, err: Exception) -> None:
    """After a failed run of the programs on ``x`` (raising ``err``): a floating x whose
    dtype differs from a module program's parameters gets the error naming the conversion
    (chained from ``err``); otherwise returns and the caller re-raises ``err``.

    Raises:
        ProgramContractError: the dtypes differ.
    """
    if not torch.is_floating_point(x):
        return
    for who, fn in (("guide", guide), ("model", model)):
        other = _module_dtypes(fn) - {x.dtype}
        if other:
            names = ", ".join(sorted(str(d) for d in other))
            raise ProgramContractError(
                f"x is {x.dtype} but the {who}'s parameters are {names}; convert one to the "
                f"other (x.to({sorted(other, key=str)[0]}) or {who}.to({x.dtype}))") from err


def _unwrap(fn):
    while True:
        if isinstance(fn, (dist.Independent, torch.distributions.Independent)):
            fn = fn.base_dist
        elif isinstance(fn, dist.MaskedDistribution):
            fn = fn.base_dist
        elif isinstance(fn, dist.ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn


def _trim(shape: tuple, n: float) -> tuple:
    return shape[len(shape) - int(n):] if len(shape) > n else shape


def _check_site_shape(name: str, mfn, gfn, max_plate_nesting: float) -> None:
    if mfn.event_dim != gfn.event_dim or tuple(mfn.event_shape) != tuple(gfn.event_shape):
        raise ProgramContractError(
            f"model and guide shapes disagree at latent site '{name}': event shape "
            f"{tuple(mfn.event_shape)} in the model vs {tuple(gfn.event_shape)} in the "
            "guide; sample the same shape in both (declare event dims with .to_event)")
    mshape = _trim(tuple(mfn.batch_shape), max_plate_nesting)
    gshape = _trim(tuple(gfn.batch_shape), max_plate_nesting)
    for a, b in zip_longest(reversed(mshape), reversed(gshape), fillvalue=1):
        if a != b:
            raise ProgramContractError(
                f"model and guide shapes disagree at latent site '{name}': batch shape "
                f"{tuple(mfn.batch_shape)} in the model vs {tuple(gfn.batch_shape)} in the "
                "guide; sample the same shape in both")


def check_shapes(model_trace: Trace, guide_trace: Trace, max_plate_nesting: float = math.inf
                 ) -> None:
    """Model and guide agree on every latent's event dims and (batch + event) shape (batch
    dims beyond ``max_plate_nesting``, e.g. a particle dim, are not compared), and the
    guide has every model latent.

    Raises:
        ProgramContractError: a model latent missing from the guide, or a shape mismatch
            (naming the site and both shapes).
    """
    for name, site in latent_sites(model_trace):
        if site["infer"].get("_enumerate_dim") is not None:
            continue
        if name not in guide_trace.nodes:
            raise ProgramContractError(
                f"model latent site '{name}' has no site of the same name in the guide; "
                "importance weights need q for every latent (sample it in the guide, "
                "under the same name)")
        _check_site_shape(name, site["fn"], guide_trace.nodes[name]["fn"], max_plate_nesting)


class _ShapeCheck(Messenger):
    """Compares each model latent's shape with the guide's as the model samples it, before
    the replayed value reaches the model's code."""

    def __init__(self, guide_trace: Trace):
        super().__init__()
        self.guide_trace = guide_trace

    def _process_message(self, msg) -> None:
        if (msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg)
                or is_auxiliary_site(msg) or msg["name"] not in self.guide_trace.nodes
                or msg["infer"].get("enumerate")):
            return
        g = self.guide_trace.nodes[msg["name"]]
        if g["type"] == "sample" and not g["is_observed"]:
            _check_site_shape(msg["name"], msg["fn"], g["fn"], math.inf)


def _check_structure(model_trace: Trace, guide_trace: Trace) -> None:
    for who, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.name == DATA_PLATE and not frame.vectorized:
                    raise ProgramContractError(
                        f"site '{name}' of the {who} is in a sequential '{DATA_PLATE}' plate "
                        f"(for i in pyro.plate('{DATA_PLATE}', n)); per-datapoint weights "
                        f"need the vectorised form: with pyro.plate('{DATA_PLATE}', n): ...")
    for name, site in guide_trace.nodes.items():
        if (site["type"] == "sample" and site["is_observed"] and not is_auxiliary_site(site)
                and type(_unwrap(site["fn"])).__name__ == "Unit"
                and "has_rsample" not in _unwrap(site["fn"]).__dict__):
            raise ProgramContractError(
                f"guide factor '{name}' does not say whether it is reparameterised: write "
                f"pyro.factor('{name}', ..., has_rsample=True) if it arises from "
                "reparameterised samples, has_rsample=False otherwise")


def outside_data_plate(name: str) -> ProgramContractError:
    """The error for a site outside the ``"data"`` plate (a global latent)."""
    hint = ""
    if name.startswith("_Auto"):
        hint = (" (an autoguide that packs every latent into one global site: use "
                "AutoNormal or AutoDelta, which keep each latent in its plates)")
    return ProgramContractError(
        f"sample site '{name}' is outside the '{DATA_PLATE}' plate{hint}: per-datapoint "
        "log weights need every site inside pyro.plate('data', ...) (global latents "
        "are not supported by the importance-weighted estimators); wrap it with "
        "lvm_pyro.sites.data_plate(x, num_data, idx)")


def param_tensors(trace: Trace) -> dict[str, torch.Tensor]:
    """Param-store name -> unconstrained leaf tensor of a trace's param sites."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            v = site["value"]
            out[name] = v.unconstrained() if hasattr(v, "unconstrained") else v
    return out


def shared_parameters(model_trace: Trace, guide_trace: Trace) -> tuple:
    """Names of the parameters read by both programs (the same tensor in both traces)."""
    m = param_tensors(model_trace)
    ids = {id(t) for t in m.values()}
    return tuple(sorted(n for n, t in param_tensors(guide_trace).items() if id(t) in ids))


def check_param_ownership(modules: dict) -> None:
    """After the programs have run once: raise when Pyro's param store holds, under this
    run's names, tensors of *another* module instance (a second model of the same class
    built without ``pyro.clear_param_store()``: Pyro keeps the first registration, so an
    optimiser built from the store would update the other instance while this one's own
    weights, which its forward uses, never change).

    Args:
        modules: name -> ``nn.Module`` of the programs being trained.

    Raises:
        ProgramContractError: some of the modules' parameters are missing from the store
            while the store holds parameters that none of the modules owns.
    """
    store = pyro.get_param_store()
    stored = {id(p) for _, p in store.named_parameters()}
    own = [(n, p) for m in modules.values() for n, p in m.named_parameters() if p.requires_grad]
    missing = [(n, p) for n, p in own if id(p) not in stored]
    if not missing:
        return
    owned = {id(p) for _, p in own}

    def same_place(store_name: str, path: str, p: torch.Tensor, q: torch.Tensor) -> bool:
        # PyroModule names a parameter by its attribute path, pyro.module by "name$$$path"
        flat = store_name.replace("$$$", ".")
        named = flat == path or flat.endswith("." + path) or path.endswith("." + flat)
        return named and tuple(p.shape) == tuple(q.shape)

    # another instance's tensors stored under the names these modules' parameters would
    # have; a parameter missing for another reason (a module the program never registers
    # with pyro.module) is left to the Trainer's unregistered-parameter warning
    foreign = [n for n, q in store.named_parameters() if id(q) not in owned
               and any(same_place(n, path, p, q) for path, p in missing)]
    if foreign:
        raise ProgramContractError(
            f"Pyro's param store holds {len(foreign)} parameters under this model's names "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}) that belong to "
            "another module instance (built earlier in this process), so training would "
            "update that instance and never this one; call pyro.clear_param_store() before "
            "building this model and guide")


def discover(model: Callable, guide: Callable, x: torch.Tensor, *,
             num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None) -> ProgramInfo:
    """Run guide and model once, unvectorised and without gradients (global RNG states
    restored afterwards), and check the site contract.

    Raises:
        ProgramContractError (a ``ValueError``): a ``"data"`` plate whose subsample is not
            ``len(x)``; a sequential ``"data"`` plate; a latent, observed or factor site
            outside the ``"data"`` plate (a global latent); a model latent missing from the guide
            or with another shape there; a guide ``pyro.factor`` without ``has_rsample``;
            floating data whose dtype differs from a module program's parameters (when the
            run fails); ``x`` with no datapoints.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ProgramContractError(f"x holds no datapoints (shape {shape}); pass a (batch, ...) "
                                   "tensor with batch >= 1")
    batch = x.shape[0]
    rng = get_rng_state()
    try:
        with torch.no_grad(), poutine.block():
            try:
                with _DataPlateCheck(batch, "guide", _idx_for(guide, idx)):
                    guide_trace = trace_program(guide, x, num_data=num_data, idx=idx, block=False)
                with _DataPlateCheck(batch, "model", _idx_for(model, idx)), \
                        _ShapeCheck(guide_trace):
                    model_trace = trace_program(model, x, num_data=num_data, idx=idx,
                                                replay=guide_trace, block=False)
            except ProgramContractError as err:  # without the trace shapes Pyro appends
                raise ProgramContractError(str(err).splitlines()[0]) from None
            except (RuntimeError, TypeError) as err:
                check_dtypes(model, guide, x, err)
                raise
    finally:
        set_rng_state(rng)
    _check_structure(model_trace, guide_trace)
    for trace in (model_trace, guide_trace):
        for name, site in weighted_sites(trace):
            if data_plate_frame(site) is None:
                raise outside_data_plate(name)
    nesting = 1
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        nesting = max(nesting, -frame.dim)
    check_shapes(model_trace, guide_trace, nesting)
    latents = tuple(n for n, _ in latent_sites(model_trace))
    return ProgramInfo(nesting, latents, shared_parameters(model_trace, guide_trace),
                       model_trace, guide_trace)


def check_not_point_mass(model_trace: Trace, guide_trace: Trace, what: str) -> None:
    """Refuse a guide whose continuous latent is a point mass (``Delta``, e.g. ``AutoDelta``):
    log q is then 0 at the point, and log p(x, z_MAP) is not an estimate of log p(x).
    Point masses on discrete latents (a probability, not a density: VQ-VAE codes), sites
    that are deterministic in the model too (a ``Delta`` there), and guides whose ``Delta``
    sites transform a draw of an auxiliary guide site (``AutoNormal``: ``z`` is a ``Delta``
    at the transformed ``z_unconstrained`` draw, whose density is in log q) are allowed.

    Raises:
        ProgramContractError: naming the site and ``what`` refused it.
    """
    drawn = any(s["infer"].get("is_auxiliary") and not isinstance(_unwrap(s["fn"]), dist.Delta)
                for _, s in latent_sites(guide_trace))
    if drawn:  # Delta sites are deterministic transforms of auxiliary draws
        return
    for name, site in latent_sites(guide_trace):
        if isinstance(_unwrap(site["fn"]), dist.Delta):
            msite = model_trace.nodes.get(name)
            if msite is not None and isinstance(_unwrap(msite["fn"]), dist.Delta):
                continue  # a deterministic site in both programs (e.g. VQ-VAE's z_q)
            support = msite["fn"].support if msite is not None else site["fn"].support
            if not support.is_discrete:
                raise ProgramContractError(
                    f"guide site '{name}' is a point mass (Delta, e.g. AutoDelta) on a "
                    f"continuous latent: {what} needs a guide with a density (a point mass "
                    "gives log p(x, z_MAP), not log p(x)); use e.g. AutoNormal or an "
                    "amortised Normal guide")


def guide_parents(guide: Callable, x: torch.Tensor, latent: str, *,
                  num_data: Optional[int] = None, idx: Optional[torch.Tensor] = None) -> list[str]:
    """The guide's latent sites on which the distribution of ``latent`` depends (found by
    Pyro's provenance tracking, ``pyro.infer.inspect.get_dependencies``; for a guide that
    provenance tracking cannot run, by re-running the guide with each earlier latent
    redrawn and comparing ``latent``'s log density at its value); ``[]`` for a root
    latent q(z | x). Global random state is restored."""
    from pyro.infer.inspect import get_dependencies  # noqa: PLC0415

    kwargs = {k: v for k, v in (("num_data", num_data), ("idx", idx)) if v is not None}
    rng = get_rng_state()
    try:
        with torch.no_grad(), poutine.block():
            try:
                deps = get_dependencies(adapt_program(guide), (x,), kwargs)
                parents = deps["prior_dependencies"].get(latent, {})
                return [p for p in parents if p != latent]
            except Exception:  # noqa: BLE001 - provenance tracking failed: perturb instead
                return _parents_by_perturbation(guide, x, latent, num_data, idx)
    finally:
        set_rng_state(rng)


def _parents_by_perturbation(guide, x, latent, num_data, idx) -> list[str]:
    trace = trace_program(guide, x, num_data=num_data, idx=idx)
    if latent not in trace.nodes:
        return []
    site = trace.nodes[latent]
    base = site["fn"].log_prob(site["value"])
    parents = []
    for name, other in latent_sites(trace):
        if name == latent:
            break
        redrawn = other["fn"].sample()
        prog = poutine.condition(guide, data={name: redrawn, latent: site["value"]})
        again = trace_program(prog, x, num_data=num_data, idx=idx, keywords_of=guide)
        if not torch.allclose(again.nodes[latent]["fn"].log_prob(site["value"]), base):
            parents.append(name)
    return parents


def warn_if_nan(value: float, what: str) -> float:
    """Warn (``RuntimeWarning``) when a loss value is NaN, as Pyro's ``warn_if_nan``;
    return the value."""
    if isinstance(value, float) and math.isnan(value):
        warnings.warn(f"{what} is NaN", RuntimeWarning, stacklevel=2)
    return value
