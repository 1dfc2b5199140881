"""Classifier-based rejection of class-conditional samples (Razavi et al. 2019,
Sec. 3.3: keep the samples that a classifier trained on real images assigns to their
intended class with high probability, trading diversity for quality)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

__all__ = ["RejectionResult", "classifier_rejection"]


class RejectionResult(NamedTuple):
    """``keep`` (n,) bool, ``probability`` (n,) the classifier's probability of each
    sample's intended class, ``acceptance_rate`` the kept fraction in [0, 1]."""

    keep: torch.Tensor
    probability: torch.Tensor
    acceptance_rate: float


@torch.no_grad()
def classifier_rejection(samples: torch.Tensor, labels: torch.Tensor,
                         classifier: Callable[[torch.Tensor], torch.Tensor], *,
                         threshold: Optional[float] = None,
                         keep_fraction: Optional[float] = None,
                         batch_size: int = 1024) -> RejectionResult:
    """Judge class-conditional samples with a classifier and keep the confident ones.

    Args:
        samples: (n, ...) generated images.
        labels: (n,) int64, the class each sample was drawn for.
        classifier: module / callable (b, ...) -> (b, C) logits, trained on real images
            (use a different classifier to *evaluate* the kept samples).
        threshold: keep samples with p(intended class) >= threshold, in [0, 1] (0 keeps
            every sample).
        keep_fraction: instead, keep the ``ceil(keep_fraction * n)`` most confident
            samples, in (0, 1]. Neither: keep everything (the no-rejection baseline).
        batch_size: samples per classifier call.

    Returns:
        :class:`RejectionResult`.

    Raises:
        ValueError: both ``threshold`` and ``keep_fraction``, values out of range, shapes
            that do not match, logits that are not (b, C) with labels in [0, C).
    """
    if threshold is not None and keep_fraction is not None:
        raise ValueError("pass threshold or keep_fraction, not both")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if keep_fraction is not None and not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != samples.shape[:1]:
        raise ValueError(f"labels must be (n,) with n = len(samples) = {len(samples)}, got "
                         f"{tuple(labels.shape)}")
    probs = []
    for i in range(0, len(samples), batch_size):
        logits = classifier(samples[i:i + batch_size])
        lab = labels[i:i + batch_size].to(logits.device)
        if logits.dim() != 2 or logits.shape[0] != len(lab):
            raise ValueError(f"classifier must return (batch, C) logits, got {tuple(logits.shape)}")
        if len(lab) and int(lab.max()) >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")
        p = torch.softmax(logits.double(), dim=-1).gather(1, lab[:, None])[:, 0]
        probs.append(p.cpu())
    prob = torch.cat(probs) if probs else torch.zeros(0, dtype=torch.float64)
    n = len(prob)
    if threshold is not None:
        keep = prob >= threshold
    elif keep_fraction is not None:
        keep = torch.zeros(n, dtype=torch.bool)
        m = int(torch.tensor(keep_fraction * n).ceil())
        keep[torch.argsort(prob, descending=True, stable=True)[:m]] = True
    else:
        keep = torch.ones(n, dtype=torch.bool)
    return RejectionResult(keep, prob, float(keep.double().mean()) if n else 0.0)
