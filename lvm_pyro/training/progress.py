"""Progress reports of long work: a tqdm bar on a terminal, one line per epoch elsewhere.

When standard error is not a terminal (a log file, CI), a redrawn bar writes hundreds of
carriage-return updates per epoch; there the reports are plain lines instead.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

__all__ = ["EpochProgress", "progress_iter", "is_terminal"]

T = TypeVar("T")


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """True when ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False


class EpochProgress:
    """Training progress: a per-step bar with the running loss on a terminal, otherwise one
    line per epoch (``epoch 3/10: loss 245.112 nats/example, 12.3 s``).

    Args:
        total_steps: optimiser steps still to run (the bar's length).
        enabled: ``False`` reports nothing.
        stream: where to write (default ``sys.stderr``); a non-terminal stream gets lines.
    """

    def __init__(self, total_steps: int, *, enabled: bool = True,
                 stream: Optional[TextIO] = None):
        self.enabled = bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        if self.enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=self.stream)

    def step(self, epoch: int, running_loss: float) -> None:
        """One optimiser step of (1-based) ``epoch`` with the epoch's running mean loss."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{running_loss:.3f}", refresh=False)

    def end_epoch(self, epoch: int, epochs: int, loss: float, seconds: float) -> None:
        """Report a finished epoch: a line when there is no bar."""
        if self.enabled and self.bar is None:
            print(f"epoch {epoch}/{epochs}: loss {loss:.3f} nats/example, {seconds:.1f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_iter(iterable: Iterable[T], desc: str, *, total: Optional[int] = None,
                  enabled: bool = True, unit: str = "batch",
                  stream: Optional[TextIO] = None) -> Iterator[T]:
    """Iterate with a tqdm bar on a terminal; elsewhere one line when the loop ends."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        yield from iterable
        return
    if is_terminal(stream):
        from tqdm.auto import tqdm
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, file=stream)
        return
    count = 0
    for item in iterable:
        count += 1
        yield item
    print(f"{desc}: {count} {unit}{'es' if unit.endswith('h') and count != 1 else ''} done",
          file=stream, flush=True)
