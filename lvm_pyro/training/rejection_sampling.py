"""Classifier-based rejection sampling of a VQ-VAE-2 run (Razavi et al. 2019, Sec. 3.3;
``lvm-pyro sample RUN_DIR --classifier-threshold P``): draw class-conditional samples
from the fitted priors (top codes given the class, bottom codes given top and class, both
with the cached samplers), decode, and keep those whose rejection classifier gives the
intended class probability >= P.

The model's priors are unconditional in its Pyro program (their mixture over classes,
:mod:`lvm_pyro.training.prior_stage2`), so class-conditional draws come from the prior
modules directly, which take the label ``y``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..diagnostics import classifier_rejection
from .classifiers import load_classifier
from .prior_stage2 import load_vqvae2_priors, sample_codes

__all__ = ["class_conditional_samples", "check_rejection_ready", "rejection_sample_run",
           "REJECTION_FILE"]

REJECTION_FILE = "rejection.json"


@torch.no_grad()
def class_conditional_samples(model, prior_top, prior_bottom, y: torch.Tensor, *,
                              generator: Optional[torch.Generator] = None,
                              batch_size: int = 500) -> torch.Tensor:
    """Images drawn for the intended classes y (n,) int64: codes from the class-conditional
    priors, decoded to the likelihood's mean by ``model.decode_codes``: (n, *event_shape).

    Raises:
        ValueError: unconditional priors (no classes to intend), labels out of range.
    """
    if prior_top.num_classes is None:
        raise ValueError("the priors are unconditional: class-conditional samples need priors "
                         "fitted with labels (fit-prior on a labelled data set)")
    out = []
    for s in range(0, len(y), batch_size):
        yb = y[s:s + batch_size]
        top, bottom = sample_codes(prior_top, prior_bottom, len(yb), yb, generator=generator)
        out.append(model.decode_codes(top, bottom))
    return torch.cat(out)


def check_rejection_ready(run_dir: str | Path) -> None:
    """Check, without loading any network, that ``run_dir`` can be rejection-sampled: a
    VQ-VAE-2 run, priors fitted after its training, a stored rejection classifier.

    Raises:
        ValueError: not a VQ-VAE-2 run.
        CheckpointError: no run directory, no current priors (``lvm-pyro fit-prior``) or
            no rejection classifier (``lvm-pyro fit-classifier``).
    """
    from .checkpoint import CheckpointError
    from .classifiers import classifier_path
    from .prior_stage import PRIOR_CHECKPOINT, prior_is_current, prior_problem
    from .run import read_run_config

    run_dir = Path(run_dir)
    cfg, _ = read_run_config(run_dir)
    if cfg.model_name != "vqvae2":
        raise ValueError(f"classifier rejection needs a VQ-VAE-2 run with class-conditional "
                         f"priors (lvm-pyro fit --model vqvae2, then fit-prior); {run_dir} is a "
                         f"{cfg.model_name} run")
    if not prior_is_current(run_dir):
        problem = prior_problem(run_dir)
        if problem is None:
            raise CheckpointError(f"{run_dir} has no fitted priors; fit them: lvm-pyro "
                                  f"fit-prior {run_dir}")
        raise CheckpointError(f"{run_dir / PRIOR_CHECKPOINT} {problem}; refit the priors: "
                              f"lvm-pyro fit-prior {run_dir} --force")
    if not classifier_path(run_dir, "rejection").exists():
        raise CheckpointError(f"{classifier_path(run_dir, 'rejection')} does not exist; train "
                              f"the classifiers first: lvm-pyro fit-classifier {run_dir}")


def rejection_sample_run(run_dir: str | Path, threshold: float, *, num_samples: int = 100,
                         out_dir: Optional[str | Path] = None, seed: int = 0,
                         data_root: Optional[str | Path] = None) -> dict:
    """Draw ``num_samples`` class-conditional samples (classes in turn 0, 1, ..., C - 1,
    0, ...), judge them with the run's rejection classifier and keep p(intended class)
    >= ``threshold``; write ``rejection_samples.png`` (the kept samples, grouped by class),
    ``rejection_all_samples.png`` (all draws, kept or not) and ``rejection.json`` into
    ``out_dir`` (default ``RUN_DIR/sample``).

    Returns:
        the dict written to ``rejection.json``: ``threshold``, ``num_samples``,
        ``num_kept``, ``acceptance_rate``, ``acceptance_rate_per_class`` (list of C),
        ``mean_probability`` (of the intended class, all draws), ``seed``.

    Raises:
        ValueError: ``threshold`` outside [0, 1], ``num_samples < 1``, not a VQ-VAE-2 run,
            unconditional priors.
        CheckpointError: no fitted priors (``lvm-pyro fit-prior``) or no rejection
            classifier (``lvm-pyro fit-classifier``).
    """
    from .pictures import save_grid
    from .run import load_run
    from .rundir import ensure_directory, write_json

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    run_dir = Path(run_dir)
    out_dir = run_dir / "sample" if out_dir is None else Path(out_dir)
    check_rejection_ready(run_dir)
    model, _, config, _ = load_run(run_dir, data_root=data_root)
    model.eval()
    device = config["device"]
    prior_top, prior_bottom = load_vqvae2_priors(run_dir, device)
    classifier = load_classifier(run_dir, "rejection", device)
    num_classes = prior_top.num_classes
    if num_classes is None:
        raise ValueError("the run's priors are unconditional: class-conditional samples need "
                         "priors fitted with labels")
    y = torch.arange(num_samples, device=device) % num_classes
    gen = torch.Generator(device=device).manual_seed(seed)
    images = class_conditional_samples(model, prior_top, prior_bottom, y, generator=gen)
    res = classifier_rejection(images, y, classifier, threshold=threshold)
    per_class = [float(res.keep[y.cpu() == c].double().mean()) if bool((y == c).any()) else None
                 for c in range(num_classes)]
    ensure_directory(out_dir, "picture folder")
    order = torch.argsort(y.cpu(), stable=True)
    all_path = save_grid(images[order], out_dir / "rejection_all_samples.png",
                         nrow=max(1, -(-num_samples // num_classes)))
    kept = order[res.keep[order]]
    metrics = {"threshold": threshold, "num_samples": num_samples, "num_kept": int(res.keep.sum()),
               "acceptance_rate": res.acceptance_rate, "acceptance_rate_per_class": per_class,
               "mean_probability": float(res.probability.mean()), "seed": seed,
               "pictures": {"all": str(all_path)}}
    if len(kept):
        kept_path = save_grid(images[kept], out_dir / "rejection_samples.png")
        metrics["pictures"]["kept"] = str(kept_path)
    write_json(out_dir / REJECTION_FILE, metrics)
    return metrics
