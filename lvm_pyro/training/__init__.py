"""The edge: generic training loop, typed run configurations, checkpoints, run
directories and pictures."""

from .aggressive import AggressiveEncoder
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (ConfigError, DataConfig, DiagnoseConfig, FlowConfig, IWAEConfig,
                     MeanFieldConfig, PixelVAEConfig, PriorConfig, RunConfig, SBNConfig,
                     TCVAEConfig, TraceConfig, TraceGraphConfig, TrainConfig, VAEConfig,
                     VIMCOConfig, VQVAEConfig)
from .loop import DivergenceWarning, EpochMetrics, Trainer, adapt_program
from .run import Run, evaluate_run, load_run, sample_run, train_run
from .rundir import RunExistsError, RunFileError

__all__ = [
    "AggressiveEncoder", "CheckpointError", "ConfigError", "DataConfig", "DiagnoseConfig",
    "DivergenceWarning", "EpochMetrics", "FlowConfig", "IWAEConfig", "MeanFieldConfig",
    "PixelVAEConfig", "PriorConfig", "Run", "RunConfig", "RunExistsError", "RunFileError",
    "SBNConfig", "TCVAEConfig", "TraceConfig", "TraceGraphConfig", "TrainConfig", "Trainer",
    "VAEConfig", "VIMCOConfig", "VQVAEConfig", "adapt_program", "evaluate_run", "load_checkpoint",
    "load_run", "sample_run", "save_checkpoint", "train_run",
]
