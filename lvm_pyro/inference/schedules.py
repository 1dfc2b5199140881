"""Schedules of a loss weight (or target) over optimiser steps: one interface for KL
warm-up, cyclical annealing and the capacity of Burgess et al. 2018.

A schedule is a frozen dataclass with JSON-able fields and a ``__call__(t) -> float``,
``t`` = the number of optimiser steps already taken (``t = 0`` for the first step). It is
a pure function of ``t``: the only training state it implies is the step counter, which
the objective that owns the schedule keeps and checkpoints
(:meth:`lvm_pyro.inference.kl_weighting.KLWeighted_ELBO.state_dict`).

* :class:`ConstantSchedule` -- beta_t = value (beta-VAE, Higgins et al. 2017).
* :class:`LinearWarmup` -- beta_t = value * min(1, t / T) (Bowman et al. 2015, sec. 3.1).
* :class:`CyclicalSchedule` -- beta_t = value * min(1, tau_t / R),
  tau_t = (t mod P) / P (Fu et al. 2019, eq. 6, with the linear ramp f(tau) = tau / R).
* :class:`CapacitySchedule` -- the KL target C_t = C_max * min(1, t / T) in nats
  (Burgess et al. 2018, sec. 5, eq. 8; used by
  :class:`lvm_pyro.inference.kl_weighting.Capacity_ELBO`).

A new schedule is one more subclass of :class:`Schedule` with its fields validated in
``__post_init__``; :func:`schedule_to_dict`
and :func:`schedule_from_dict` serialise every subclass without further registration.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Schedule", "ConstantSchedule", "LinearWarmup", "CyclicalSchedule", "CapacitySchedule",
           "schedule_to_dict", "schedule_from_dict"]


def _check_nonnegative_real(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_step_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (optimiser steps), got {value!r}")


def _check_step(t: int) -> int:
    if isinstance(t, bool) or int(t) != t or t < 0:
        raise ValueError(f"the optimiser step t must be an integer >= 0, got {t!r}")
    return int(t)


@dataclass(frozen=True)
class Schedule:
    """Base class: a weight as a function of the optimiser step.

    Subclasses are frozen dataclasses whose fields are JSON-able numbers, and implement
    ``__call__(t: int) -> float`` for ``t >= 0`` optimiser steps already taken.
    """

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """``{"type": class name, **fields}``, JSON-able (see :func:`schedule_from_dict`)."""
        return schedule_to_dict(self)


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """beta_t = value for every step (beta-VAE, Higgins et al. 2017).

    Args:
        value: the weight, a finite float >= 0.

    Raises:
        ValueError: ``value`` negative or not finite.
    """

    value: float = 1.0

    def __post_init__(self):
        _check_nonnegative_real("value", self.value)

    def __call__(self, t: int) -> float:
        _check_step(t)
        return float(self.value)


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """Linear KL warm-up (Bowman et al. 2015, sec. 3.1): beta_t = value * min(1, t / T).

    The first step (t = 0) has weight 0 and ``value`` is reached after T steps;
    ``warmup_steps = 0`` is the constant ``value``.

    Args:
        value: the final weight, a finite float >= 0.
        warmup_steps: T, an integer >= 0 (optimiser steps).

    Raises:
        ValueError: a negative / non-finite ``value`` or a negative / non-integer
            ``warmup_steps``; on a call, a negative or non-integer step.
    """

    value: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self):
        _check_nonnegative_real("value", self.value)
        _check_step_count("warmup_steps", self.warmup_steps, 0)

    def __call__(self, t: int) -> float:
        t = _check_step(t)
        if self.warmup_steps == 0:
            return float(self.value)
        return float(self.value) * min(1.0, t / self.warmup_steps)


@dataclass(frozen=True)
class CyclicalSchedule(Schedule):
    """Cyclical annealing (Fu et al. 2019, eq. 6, linear ramp): the step axis is cut into
    cycles of ``period`` steps; in each, the weight rises linearly from 0 to ``value`` over
    the first ``ramp_fraction`` of the cycle and stays at ``value`` for the rest:

        tau_t = (t mod period) / period,    beta_t = value * min(1, tau_t / ramp_fraction)

    (Fu et al. use R = 0.5 and M = 4 cycles, i.e. ``period`` = total steps / 4.)

    Args:
        value: the weight at the top of each cycle, a finite float >= 0.
        period: steps per cycle, an integer >= 1.
        ramp_fraction: R in (0, 1], the part of a cycle spent increasing.

    Raises:
        ValueError: arguments outside those ranges; on a call, a negative step.
    """

    value: float = 1.0
    period: int = 1000
    ramp_fraction: float = 0.5

    def __post_init__(self):
        _check_nonnegative_real("value", self.value)
        _check_step_count("period", self.period, 1)
        r = self.ramp_fraction
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0:
            raise ValueError(f"ramp_fraction must be in (0, 1], got {r!r}")

    def __call__(self, t: int) -> float:
        t = _check_step(t)
        tau = (t % self.period) / self.period
        return float(self.value) * min(1.0, tau / self.ramp_fraction)


@dataclass(frozen=True)
class CapacitySchedule(Schedule):
    """The capacity C_t of Burgess et al. 2018 ("Understanding disentangling in beta-VAE",
    sec. 5, eq. 8): the target of the KL term, in nats per datapoint, rising linearly from
    0 to ``capacity_max`` over ``capacity_steps`` optimiser steps and constant after:

        C_t = capacity_max * min(1, t / capacity_steps)      (C_t = capacity_max when T = 0)

    (their dSprites runs: C_max = 25 nats over 100000 steps, with gamma = 1000.) The
    objective that uses it is :class:`~lvm_pyro.inference.kl_weighting.Capacity_ELBO`.

    Args:
        capacity_max: C_max, nats per datapoint, a finite float >= 0.
        capacity_steps: T, an integer >= 0 (optimiser steps).

    Raises:
        ValueError: a negative / non-finite ``capacity_max`` or a negative / non-integer
            ``capacity_steps``; on a call, a negative or non-integer step.
    """

    capacity_max: float = 25.0
    capacity_steps: int = 0

    def __post_init__(self):
        _check_nonnegative_real("capacity_max", self.capacity_max)
        _check_step_count("capacity_steps", self.capacity_steps, 0)

    @property
    def value(self) -> float:
        """The final capacity C_max (nats), the value every schedule reaches or tops at."""
        return float(self.capacity_max)

    def __call__(self, t: int) -> float:
        t = _check_step(t)
        if self.capacity_steps == 0:
            return float(self.capacity_max)
        return float(self.capacity_max) * min(1.0, t / self.capacity_steps)


def _subclasses(cls: type) -> dict[str, type]:
    out: dict[str, type] = {}
    for sub in cls.__subclasses__():
        out[sub.__name__] = sub
        out.update(_subclasses(sub))
    return out


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """A schedule as ``{"type": class name, **fields}`` (JSON-able).

    Raises:
        ValueError: ``schedule`` is not a :class:`Schedule` dataclass.
    """
    if not isinstance(schedule, Schedule) or not dataclasses.is_dataclass(schedule):
        raise ValueError(f"expected a Schedule (e.g. LinearWarmup(1.0, 1000)), got "
                         f"{type(schedule).__name__}")
    return {"type": type(schedule).__name__, **dataclasses.asdict(schedule)}


def schedule_from_dict(data: dict[str, Any]) -> Schedule:
    """Inverse of :func:`schedule_to_dict` (any subclass of :class:`Schedule` defined so far).

    Raises:
        ValueError: no or an unknown ``"type"``, or fields the schedule does not take /
            rejects.
    """
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"a schedule is a dict with a 'type' key, got {data!r}")
    kinds = _subclasses(Schedule)
    kind = kinds.get(data["type"])
    if kind is None:
        raise ValueError(f"unknown schedule type {data['type']!r}; known: {sorted(kinds)}")
    fields = {k: v for k, v in data.items() if k != "type"}
    try:
        return kind(**fields)
    except TypeError as e:
        raise ValueError(f"bad fields for {data['type']}: {e}") from e
