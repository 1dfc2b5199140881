"""The edge: generic training loop, checkpoints, run directories and pictures."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import DivergenceWarning, EpochMetrics, Trainer, adapt_program
from .run import DEFAULT_CONFIG, Run, evaluate_run, load_run, sample_run, train_run

__all__ = [
    "CheckpointError", "DEFAULT_CONFIG", "DivergenceWarning", "EpochMetrics", "Run", "Trainer",
    "adapt_program", "evaluate_run", "load_checkpoint", "load_run", "sample_run",
    "save_checkpoint", "train_run",
]
