"""Loading a named data set into fixed train / validation / test splits."""

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import fetch
from .cifar import read_cifar10
from .idx import read_idx

# each data set's sample shape (C, H, W): the splits keep samples flat, (N, C·H·W) in C order, and a network views
# them in this shape (DESIGN §8); CIFAR-10's rows are its channels' planes one after another, so C order is right
SAMPLE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "kmnist": (1, 28, 28),
                 "cifar10": (3, 32, 32)}
FEATURES = {name: int(np.prod(shape)) for name, shape in SAMPLE_SHAPES.items()}
DATASETS = tuple(FEATURES)
SCALES = ("unit", "standard", "none")
N_CLASSES = 10
DIGITS_FILE = Path(__file__).with_name("digits.npz")
_TEST_SEED = 0  # fixed on purpose: the digits test split must be the same in every run
_CHUNK = 1024


@dataclass(frozen=True)
class Split:
    """Features flattened to (N, D) so that every layer type sees the same input contract."""

    x: np.ndarray  # (N, D) float features, C-contiguous
    y: np.ndarray  # (N,) int64 class labels


@dataclass(frozen=True)
class Dataset:
    """Splits fixed at load time, so that nothing downstream can leak test data into training."""

    name: str
    n_features: int
    n_classes: int
    sample_shape: tuple  # what one flat sample of n_features is, as an image (C, H, W)
    train: Split
    validation: Split | None  # None when no validation samples were asked for
    test: Split


def sample_shape(name):
    """A data set's per-sample shape (C, H, W), known without reading it."""
    dataset_shape(name)
    return SAMPLE_SHAPES[name]


def dataset_shape(name):
    """(features, classes) of a data set, known without reading it, so a network can be built before its data."""
    if name not in FEATURES:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return FEATURES[name], N_CLASSES


def _load_digits(path):
    """digits ships inside the package so that it works offline; path, if given, is a directory holding digits.npz."""
    file = Path(path) / DIGITS_FILE.name if path is not None else DIGITS_FILE
    try:
        npz = np.load(file, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise ValueError("not an .npz archive")
        with npz:
            x, y = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # truncated or corrupt
        raise DataError(f"{file}: cannot read digits data: {type(e).__name__}: {e}") from e
    if x.ndim != 2 or y.shape != (len(x),):
        raise DataError(f"{file}: expected images (N, 64) and labels (N,), found {x.shape} and {y.shape}")
    if y.dtype.kind not in "iu" or x.dtype.kind not in "iuf" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise DataError(f"{file}: expected integer labels and finite numeric images, found labels of "
                        f"{y.dtype.name} and images of {x.dtype.name}" + (" holding NaN or infinite values"
                                                                         if x.dtype.kind == "f" else ""))
    return x, y, None, None, 16


def _load_idx(name, path, download):
    files = fetch.locate(name, path, download=download)
    train_x, train_y, test_x, test_y = (read_idx(f) for f in files)
    for (images, labels), x, y in (((files[0], files[1]), train_x, train_y), ((files[2], files[3]), test_x, test_y)):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{images}: images {x.shape} do not match labels {y.shape} of the same split")
        if not len(x):
            raise DataError(f"{images}: no images")
        if y.dtype.kind not in "iu":  # a float label would be cast: 3.5 to 3, NaN to a huge negative index
            raise DataError(f"{labels}: labels must be integers, found {y.dtype.name}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"{images}: images hold NaN or infinite values")
    flat = [x.reshape(len(x), math.prod(x.shape[1:])) for x in (train_x, test_x)]
    return flat[0], train_y, flat[1], test_y, 255


def _load_cifar10(name, path, download):
    files = fetch.locate(name, path, download=download)
    # One file is the archive; otherwise they are the unpacked batches of one directory.
    return (*read_cifar10(files[0] if len(files) == 1 else files[0].parent), 255)


def _load_raw(name, path, download):
    """(train x, train y, test x or None, test y or None, largest possible feature value)."""
    if name == "digits":
        return _load_digits(path)
    if name == "cifar10":
        return _load_cifar10(name, path, download)
    return _load_idx(name, path, download)


def _check_count(what, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value < high:
        raise DataError(f"{what} must be an integer in [{low}, {high}), got {value!r}")


def _train_moments(x):
    """Per-feature mean and std in float64, by row chunks so large sets need no float64 copy."""
    mean = x.mean(axis=0, dtype=np.float64)
    sq = np.zeros_like(mean)
    for start in range(0, len(x), _CHUNK):
        d = x[start : start + _CHUNK] - mean
        sq += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(sq / len(x))
    std[std == 0] = 1.0  # a constant feature carries no information; leave it at 0 rather than divide by 0
    return mean, std


def load_dataset(
    name: str,
    *,
    path=None,
    validation: int = 0,
    test: int | None = None,
    scale: str = "unit",
    dtype=np.float32,
    download: bool = True,
) -> Dataset:
    """Load a data set with deterministic splits, so that runs differing only in seed see the same data.

    validation: the last `validation` samples of the official training set.
    test: only for sets without an official test split (digits): that many samples, picked by a
      permutation with a fixed seed; default 20 %.
    scale: "unit" divides by the largest possible raw value, "standard" uses train-split statistics
      only (no leakage from validation/test), "none" keeps raw values.
    path: directory holding the data set's files, searched before $LOCALNET_DATA, the cache and
      system directories.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if scale not in SCALES:
        raise DataError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"dtype must be a floating-point type, got {dtype}")
    if test is not None and name != "digits":
        raise DataError(f"{name} has an official test split; 'test' applies only to digits")

    x, y, test_x, test_y, top = _load_raw(name, path, download)
    if test_x is None:
        n_test = round(0.2 * len(x)) if test is None else test
        _check_count(f"{name}: test", n_test, 1, len(x))
        is_test = np.zeros(len(x), dtype=bool)
        is_test[np.random.default_rng(_TEST_SEED).permutation(len(x))[:n_test]] = True
        x, y, test_x, test_y = x[~is_test], y[~is_test], x[is_test], y[is_test]
    _check_count(f"{name}: validation", validation, 0, len(x))
    if test_x.shape[1] != x.shape[1]:
        raise DataError(f"{name}: test samples have {test_x.shape[1]} features, training samples {x.shape[1]}")
    for labels in (y, test_y):
        if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
            raise DataError(f"{name}: labels outside 0..{N_CLASSES - 1} (range {labels.min()}..{labels.max()})")

    n_train = len(x) - validation
    parts = {"train": (x[:n_train], y[:n_train]), "validation": (x[n_train:], y[n_train:]), "test": (test_x, test_y)}
    if scale == "standard":
        mean, std = _train_moments(parts["train"][0])
        mean, std = mean.astype(dtype), std.astype(dtype)

    def split(features, labels):
        out = features.astype(dtype)
        if scale == "unit":
            out /= dtype.type(top)
        elif scale == "standard":
            out -= mean
            out /= std
        return Split(np.ascontiguousarray(out), np.ascontiguousarray(labels, dtype=np.int64))

    return Dataset(
        name=name,
        n_features=x.shape[1],
        n_classes=N_CLASSES,
        sample_shape=SAMPLE_SHAPES[name],
        train=split(*parts["train"]),
        validation=split(*parts["validation"]) if validation else None,
        test=split(*parts["test"]),
    )
