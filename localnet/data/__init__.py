"""Data sets as fixed, deterministic splits of flattened features and integer labels."""

from .datasets import DATASETS, Dataset, Split, dataset_shape, load_dataset, sample_shape

__all__ = ["DATASETS", "Dataset", "Split", "dataset_shape", "load_dataset", "sample_shape"]
