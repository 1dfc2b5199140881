"""Unconditional code priors from class-conditional ones: the mixture over classes.

A class-conditional prior p(c | y) with class probabilities pi_y defines the marginal
p(c) = sum_y pi_y p(c | y), a proper prior over codes that needs no label. Used as the
model's prior, the two-stage bound with it is a bound on log p(x) itself (not on
log p(x | y)): log p(x) >= log p(x | z_q(c(x))) + log sum_y pi_y p(c(x) | y).

For VQ-VAE-2's two levels the joint mixture p(c_t, c_b) = sum_y pi_y p(c_t | y)
p(c_b | c_t, y) factorises as the model needs it, p(c_t) p(c_b | c_t), with

    p(c_t) = sum_y pi_y p(c_t | y),
    p(c_b | c_t) = sum_y p(y | c_t) p(c_b | c_t, y),  p(y | c_t) = pi_y p(c_t | y) / p(c_t).

Ancestral sampling through these two factors (y ~ pi, c_t ~ p(c_t | y); then y' ~ p(y | c_t),
c_b ~ p(c_b | c_t, y')) draws from the joint mixture.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["ClassMixturePrior"]


class ClassMixturePrior(nn.Module):
    """p(c) = sum_y pi_y p(c | y) for a class-conditional code prior (one level), or the
    bottom factor p(c_b | c_t) of the joint mixture when ``top`` is given (see the module
    docstring).

    Args:
        prior: a class-conditional prior with ``log_prob(codes, y[, context=])`` and
            ``sample(n, y[, context=])`` (:class:`~lvm_pyro.models.GatedPixelCNNPrior`,
            :class:`~lvm_pyro.models.AttentionPixelCNNPrior`,
            :class:`~lvm_pyro.models.ConditionalPixelCNNPrior` with ``num_classes``).
        class_probs: (C,) pi, positive, summing to 1 (default uniform over
            ``prior.num_classes``).
        top: the class-conditional top prior p(c_t | y) when ``prior`` is the bottom prior
            p(c_b | c_t, y) (its ``context`` is c_t); ``None`` for a single level.

    ``log_prob(codes (n, H, W)[, context (n, h, w)]) -> (n,)`` nats; ``sample(n[, context])
    -> (n, H, W)`` int64 (the top's classes drawn from pi, the bottom's from p(y | c_t)).
    Costs C evaluations of the prior(s) per call.

    Raises:
        ValueError: a prior without classes, bad ``class_probs``; ``context`` missing or
            given where it does not apply.
    """

    def __init__(self, prior: nn.Module, class_probs: Optional[torch.Tensor] = None,
                 top: Optional[nn.Module] = None):
        super().__init__()
        num_classes = getattr(prior, "num_classes", None)
        if not num_classes:
            raise ValueError("ClassMixturePrior needs a class-conditional prior (num_classes "
                             "set); an unconditional prior is already a prior over codes")
        if top is not None and getattr(top, "num_classes", None) != num_classes:
            raise ValueError(f"top must be class-conditional over the same {num_classes} classes, "
                             f"got num_classes={getattr(top, 'num_classes', None)}")
        if class_probs is None:
            class_probs = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        class_probs = torch.as_tensor(class_probs, dtype=torch.float64)
        if (class_probs.shape != (num_classes,) or not bool((class_probs > 0).all())
                or abs(float(class_probs.sum()) - 1.0) > 1e-6):
            raise ValueError(f"class_probs must be ({num_classes},) positive and sum to 1, got "
                             f"{class_probs.tolist()}")
        self.prior, self.top = prior, top
        self.num_classes = None  # the mixture itself takes no label
        self.register_buffer("log_class_probs", class_probs.log())

    @property
    def grid_shape(self):
        return self.prior.grid_shape

    @property
    def num_codes(self) -> int:
        return self.prior.num_codes

    def _per_class(self, fn, n: int, device) -> torch.Tensor:
        """(C, n): fn(y) for every class y, each y a (n,) tensor."""
        c = self.log_class_probs.numel()
        return torch.stack([fn(torch.full((n,), k, dtype=torch.long, device=device))
                            for k in range(c)])

    def _log_weights_given_top(self, context: torch.Tensor) -> torch.Tensor:
        """(C, n): log pi_y + log p(c_t | y), the unnormalised log p(y | c_t)."""
        lt = self._per_class(lambda y: self.top.log_prob(context, y), len(context), context.device)
        return self.log_class_probs.to(lt).unsqueeze(-1) + lt

    def log_prob(self, codes: torch.Tensor, *,
                 context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """log p(codes) (one level) or log p(codes | context) (the bottom factor), nats:
        codes (n, H, W) -> (n,)."""
        if (context is None) != (self.top is None):
            raise ValueError("pass context (the top codes) exactly when the mixture has a top "
                             "prior (the bottom factor of a two-level mixture)")
        n = len(codes)
        if self.top is None:
            lp = self._per_class(lambda y: self.prior.log_prob(codes, y), n, codes.device)
            return torch.logsumexp(self.log_class_probs.to(lp).unsqueeze(-1) + lp, 0)
        w = self._log_weights_given_top(context)  # (C, n)
        lb = self._per_class(lambda y: self.prior.log_prob(codes, y, context=context), n,
                             codes.device)
        return torch.logsumexp(w + lb, 0) - torch.logsumexp(w, 0)

    @torch.no_grad()
    def sample(self, num_samples: int, *, context: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Codes ~ the mixture (given ``context`` for the bottom factor): (n, H, W) int64."""
        if (context is None) != (self.top is None):
            raise ValueError("pass context (the top codes) exactly when the mixture has a top "
                             "prior (the bottom factor of a two-level mixture)")
        device = self.log_class_probs.device
        if self.top is None:
            logits = self.log_class_probs.expand(num_samples, -1)
        else:
            logits = self._log_weights_given_top(context.expand(num_samples, *context.shape[-2:])).T
        probs = torch.softmax(logits.double(), -1).to(device)  # (n, C)
        y = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (n,)
        if self.top is None:
            return self.prior.sample(num_samples, y, generator=generator)
        return self.prior.sample(num_samples, y, context=context, generator=generator)

    def extra_repr(self) -> str:
        lp = self.log_class_probs
        entropy = -float((lp.exp() * lp).sum()) / math.log(2)
        return f"num_classes={lp.numel()}, class entropy={entropy:.3f} bits"
