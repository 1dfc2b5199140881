"""Command line of lvm_pyro: fit, evaluate, sample, fit-prior, diagnose.

``lvm-pyro fit`` with no ``--data`` trains the default VAE on scikit-learn's bundled
digits (about two minutes on 2 CPU cores) and prints the test NLL and where the
pictures are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: extra sub-commands registered by later modules: name -> (add_arguments, run)
SUBCOMMANDS: dict[str, tuple[Callable, Callable]] = {}


def _add_fit(p: argparse.ArgumentParser) -> None:
    from .training.run import DEFAULT_CONFIG as D

    p.add_argument("--data", default=D["data"], choices=["digits", "fashion-mnist", "mnist"],
                   help="data set (default: digits, bundled with scikit-learn)")
    p.add_argument("--data-root", default=None, help="folder with FashionMNIST/raw/ or MNIST/raw/")
    p.add_argument("--model", default=D["model"], help="registered model name (default: vae)")
    p.add_argument("--z-dim", type=int, default=None, help="latent size (default 10 on digits, 50 otherwise)")
    p.add_argument("--hidden-dim", type=int, default=D["hidden_dim"])
    p.add_argument("--num-hidden", type=int, default=D["num_hidden"])
    p.add_argument("--network", default=D["network"], choices=["mlp", "conv"])
    p.add_argument("--activation", default=D["activation"])
    p.add_argument("--likelihood", default=D["likelihood"])
    p.add_argument("--elbo", default=D["elbo"], help="objective: trace (default), meanfield, iwae, tracegraph, vimco, ...")
    p.add_argument("--num-particles", type=int, default=D["num_particles"])
    p.add_argument("--gradient", default=D["gradient"], choices=["standard", "dreg", "stl"],
                   help="gradient estimator of --elbo iwae: standard (default), dreg (doubly "
                        "reparameterised), stl (sticking the landing; biased for K > 1)")
    p.add_argument("--batch-size", type=int, default=D["batch_size"])
    p.add_argument("--lr", type=float, default=D["lr"])
    p.add_argument("--epochs", type=int, default=None, help="default 60 on digits, 10 otherwise")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--binarization", default=D["binarization"], choices=["dynamic", "static", "none", "dequantize"],
                   help="training-data transform per epoch: Bernoulli draws (dynamic/static, for "
                        "binary likelihoods), none, or uniform dequantisation (continuous "
                        "likelihoods, so that the NLL is a bound on the discrete one)")
    g = p.add_argument_group("VQ-VAE (--model vqvae; use --likelihood discretized_logistic "
                             "--binarization none --num-samples 1 on 8-bit data)")
    g.add_argument("--codebook-size", type=int, default=D["codebook_size"], help="K codes")
    g.add_argument("--embedding-dim", type=int, default=D["embedding_dim"], help="D per code")
    g.add_argument("--commitment-weight", type=float, default=D["commitment_weight"], help="beta")
    g.add_argument("--decay", type=float, default=D["decay"],
                   help="EMA decay of the codebook; 0 learns it by the codebook loss")
    g.add_argument("--dead-code-threshold", type=float, default=D["dead_code_threshold"],
                   help="restart codes used fewer times per step (moving average); 0: never")
    g.add_argument("--num-mixtures", type=int, default=D["num_mixtures"],
                   help="logistic components per pixel of the discretized_logistic likelihood")
    g.add_argument("--channels", type=int, default=D["channels"], help="conv width of the VQ-VAE nets")
    k = p.add_argument_group("KL weighting and score-function objectives (--elbo tracegraph: "
                             "NVIL baselines for --model sbn; --elbo vimco: needs --num-particles >= 2)")
    k.add_argument("--beta", type=float, default=D["beta"],
                   help="weight of the KL term, beta-VAE (default 1: the plain ELBO)")
    k.add_argument("--kl-warmup", type=int, default=D["kl_warmup"],
                   help="KL warm-up length in OPTIMISER STEPS: beta_t = beta * min(1, t / T) "
                        "(default 0: none)")
    k.add_argument("--free-bits", type=float, default=D["free_bits"],
                   help="free bits lambda, nats per latent dimension: KL term sum_j max(lambda, "
                        "E_batch KL_j) (--elbo trace|meanfield; default 0: off)")
    k.add_argument("--num-stochastic-layers", type=int, default=D["num_stochastic_layers"],
                   help="Bernoulli layers of --model sbn (1 or 2; default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--num-samples", type=int, default=1000, help="importance samples for the test NLL")
    p.add_argument("--num-test", type=int, default=None, help="evaluate on the first N test points")
    p.add_argument("--out", default="runs/latest", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small networks gain little from more, "
                        "and OpenMP threads competing with another busy process can run "
                        "~40x slower on a 2-core machine)")


#: fit options that steer the command rather than describe the run
_NOT_CONFIG = {"command", "run", "out", "resume", "no_progress", "num_samples", "num_test", "threads"}


def _config_from_args(a: argparse.Namespace) -> dict:
    """Every ``fit`` option except those in :data:`_NOT_CONFIG` becomes a config key
    (dashes to underscores); a new flag needs only ``add_argument`` and, if it has a
    default, an entry in ``DEFAULT_CONFIG``."""
    cfg = {k: v for k, v in vars(a).items() if k not in _NOT_CONFIG}
    if cfg.get("z_dim") is None:
        cfg["z_dim"] = 10 if a.data == "digits" else 50
    if cfg.get("epochs") is None:
        cfg["epochs"] = 60 if a.data == "digits" else 10
    return cfg


def _nll_line(m: dict) -> str:
    bits = ("no bits/dim: " + m["nll_note"]) if m.get("test_bits_per_dim") is None \
        else f"{m['test_bits_per_dim']:.4f} bits/dim"
    return (f"test NLL {m['test_nll']:.3f} +- {m['test_nll_se']:.3f} nats/example ({bits}; "
            f"{m['num_importance_samples']} importance samples, {m['num_test_points']} test "
            f"points); test ELBO {m['test_elbo']:.3f} nats")


def _run_fit(a: argparse.Namespace) -> int:
    from .training.run import train_run

    m = train_run(_config_from_args(a), a.out, resume=a.resume, progress=not a.no_progress,
                  num_samples=a.num_samples, num_test=a.num_test)
    out = Path(a.out)
    print(_nll_line(m))
    print(f"pictures: {out / 'samples.png'}, {out / 'reconstructions.png'}, {out / 'loss_curve.png'}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def _run_evaluate(a: argparse.Namespace) -> int:
    from .training.run import _write_json, evaluate_run

    m = evaluate_run(a.run_dir, num_samples=a.num_samples, num_test=a.num_test, progress=True)
    path = Path(a.run_dir) / "evaluation.json"
    _write_json(path, m)
    print(f"{_nll_line(m)}; written to {path}")
    return 0


def _run_sample(a: argparse.Namespace) -> int:
    from .training.run import sample_run

    paths = sample_run(a.run_dir, num_samples=a.num_samples)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lvm-pyro`` argument parser (sub-commands fit, evaluate, sample, and any
    registered in :data:`SUBCOMMANDS`)."""
    parser = argparse.ArgumentParser(prog="lvm-pyro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="train a model and write a run directory")
    _add_fit(p)
    _add_threads(p)
    p.set_defaults(run=_run_fit)
    p = sub.add_parser("evaluate", help="test ELBO and importance-sampled NLL of a run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="run directory made by `lvm-pyro fit --out`")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples K per test point")
    p.add_argument("--num-test", type=int, default=None, help="first N test points (all if omitted)")
    _add_threads(p)
    p.set_defaults(run=_run_evaluate)
    p = sub.add_parser("sample", help="write samples.png and reconstructions.png of a run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", help="run directory made by `lvm-pyro fit --out`")
    p.add_argument("--num-samples", type=int, default=64, help="images in the sample grid")
    p.set_defaults(run=_run_sample)
    from .training.prior_stage import add_fit_prior_arguments, run_fit_prior_command
    SUBCOMMANDS.setdefault("fit-prior", (add_fit_prior_arguments, run_fit_prior_command))
    from .training import diagnose as _diagnose  # `lvm-pyro diagnose RUN_DIR`
    SUBCOMMANDS.setdefault("diagnose", (_diagnose.add_arguments, _diagnose.run))
    helps = {"fit-prior": "stage two: fit a Gated PixelCNN prior over a VQ-VAE run's codes",
             "diagnose": "posterior diagnostics of a run (PSIS k-hat, ESS, NUTS, MI, SBC)"}
    for name, (add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=helps.get(name))
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``lvm-pyro`` console script. Errors of bad input (missing
    data, corrupt checkpoint, out-of-support data) print one clear line and exit 2."""
    from .data import DatasetNotFoundError
    from .training.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, getattr(args, "threads", 1) or 1))
    try:
        return args.run(args)
    except (DatasetNotFoundError, CheckpointError, ValueError) as e:
        print(f"lvm-pyro: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = (f"; the last completed epoch is in {out}/checkpoint.pt: rerun the same command "
                "with --resume to continue exactly") if out else ""
        print(f"lvm-pyro: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
