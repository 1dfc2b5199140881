"""Command line of lvm_pyro: ``lvm-pyro fit | evaluate | sample | fit-prior | fit-classifier |
diagnose | disentanglement``.

One module per command (:mod:`.fit`, :mod:`.evaluate`, :mod:`.sample`, :mod:`.fit_prior`,
:mod:`.fit_classifier`, :mod:`.diagnose`, :mod:`.disentanglement`), each with ``add_arguments(parser)`` and
``run(args) -> int``. The flags that describe a run are generated from the typed configurations of
:mod:`lvm_pyro.training.config`; library errors are worded in the library's terms and
mapped to flags here (:func:`error_line`). ``python -m lvm_pyro.cli`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import diagnose, disentanglement, evaluate, fit, fit_classifier, fit_prior, sample

__all__ = ["main", "build_parser", "SUBCOMMANDS", "error_line"]

#: sub-commands: name -> (help, add_arguments, run); later modules may register more
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "fit": (fit.HELP, fit.add_arguments, fit.run),
    "evaluate": (evaluate.HELP, evaluate.add_arguments, evaluate.run),
    "sample": (sample.HELP, sample.add_arguments, sample.run),
    "fit-prior": (fit_prior.HELP, fit_prior.add_arguments, fit_prior.run),
    "fit-classifier": (fit_classifier.HELP, fit_classifier.add_arguments, fit_classifier.run),
    "diagnose": (diagnose.HELP, diagnose.add_arguments, diagnose.run),
    "disentanglement": (disentanglement.HELP, disentanglement.add_arguments, disentanglement.run),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The ``lvm-pyro`` argument parser: one sub-command per entry of
    :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="lvm-pyro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def error_line(e: BaseException) -> str:
    """One line for a library error, with configuration fields named as flags
    (``z_dim`` -> ``--z-dim``) and run-directory choices as ``--resume`` / ``--force``."""
    from ..training.config import ConfigError
    from ..training.rundir import RunExistsError

    if isinstance(e, ConfigError):
        return f"{_flag(e.field)} {e.problem}"
    if isinstance(e, RunExistsError):
        return (f"{e}: pass --resume to continue it, --force to replace it, or another "
                "--out directory")
    return str(e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``lvm-pyro`` console script. Errors of bad input (bad flags,
    missing data, an existing run, corrupt checkpoint or config, out-of-support data)
    print one clear line and exit 2."""
    from ..data import DatasetNotFoundError
    from ..training.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, getattr(args, "threads", 1) or 1))
    try:
        return args.run(args)
    except (DatasetNotFoundError, CheckpointError, ValueError) as e:
        print(f"lvm-pyro: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None) if args.command == "fit" else None
        hint = ""
        if out and (Path(out) / "checkpoint.pt").exists():
            hint = (f"; the last completed epoch is in {out}/checkpoint.pt: rerun the same "
                    "command with --resume to continue exactly")
        elif out:
            hint = (f"; no epoch was completed, so there is no checkpoint in {out}: rerun the "
                    "same command with --resume (or --force) to start afresh")
        print(f"lvm-pyro: interrupted{hint}", file=sys.stderr)
        return 130
