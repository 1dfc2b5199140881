"""Datasets as in-memory tensors (no model knowledge here)."""

from .binarize import BINARIZATIONS, Binarizer, binarize, binarize_test, dequantize, dequantize_test
from .datasets import DATASETS, DatasetNotFoundError, ImageDataset, default_root, load_dataset
from .synthetic import MixtureData, three_clusters

__all__ = ["load_dataset", "ImageDataset", "DatasetNotFoundError", "DATASETS", "default_root",
           "binarize", "binarize_test", "dequantize", "dequantize_test", "Binarizer", "BINARIZATIONS"]

__all__ += ["MixtureData", "three_clusters"]
from .dsprites import FACTOR_NAMES, FactorImageDataset, load_dsprites, make_dsprites, render_dsprites

__all__ += ["FactorImageDataset", "FACTOR_NAMES", "make_dsprites", "render_dsprites", "load_dsprites"]
