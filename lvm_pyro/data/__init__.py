"""Datasets as in-memory tensors (no model knowledge here)."""

from .binarize import BINARIZATIONS, Binarizer, binarize, binarize_test, dequantize, dequantize_test
from .datasets import DATASETS, DatasetNotFoundError, ImageDataset, default_root, load_dataset
from .synthetic import MixtureData, three_clusters

__all__ = ["load_dataset", "ImageDataset", "DatasetNotFoundError", "DATASETS", "default_root",
           "binarize", "binarize_test", "dequantize", "dequantize_test", "Binarizer", "BINARIZATIONS"]

__all__ += ["MixtureData", "three_clusters"]
from .synthetic import BinaryImageData, pixel_markov_chain, template_images  # noqa: E402

__all__ += ["BinaryImageData", "pixel_markov_chain", "template_images"]
