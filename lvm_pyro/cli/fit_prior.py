"""``lvm-pyro fit-prior RUN_DIR``: stage two of a VQ-VAE run, a Gated PixelCNN prior over
its codes (:func:`lvm_pyro.training.prior_stage.fit_prior`); the prior's flags are the
fields of :class:`lvm_pyro.training.config.PriorConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_data_root, add_threads

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("stage two: fit a Gated PixelCNN prior over a VQ-VAE run's codes (both levels' "
        "priors of a VQ-VAE-2 run)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.config import PriorConfig, add_config_arguments

    p.add_argument("run_dir", help="a VQ-VAE run directory (lvm-pyro fit --model vqvae or "
                                   "vqvae2: both levels' priors)")
    add_config_arguments(p, [PriorConfig], title="prior")
    p.add_argument("--num-train", type=int, default=None, help="fit on the first N training points")
    p.add_argument("--num-test", type=int, default=None,
                   help="evaluate on the first N test points (default: as many as the run's "
                        "own evaluation used, metrics.json num_test_points, else all)")
    p.add_argument("--num-samples", type=int, default=64,
                   help="prior samples in prior_samples.png (default: 64)")
    p.add_argument("--resume", action="store_true", help="continue the fit of the prior in RUN_DIR")
    p.add_argument("--force", action="store_true",
                   help="replace a prior already fitted in RUN_DIR (refused without it)")
    p.add_argument("--no-progress", action="store_true")
    add_data_root(p)
    add_threads(p)


def run(a: argparse.Namespace) -> int:
    """Fit, print the key figures and the files written."""
    from ..training.config import PriorConfig, given_options
    from ..training.prior_stage import PRIOR_METRICS, fit_prior

    config = PriorConfig(**given_options(a, [PriorConfig]))
    m = fit_prior(a.run_dir, config, num_train=a.num_train, num_test=a.num_test,
                  num_pictures=a.num_samples, resume=a.resume, progress=not a.no_progress,
                  data_root=a.data_root, force=a.force)
    d = Path(a.run_dir)
    if m.get("model") == "vqvae2":
        _report_two_levels(m, d, PRIOR_METRICS)
        return 0
    print(f"prior NLL {m['prior_bits_per_code']:.4f} bits/code (uniform prior: "
          f"{m['uniform_bits_per_code']:.4f}; {m['grid_shape'][0]}x{m['grid_shape'][1]} grid, "
          f"K={m['codebook_size']}, {m['num_test_points']} test points)")
    if m["two_stage_bits_per_dim"] is None:
        print(f"two-stage bound: {m['two_stage_nll']:.2f} nats/example (uniform code prior "
              f"{m['uniform_prior_nll']:.2f}); no bits/dim: {m['nll_note']}")
    else:
        print(f"two-stage bound: {m['two_stage_bits_per_dim']:.4f} bits/dim "
              f"({m['two_stage_nll']:.2f} nats/example; with the uniform code prior "
              f"{m['uniform_prior_bits_per_dim']:.4f} bits/dim)")
    print(f"pictures: {d / 'prior_samples.png'}, {d / 'prior_vs_reconstructions.png'}")
    print(f"metrics: {d / PRIOR_METRICS}")
    return 0


def _report_two_levels(m: dict, d: Path, metrics_file: str) -> None:
    """Key figures of a VQ-VAE-2 prior fit."""
    gt, gb = m["grid_shape_top"], m["grid_shape_bottom"]
    print(f"priors: top {m['prior_bits_per_code_top']:.4f} bits/code ({gt[0]}x{gt[1]}, "
          f"K={m['codebook_size_top']}, uniform {m['uniform_bits_per_code_top']:.4f}); bottom "
          f"given top {m['prior_bits_per_code_bottom']:.4f} bits/code ({gb[0]}x{gb[1]}, "
          f"K={m['codebook_size_bottom']}, uniform {m['uniform_bits_per_code_bottom']:.4f}); "
          f"{m['num_test_points']} test points"
          + (f"; class-conditional over {m['num_classes']} classes, mixed" if m["class_conditional"]
             else ""))
    if m["two_stage_bits_per_dim"] is None:
        print(f"two-stage bound: {m['two_stage_nll']:.2f} nats/example (uniform code priors "
              f"{m['uniform_prior_nll']:.2f}); no bits/dim: {m['nll_note']}")
    else:
        print(f"two-stage bound: {m['two_stage_bits_per_dim']:.4f} bits/dim "
              f"({m['two_stage_nll']:.2f} nats/example; uniform code priors "
              f"{m['uniform_prior_bits_per_dim']:.4f} bits/dim; reconstruction "
              f"{m['reconstruction_bits_per_dim']:.4f} bits/dim)")
    print(f"pictures: {d / 'prior_samples.png'}")
    print(f"metrics: {d / metrics_file}")
