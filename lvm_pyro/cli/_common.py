"""Flags shared by several commands."""

from __future__ import annotations

import argparse

__all__ = ["add_threads", "add_data_root", "nll_line"]


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--threads 0`` or ``-4`` is one error line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads`` (torch CPU threads)."""
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: small networks gain little from more, "
                        "and OpenMP threads competing with another busy process can run "
                        "~40x slower on a 2-core machine)")


def add_data_root(p: argparse.ArgumentParser) -> None:
    """``--data-root`` overriding the run's recorded data folder."""
    p.add_argument("--data-root", default=None,
                   help="read the run's data from this folder (holding FashionMNIST/raw/ or "
                        "MNIST/raw/) instead of the one in config.json")


def nll_line(m: dict) -> str:
    """One line summarising an evaluation dict of :func:`lvm_pyro.training.evaluate_run`."""
    bits = ("no bits/dim: " + m["nll_note"]) if m.get("test_bits_per_dim") is None \
        else f"{m['test_bits_per_dim']:.4f} bits/dim"
    return (f"test NLL {m['test_nll']:.3f} +- {m['test_nll_se']:.3f} nats/example ({bits}; "
            f"{m['num_importance_samples']} importance samples, {m['num_test_points']} test "
            f"points); test ELBO {m['test_elbo']:.3f} nats{_offset_note(m)}")


def _offset_note(m: dict) -> str:
    """The dequantisation offset both figures of :func:`nll_line` include, if any."""
    offset = m.get("bits_per_dim_offset_nats")
    if not offset:
        return ""
    return f" (both include the dequantisation offset D log L = {offset:.2f} nats)"
