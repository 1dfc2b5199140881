"""The edge: generic training loop, typed run configurations, checkpoints, run
directories and pictures."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (ConfigError, DataConfig, DiagnoseConfig, IWAEConfig, MeanFieldConfig, PriorConfig, RunConfig,
                     SBNConfig, TraceConfig, TraceGraphConfig, TrainConfig, VAEConfig,
                     VIMCOConfig, VQVAEConfig)
from .loop import EpochMetrics, Trainer, adapt_program
from .run import Run, evaluate_run, load_run, sample_run, train_run
from .rundir import RunExistsError, RunFileError

__all__ = ["Trainer", "EpochMetrics", "adapt_program", "CheckpointError", "save_checkpoint",
           "load_checkpoint", "load_run", "train_run", "evaluate_run", "sample_run", "Run",
           "RunExistsError", "RunFileError", "ConfigError", "RunConfig", "DataConfig",
           "TrainConfig", "VAEConfig", "VQVAEConfig", "SBNConfig", "TraceConfig",
           "MeanFieldConfig", "IWAEConfig", "VIMCOConfig", "TraceGraphConfig", "PriorConfig",
           "DiagnoseConfig"]
