"""Datasets as in-memory tensors (no model knowledge here)."""

from .binarize import (BINARIZATIONS, Binarizer, binarize, binarize_chunked, binarize_test, dequantize,
                       dequantize_test)
from .datasets import DATASETS, DatasetNotFoundError, ImageDataset, default_root, load_dataset
from .dsprites import (FACTOR_NAMES, FactorImageDataset, load_dsprites, make_dsprites,
                       render_dsprites)
from .levels import to_levels
from .synthetic import (BinaryImageData, MixtureData, pixel_markov_chain, template_images,
                        three_clusters)

__all__ = [
    "BINARIZATIONS", "Binarizer", "BinaryImageData", "DATASETS", "DatasetNotFoundError",
    "FACTOR_NAMES", "FactorImageDataset", "ImageDataset", "MixtureData", "binarize", "binarize_chunked",
    "binarize_test", "default_root", "dequantize", "dequantize_test", "load_dataset",
    "load_dsprites", "make_dsprites", "pixel_markov_chain", "render_dsprites", "template_images",
    "three_clusters", "to_levels",
]
