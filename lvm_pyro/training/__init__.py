"""The edge: generic training loop, checkpoints, run directories and pictures."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import EpochMetrics, Trainer, adapt_program
from .run import DEFAULT_CONFIG, Run, evaluate_run, load_run, sample_run, train_run

__all__ = ["Trainer", "EpochMetrics", "adapt_program", "CheckpointError", "save_checkpoint",
           "load_checkpoint", "load_run", "train_run", "evaluate_run", "sample_run", "Run",
           "DEFAULT_CONFIG"]
