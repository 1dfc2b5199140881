"""Signal-to-noise ratio of stochastic gradient estimators (Rainforth et al. 2018).

For an estimator g of the gradient at fixed parameters, repeated ``num_draws`` times,

    SNR_j = | E[g_j] | / sd(g_j)          (Rainforth et al. 2018, eq. 6)

per parameter element j. Rainforth et al. show that for the standard IWAE estimator the
guide's (encoder's) SNR falls like 1 / sqrt(K) while the model's (decoder's) rises like
sqrt(K); Tucker et al. 2018 show DReG's guide SNR does not fall. This module measures it
for any Pyro ``ELBO`` and any model / guide pair, with parameters grouped by the program
they appear in: ``"encoder"`` (guide) and ``"decoder"`` (model).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import pyro
import torch
from pyro.infer import ELBO
from pyro.util import get_rng_state, set_rng_state

from .program import bind_program, trace_guide_then_model

__all__ = ["GradientStats", "gradient_statistics", "parameter_groups"]


class GradientStats(NamedTuple):
    """Per-element statistics of a gradient estimator over repeated draws.

    Attributes:
        mean: parameter name -> E[g] (same shape as the parameter, float64), the gradient
            of the *loss* (negative objective) with respect to the unconstrained parameter.
        variance: name -> Var[g] (unbiased, ddof = 1), float64.
        snr: name -> |E[g]| / sd(g), float64; ``inf`` where the variance is 0 and the mean
            is not, ``nan`` where both are 0 (e.g. a parameter the objective ignores).
        groups: ``{"encoder": [guide parameter names], "decoder": [model parameter
            names]}``; a parameter used by both programs is listed in both.
        num_draws: number of gradient draws.
    """

    mean: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    snr: dict[str, torch.Tensor]
    groups: dict[str, list[str]]
    num_draws: int

    def group_snr(self, group: str, reduce: str = "mean") -> float:
        """SNR of one group (``"encoder"`` / ``"decoder"``) reduced over its finite
        elements: ``"mean"`` (Rainforth et al.'s average), ``"median"``, or
        ``"norm"`` = ||E g|| / sqrt(sum Var g) (the SNR of the whole group's vector)."""
        names = self.groups[group]
        if not names:
            raise ValueError(f"group {group!r} has no parameters")
        if reduce == "norm":
            num = math.sqrt(sum(float(self.mean[n].square().sum()) for n in names))
            den = math.sqrt(sum(float(self.variance[n].sum()) for n in names))
            return num / den if den > 0 else float("inf")
        vals = torch.cat([self.snr[n].flatten() for n in names])
        vals = vals[torch.isfinite(vals)]
        if vals.numel() == 0:
            return float("nan")
        if reduce == "mean":
            return float(vals.mean())
        if reduce == "median":
            return float(vals.median())
        raise ValueError(f"reduce must be 'mean', 'median' or 'norm', got {reduce!r}")

    def summary(self) -> dict[str, dict[str, float]]:
        """``{group: {"snr_mean", "snr_median", "snr_norm", "num_elements"}}`` for the
        non-empty groups."""
        out = {}
        for g, names in self.groups.items():
            if names:
                out[g] = {"snr_mean": self.group_snr(g, "mean"),
                          "snr_median": self.group_snr(g, "median"),
                          "snr_norm": self.group_snr(g, "norm"),
                          "num_elements": sum(self.mean[n].numel() for n in names)}
        return out


def parameter_groups(model: Callable, guide: Callable, *args, **kwargs) -> dict[str, list[str]]:
    """Param-store names used by the guide (``"encoder"``) and by the model replayed on
    the guide (``"decoder"``), found by one unvectorised run without gradients (the
    global RNG states are restored afterwards).
    ``args`` / ``kwargs`` as for the objective (``num_data`` / ``idx`` are passed only to
    programs that accept them)."""
    extra = dict(kwargs)
    num_data, idx = extra.pop("num_data", None), extra.pop("idx", None)
    rng = get_rng_state()
    try:
        with torch.no_grad():
            mt, gt = trace_guide_then_model(bind_program(model, args[1:], extra),
                                            bind_program(guide, args[1:], extra), args[0],
                                            num_data=num_data, idx=idx, block=True)
    finally:
        set_rng_state(rng)  # the discovery run draws nothing the caller would see
    return {"encoder": [n for n, s in gt.nodes.items() if s["type"] == "param"],
            "decoder": [n for n, s in mt.nodes.items() if s["type"] == "param"]}


def gradient_statistics(objective: ELBO, model: Callable, guide: Callable, *args,
                        num_draws: int = 100, groups: Optional[dict[str, list[str]]] = None,
                        **kwargs) -> GradientStats:
    """Mean, variance and SNR of ``objective``'s gradient estimator at the current
    parameters, over ``num_draws`` independent calls of ``objective.loss_and_grads``.

    Args:
        objective: any Pyro ``ELBO`` (``IWAE_ELBO(K, gradient=...)``, ``Trace_ELBO()``...).
        model, guide: the programs; ``args`` / ``kwargs`` are passed to the objective
            (e.g. ``x``, ``num_data=N``, ``idx=idx``).
        num_draws: >= 2 repetitions (the sd needs two).
        groups: parameter names per group; default :func:`parameter_groups`.

    Returns:
        :class:`GradientStats` (gradients of the loss, float64). Parameters are not
        changed; their ``.grad`` is restored to what it was. The running sums are in
        float64, memory O(number of parameters).

    Raises:
        ValueError: ``num_draws < 2``; no parameters.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 (a standard deviation needs two), got {num_draws}")
    if groups is None:
        groups = parameter_groups(model, guide, *args, **kwargs)
    store = pyro.get_param_store()
    names = sorted({n for ns in groups.values() for n in ns})
    if not names:
        raise ValueError("the programs have no parameters to take gradients of")
    params = {n: store.get_param(n).unconstrained() for n in names}
    saved = {n: (None if p.grad is None else p.grad.clone()) for n, p in params.items()}
    s1 = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    s2 = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    try:
        for _ in range(num_draws):
            for p in params.values():
                p.grad = None
            objective.loss_and_grads(model, guide, *args, **kwargs)
            for n, p in params.items():
                if p.grad is not None:
                    g = p.grad.detach().double()
                    s1[n] += g
                    s2[n] += g * g
    finally:
        for n, p in params.items():
            p.grad = saved[n]
    mean, var, snr = {}, {}, {}
    for n in names:
        m = s1[n] / num_draws
        v = ((s2[n] - num_draws * m * m) / (num_draws - 1)).clamp_min(0.0)
        mean[n], var[n] = m, v
        snr[n] = m.abs() / v.sqrt()  # 0/0 -> nan, x/0 -> inf
    return GradientStats(mean, var, snr, {g: list(ns) for g, ns in groups.items()}, num_draws)
