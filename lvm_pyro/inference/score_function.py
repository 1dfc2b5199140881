"""Score-function (likelihood-ratio, REINFORCE) gradients on demand, with baselines.

For a guide site z ~ q_phi(z | x) the two estimators of grad_phi E_q[f(z)] are

    pathwise:        E_eps[ grad_phi f(g_phi(eps)) ]                  (z = g_phi(eps))
    score function:  E_q[ (f(z) - b) grad_phi log q_phi(z | x) ]       (Williams 1992)

and any baseline b that does not depend on z leaves the second unbiased, since
E_q[grad_phi log q_phi(z)] = 0 (lecture, section 7; Mnih & Gregor 2014, eq. 9-10).

Pyro's :class:`~pyro.infer.TraceGraph_ELBO` uses the score-function estimator for every
guide site whose distribution has no ``rsample`` and the pathwise one otherwise, with f
the site's Rao-Blackwellised *downstream cost* (Schulman et al. 2015) and optional
baselines read from the guide site's ``infer={"baseline": {...}}``. This module makes
that choice for the user, for any site, so the two estimators can be compared on the
same model and guide:

* :class:`ScoreFunctionMessenger` (handler) wraps chosen latent sites' distributions in
  :class:`ScoreFunctionDistribution` (same density and samples, ``has_rsample=False``,
  samples detached) and attaches a baseline to the site's ``infer`` dict;
* :class:`ScoreFunctionGuide` applies it to a guide of the site convention
  (``guide(x, *, num_data=None, idx=None)``), owns an optional learned baseline network
  and registers it with ``pyro.module`` so that any optimiser over the param store
  trains it (Pyro's baseline loss sum (f - b)^2 is added to the surrogate).

Baselines (``baseline=``):

* ``None``: the plain estimator;
* ``"decaying_avg"``: Pyro's exponential moving average of the downstream cost,
  b_t = beta b_{t-1} + (1 - beta) f_{t-1}, element-wise over the site's batch shape
  (minibatch slots hold random datapoints, so the slots' averages estimate the same
  mean cost: when the batch size changes, e.g. on a data set's last, smaller batch,
  every slot of the new shape starts from the mean of the previous slots);
* a torch module (e.g. :class:`MLPBaseline`), or a dict site name -> module: a learned,
  input-dependent baseline b_psi(x) (NVIL, Mnih & Gregor 2014, section 3.3), evaluated
  on x broadcast to the site's batch shape (particles included) and multiplied by the
  data plate's N / B, as the downstream cost is; ``use_decaying_avg=True`` adds the
  moving average to it (b = avg + b_psi(x)).

Only TraceGraph_ELBO reads the baselines; other objectives ignore the ``infer`` entry,
and every estimator sees the same density values.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import pyro
import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

from ..nn import MLP
from ..sites import DATA_PLATE
from .program import program_kwargs

__all__ = ["ScoreFunctionDistribution", "ScoreFunctionMessenger", "ScoreFunctionGuide",
           "MLPBaseline", "score_function"]


class ScoreFunctionDistribution(TorchDistribution):
    """A distribution with the density and samples of ``base_dist`` but no ``rsample``.

    Samples are drawn with ``base_dist.sample`` (no gradient path), so Pyro's estimators
    treat the site as non-reparameterisable and use the likelihood-ratio estimator
    (``score_parts``: score_function = log_prob, entropy_term = 0). ``expand`` keeps the
    wrapper, so the particle plate's broadcasting does not restore ``rsample``.

    Args:
        base_dist: any Pyro / torch distribution.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, base_dist: TorchDistribution):
        self.base_dist = base_dist
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    @property
    def has_enumerate_support(self) -> bool:
        return self.base_dist.has_enumerate_support

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.base_dist.sample(sample_shape).detach()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist.log_prob(value)

    def expand(self, batch_shape, _instance=None) -> "ScoreFunctionDistribution":
        return ScoreFunctionDistribution(self.base_dist.expand(batch_shape))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base_dist.enumerate_support(expand)

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance

    def entropy(self) -> torch.Tensor:
        return self.base_dist.entropy()


class MLPBaseline(nn.Module):
    """Learned input-dependent baseline b_psi(x) (NVIL, Mnih & Gregor 2014, sec. 3.3):
    an :class:`~lvm_pyro.nn.MLP` from (..., *in_shape) to (...,), times ``output_scale``.

    The downstream cost of a latent site is a sum over many terms (e.g. D pixels), so
    its scale is far from the O(1) of a freshly initialised network; ``output_scale``
    (e.g. D) lets Adam's O(lr) steps reach it in a reasonable number of steps.

    Args:
        in_shape: event shape of the baseline's input (usually of x).
        hidden_dims: widths of the hidden layers (``()`` for a linear baseline).
        output_scale: multiplies the network's output (> 0).
        activation: as :class:`~lvm_pyro.nn.MLP`.

    Raises:
        ValueError: ``output_scale <= 0`` (and MLP's errors).
    """

    def __init__(self, in_shape: Sequence[int], hidden_dims: Sequence[int] = (100,),
                 output_scale: float = 1.0, activation: str = "tanh"):
        super().__init__()
        if not output_scale > 0:
            raise ValueError(f"output_scale must be > 0, got {output_scale}")
        self.net = MLP(in_shape, hidden_dims, (1,), activation=activation)
        self.output_scale = float(output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) * self.output_scale  # (...,)


class _ScaledBaseline(nn.Module):
    """net(x) * scale: the data plate's N / B applied to a per-datapoint baseline."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _data_scale(msg: dict) -> float:
    for frame in msg["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.full_size is not None and frame.size:
            return frame.full_size / frame.size
    return 1.0


class ScoreFunctionMessenger(Messenger):
    """Handler: likelihood-ratio gradients (and baselines) for chosen latent sites.

    Every unobserved, non-subsample sample site whose name is in ``sites`` (all when
    ``None``) gets its distribution wrapped in :class:`ScoreFunctionDistribution`;
    :class:`~pyro.infer.TraceGraph_ELBO` then estimates its gradient by
    E[(f - b) grad log q] with f the downstream cost and b the baseline given here.

    Args:
        sites: site names to affect, or ``None`` for every latent site.
        baseline: ``None``; ``"decaying_avg"``; a module b(x) -> (...,) per datapoint
            (see :class:`MLPBaseline`); or a dict site -> module. A module is called on
            ``baseline_input`` broadcast to the site's batch shape and its output is
            multiplied by the data plate's N / B.
        baseline_input: the tensor a learned baseline sees, (batch, ...) (usually x);
            required with a module baseline.
        baseline_beta: decay of the moving average, in [0, 1).
        use_decaying_avg: with a module baseline, also subtract the moving average
            (b = avg + b_psi(x)).

    Raises:
        ValueError: unknown baseline kind, ``baseline_beta`` outside [0, 1), a module
            baseline without ``baseline_input``, or a distribution that cannot be
            wrapped.
    """

    def __init__(self, sites: Optional[Sequence[str]] = None,
                 baseline: Union[None, str, nn.Module, Mapping[str, nn.Module]] = None,
                 baseline_input: Optional[torch.Tensor] = None, baseline_beta: float = 0.9,
                 use_decaying_avg: bool = False):
        super().__init__()
        if isinstance(baseline, str) and baseline != "decaying_avg":
            raise ValueError(f"baseline must be None, 'decaying_avg', a torch module or a dict "
                             f"site -> module, got {baseline!r}")
        if baseline is not None and not isinstance(baseline, (str, nn.Module, Mapping)):
            raise ValueError(f"baseline must be None, 'decaying_avg', a torch module or a dict "
                             f"site -> module, got {type(baseline).__name__}")
        if not 0.0 <= baseline_beta < 1.0:
            raise ValueError(f"baseline_beta must be in [0, 1), got {baseline_beta}")
        learned = isinstance(baseline, (nn.Module, Mapping))
        if learned and baseline_input is None:
            raise ValueError("a learned baseline needs baseline_input (usually the minibatch x)")
        self.sites = None if sites is None else frozenset(sites)
        self.baseline = baseline
        self.baseline_input = baseline_input
        self.baseline_beta = float(baseline_beta)
        self.use_decaying_avg = bool(use_decaying_avg) or baseline == "decaying_avg"

    def _selected(self, msg: dict) -> bool:
        return (msg["type"] == "sample" and not msg["is_observed"]
                and not isinstance(msg["fn"], _Subsample)
                and (self.sites is None or msg["name"] in self.sites))

    def _net(self, name: str) -> Optional[nn.Module]:
        if isinstance(self.baseline, nn.Module):
            return self.baseline
        if isinstance(self.baseline, Mapping):
            return self.baseline.get(name)
        return None

    def _pyro_sample(self, msg: dict) -> None:
        if not self._selected(msg):
            return
        if not isinstance(msg["fn"], ScoreFunctionDistribution):
            msg["fn"] = ScoreFunctionDistribution(msg["fn"])
        options: dict = {}
        if self.use_decaying_avg:
            options.update(use_decaying_avg_baseline=True, baseline_beta=self.baseline_beta)
        net = self._net(msg["name"])
        if net is not None:
            # the input is broadcast to the site's final batch shape in _pyro_post_sample,
            # once the enclosing plates (particles included) have expanded the distribution
            options.update(nn_baseline=net, nn_baseline_input=self.baseline_input)
        if options:
            msg["infer"] = {**msg["infer"], "baseline": options}

    def _pyro_post_sample(self, msg: dict) -> None:
        if not self._selected(msg):
            return
        if self.use_decaying_avg:
            _fit_decaying_average(msg["name"], msg["fn"].batch_shape)
        options = msg["infer"].get("baseline")
        if not options or options.get("nn_baseline") is None:
            return
        x = options["nn_baseline_input"]
        batch_shape = msg["fn"].batch_shape
        try:
            expanded = x.expand(*batch_shape, *x.shape[1:])
        except RuntimeError as e:
            raise ValueError(f"site '{msg['name']}': baseline_input of shape {tuple(x.shape)} "
                             f"does not broadcast to the site's batch shape {tuple(batch_shape)}; "
                             "pass the minibatch x (batch, ...)") from e
        # mutate the dict in place: the trace recorded this site (same dict) already
        options["nn_baseline_input"] = expanded
        scale = _data_scale(msg)
        if scale != 1.0:
            options["nn_baseline"] = _ScaledBaseline(options["nn_baseline"], scale)


_AVG_PREFIX = "__baseline_avg_downstream_cost_"  # Pyro's name (pyro/infer/tracegraph_elbo.py)


def _fit_decaying_average(name: str, batch_shape: torch.Size) -> None:
    """Give Pyro's stored moving average of site ``name`` the site's batch shape (filled
    with the mean of the stored slots) when the batch size changed since the last step."""
    store = pyro.get_param_store()
    key = _AVG_PREFIX + name
    if key not in store:
        return
    avg = store[key]
    if avg.shape != batch_shape:
        with torch.no_grad():
            store[key] = avg.detach().mean().expand(batch_shape).clone()


class ScoreFunctionGuide(nn.Module):
    """A guide of the site convention with score-function gradients for chosen sites.

    ``ScoreFunctionGuide(guide)(x, num_data=N, idx=idx)`` runs ``guide`` under
    :class:`ScoreFunctionMessenger`, with ``baseline_input = x``. A learned baseline
    module is a submodule (its parameters are in the guide's ``state_dict``) and is
    registered with ``pyro.module("score_baseline_<site>", ...)`` on every call, so the
    param-store optimiser (``pyro.infer.SVI``, :class:`lvm_pyro.training.Trainer`)
    trains it with Pyro's baseline loss sum (f - b)^2.

    Use it with :class:`~pyro.infer.TraceGraph_ELBO` (other objectives ignore the
    baselines; ``Trace_ELBO`` would still use the score function for the wrapped sites,
    but without Rao-Blackwellisation or baselines).

    Args:
        guide: ``guide(x, *, num_data=None, idx=None)`` (keywords passed if accepted).
        sites, baseline, baseline_beta, use_decaying_avg: as
            :class:`ScoreFunctionMessenger`.
    """

    def __init__(self, guide: Callable, sites: Optional[Sequence[str]] = None,
                 baseline: Union[None, str, nn.Module, Mapping[str, nn.Module]] = None,
                 baseline_beta: float = 0.9, use_decaying_avg: bool = False):
        super().__init__()
        # validate once at construction (a dummy input stands in for x)
        ScoreFunctionMessenger(sites, baseline, torch.zeros(1), baseline_beta, use_decaying_avg)
        self.guide = guide
        self.sites = None if sites is None else list(sites)
        self.baseline_kind = baseline if isinstance(baseline, str) or baseline is None else None
        if isinstance(baseline, Mapping):
            self.baselines = nn.ModuleDict(dict(baseline))
        elif isinstance(baseline, nn.Module):
            self.baselines = nn.ModuleDict({"all": baseline})
        else:
            self.baselines = None
        self.baseline_beta = float(baseline_beta)
        self.use_decaying_avg = bool(use_decaying_avg)

    def forward(self, x: torch.Tensor, *, num_data: Optional[int] = None,
                idx: Optional[torch.Tensor] = None):
        baseline: Union[None, str, nn.Module, dict] = self.baseline_kind
        if self.baselines is not None:
            for name, net in self.baselines.items():
                pyro.module(f"score_baseline_{name}", net)
            baseline = (self.baselines["all"] if list(self.baselines) == ["all"]
                        else dict(self.baselines.items()))
        with ScoreFunctionMessenger(self.sites, baseline, x, self.baseline_beta,
                                    self.use_decaying_avg):
            return self.guide(x, **program_kwargs(self.guide, num_data, idx))


def score_function(guide: Callable, sites: Optional[Sequence[str]] = None,
                   baseline: Union[None, str, nn.Module, Mapping[str, nn.Module]] = None,
                   **kwargs) -> ScoreFunctionGuide:
    """Shorthand for :class:`ScoreFunctionGuide` ``(guide, sites, baseline, **kwargs)``."""
    return ScoreFunctionGuide(guide, sites, baseline, **kwargs)
