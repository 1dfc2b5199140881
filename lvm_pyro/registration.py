"""Announcing a ``PyroModule``'s child ``nn.Module`` once per call instead of once per
parameter, inside a caller that opts in (the training step).

A :class:`~pyro.nn.PyroModule` registers each child ``nn.Module`` with ``pyro.module`` on
every attribute access inside a call: one ``pyro.param`` statement -- one message through
Pyro's whole handler stack -- per parameter tensor, about 35 us each on a CPU, which for
a small network costs more than its forward pass. :class:`CachedPyroModule` keeps that
behaviour everywhere except inside :func:`cached_registration`, where a child whose
parameters Pyro's param store already holds (the very same tensors, all requiring grad,
under the same names) is announced with ONE ``pyro.param`` statement (its first
parameter), so that every handler still sees that the program read parameters (Pyro's
ELBOs back-propagate only then). A child seen for the first time, a changed set of
parameters, or a param store holding other tensors (a loaded store) takes Pyro's full
``pyro.module`` path.

Inside the context a trace shows one param site per child module instead of one per
tensor, so use it only where nothing reads the param sites to find the parameters.
:class:`~lvm_pyro.training.Trainer` optimises the whole param store, and its step opts in
when its objective says it reads param sites at most to learn that some were read
(:func:`objective_allows_cached_registration`: our lean ``Trace_ELBO`` path and the
particle objectives with pathwise / score-function gradients; not DReG / STL, which
detach exactly the parameters the traces name, nor Pyro's other ELBOs, whose JIT
variants collect their parameters from the sites). ``pyro.infer.SVI`` collects its
parameters from the param sites: never wrap an ``SVI.step`` in it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from pyro.nn import PyroModule
from pyro.nn.module import _is_module_local_param_enabled
from pyro.params.param_store import param_with_module_name
import pyro

__all__ = ["CachedPyroModule", "cached_registration", "registration_cached",
           "objective_allows_cached_registration"]

_state = threading.local()


@contextlib.contextmanager
def cached_registration() -> Iterator[None]:
    """Inside the block (on this thread; nestable), :class:`CachedPyroModule` announces
    each already-registered child module with one param statement (module docstring)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def objective_allows_cached_registration(objective: Any) -> bool:
    """Whether ``objective`` declares ``param_sites_read = False``: it reads its programs'
    param sites at most to learn whether any parameter was read, so one site per child
    module is enough. Objectives without the attribute (Pyro's) are assumed to read them."""
    return getattr(objective, "param_sites_read", True) is False


def registration_cached() -> bool:
    """Whether :func:`cached_registration` is active on this thread."""
    return getattr(_state, "depth", 0) > 0


class CachedPyroModule(PyroModule):
    """A ``PyroModule`` whose child ``nn.Module`` registrations are cached inside
    :func:`cached_registration` (module docstring); outside it, exactly ``PyroModule``.
    The base class of our models and guides."""

    def __getattr__(self, name: str) -> Any:
        if getattr(_state, "depth", 0) and not _is_module_local_param_enabled():
            child = self.__dict__["_modules"].get(name)
            if (child is not None and not isinstance(child, PyroModule)
                    and self.__dict__["_pyro_context"].active):
                return self._announce(name, child)
        return super().__getattr__(name)

    def _announce(self, name: str, child: Any) -> Any:
        full = self._pyro_get_fullname(name)
        params = [(param_with_module_name(full, n), p) for n, p in child.named_parameters()]
        store = pyro.get_param_store()._params
        cache = self.__dict__.setdefault("_lvm_registered", {})
        if (cache.get(name) == full and params
                and all(p.requires_grad and store.get(n) is p for n, p in params)):
            pyro.param(params[0][0], params[0][1])
            return child
        out = super().__getattr__(name)  # Pyro's pyro.module: one statement per tensor
        cache[name] = full
        return out
