"""Loading a data set into fixed train / validation / test splits: a bundled or published one by name, or your
own (`arrays`: an .npz file; `idx`: IDX files) by the files the spec names; and its digest, by which a run
directory tells whether a resume would train on the data it trained on."""

import dataclasses
import hashlib
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import fetch
from .cifar import read_cifar10
from .idx import read_idx, read_idx_header

# each data set's sample shape (C, H, W): the splits keep samples flat, (N, C·H·W) in C order, and a network views
# them in this shape (DESIGN §8); CIFAR-10's rows are its channels' planes one after another, so C order is right
SAMPLE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "kmnist": (1, 28, 28),
                 "cifar10": (3, 32, 32)}
FEATURES = {name: int(np.prod(shape)) for name, shape in SAMPLE_SHAPES.items()}
OWN_DATA = ("arrays", "idx")  # your own files, named in the spec: their shape and classes come from the files
DATASETS = tuple(FEATURES) + OWN_DATA
# the published training sets keep the papers' convention, validation = their last samples; the others' order
# means nothing (digits' file is sorted in runs of classes), so their validation split is a stratified draw
LAST_N_VALIDATION = ("mnist", "fashion-mnist", "kmnist", "cifar10")
SCALES = ("unit", "standard", "none")
N_CLASSES = 10
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
DIGITS_FILE = Path(__file__).with_name("digits.npz")
_TEST_SEED = 0  # fixed on purpose: a test split drawn here (digits, own data without one) is the same in every run
VALIDATION_STREAM = 0x7A11D  # mixed into the spec's seed: the validation draw's own stream
_CHUNK = 1024
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


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
    sample_shape: tuple  # what one flat sample of n_features is: (C, H, W) for images, (D,) for vectors
    train: Split
    validation: Split | None  # None when no validation samples were asked for
    test: Split
    # {"files": {path: SHA-256}, "splits": {split: {"samples": n, "sha256": ...}}}: what `data_changes` compares
    digest: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class _Raw:
    """A data set as read: train and test (None: to be drawn from train), each x (N, ...) and y (N,)."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    top: float  # the largest possible feature value, what `unit` divides by
    shape: tuple  # one sample's shape as a network sees it
    n_classes: int
    files: tuple  # the files read, for the digest


# -- shape and classes before the data ----------------------------------------------------------------------------
def sample_shape(data):
    """A data set's per-sample shape, known without reading its samples; `data` as for `dataset_shape`."""
    return _shape_and_classes(data)[0]


def dataset_shape(data):
    """(features, classes) of a data set, known without reading its samples, so a network can be built before its
    data. `data`: a built-in set's name, or a spec's `data` section (a DataSpec), which your own data needs: its
    shape comes from the files' headers and its classes from their labels."""
    shape, classes = _shape_and_classes(data)
    return math.prod(shape), classes


def _shape_and_classes(data):
    name = data if isinstance(data, str) else data.name
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if name in SAMPLE_SHAPES:
        return SAMPLE_SHAPES[name], N_CLASSES
    if isinstance(data, str):
        raise DataError(f"data set {name!r} is your own files: give the spec's data section, which names them")
    if name == "arrays":
        file = _arrays_file(data.path)
        headers = _npz_headers(file)
        shape = _check_x_header(file, "x_train", headers)
        with _open_npz(file) as npz:
            labels = {f"{file}: {key}": _array(npz, file, key) for key in ("y_train", "y_test") if key in headers}
    else:
        files = _idx_files(data.path, data.images, data.labels, data.test_images, data.test_labels)
        shape, _ = read_idx_header(files[0])
        if len(shape) < 2:
            raise DataError(f"{files[0]}: images must be (N, ...), one sample per row; found shape {shape}")
        labels = {str(f): read_idx(f) for f in files[1::2]}
    return _image_shape(shape[1:]), _n_classes(labels, data.classes)


def _image_shape(shape):
    """A sample shape as a network takes it: (H, W) is an image of one channel, (1, H, W)."""
    return (1, *shape) if len(shape) == 2 else tuple(shape)


def _check_labels(labels, where):
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be (N,), one per sample; found shape {labels.shape}")
    if labels.dtype.kind not in "iu":  # a float label would be cast: 3.5 to 3, NaN to a huge negative index
        raise DataError(f"{where}: labels must be integers 0..K-1, found {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be integers 0..K-1, found {labels.min()}")


def _n_classes(labels, classes):
    """K: `classes` when given, else the largest label + 1; `labels`: {where: labels}, each checked."""
    for where, y in labels.items():
        _check_labels(y, where)
        if classes is not None and y.size and y.max() >= classes:
            raise DataError(f"{where}: label {y.max()} is not below `classes` ({classes})")
    if classes is not None:
        return classes
    found = [int(y.max()) for y in labels.values() if y.size]
    if not found:
        raise DataError(f"{next(iter(labels))}: no labels")
    return max(found) + 1


# -- the built-in sets ----------------------------------------------------------------------------------------------
def _load_digits(path):
    """digits ships inside the package so that it works offline; path, if given, is a directory holding digits.npz."""
    file = Path(path) / DIGITS_FILE.name if path is not None else DIGITS_FILE
    try:
        npz = np.load(file, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise ValueError("not an .npz archive")
        with npz:
            x, y = npz["images"], npz["labels"]
    except _UNREADABLE as e:  # truncated or corrupt
        raise DataError(f"{file}: cannot read digits data: {type(e).__name__}: {e}") from e
    if x.ndim != 2 or y.shape != (len(x),):
        raise DataError(f"{file}: expected images (N, 64) and labels (N,), found {x.shape} and {y.shape}")
    if y.dtype.kind not in "iu" or x.dtype.kind not in "iuf" or (x.dtype.kind == "f" and not np.isfinite(x).all()):
        raise DataError(f"{file}: expected integer labels and finite numeric images, found labels of "
                        f"{y.dtype.name} and images of {x.dtype.name}" + (" holding NaN or infinite values"
                                                                         if x.dtype.kind == "f" else ""))
    return _Raw(x, y, None, None, 16, SAMPLE_SHAPES["digits"], N_CLASSES, (file,))


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
    return _Raw(train_x, train_y, test_x, test_y, 255, SAMPLE_SHAPES[name], N_CLASSES, tuple(files))


def _load_cifar10(name, path, download):
    files = fetch.locate(name, path, download=download)
    # One file is the archive; otherwise they are the unpacked batches of one directory.
    return _Raw(*read_cifar10(files[0] if len(files) == 1 else files[0].parent), 255, SAMPLE_SHAPES[name], N_CLASSES,
                tuple(files))


# -- your own data ------------------------------------------------------------------------------------------------
def _arrays_file(path):
    if path is None:
        raise DataError("data set 'arrays' reads an .npz file: give its `path`")
    return Path(path)


def _open_npz(file):
    try:
        npz = np.load(file, allow_pickle=False)
    except _UNREADABLE as e:
        raise DataError(f"{file}: cannot read it as an .npz file: {type(e).__name__}: {e}") from e
    if not hasattr(npz, "files"):
        raise DataError(f"{file}: a single .npy array, not an .npz file of {', '.join(ARRAY_KEYS)} (np.savez)")
    return npz


def _npz_headers(file):
    """{key: (shape, dtype)} of the arrays of an .npz file, read from their .npy headers only."""
    headers = {}
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        raise ValueError(f"{info.filename}: .npy format version {version} (numbers need 1.0 or 2.0)")
                    shape, _, dtype = read(fh)
                headers[info.filename[:-len(".npy")]] = (shape, dtype)
    except _UNREADABLE as e:
        raise DataError(f"{file}: cannot read it as an .npz file: {type(e).__name__}: {e}") from e
    if "x_train" not in headers or "y_train" not in headers:
        raise DataError(f"{file}: needs arrays x_train and y_train (optional: x_test, y_test); found "
                        f"{', '.join(headers) or 'none'}")
    if ("x_test" in headers) != ("y_test" in headers):
        raise DataError(f"{file}: has {'x_test' if 'x_test' in headers else 'y_test'} without "
                        f"{'y_test' if 'x_test' in headers else 'x_test'}; give both or neither")
    return headers


def _check_x_header(file, key, headers):
    """The shape of features array `key`, refused unless it holds numbered samples of numbers."""
    shape, dtype = headers[key]
    if dtype.kind not in "biuf":
        raise DataError(f"{file}: {key}: must hold numbers, found {dtype}")
    if len(shape) < 2 or not all(shape[1:]):
        raise DataError(f"{file}: {key}: must be (N, ...), one sample per row, with at least one feature; "
                        f"found shape {shape}")
    return shape


def _array(npz, file, key):
    try:
        return npz[key]
    except _UNREADABLE as e:
        raise DataError(f"{file}: {key}: cannot be read: {type(e).__name__}: {e}") from e


def _load_arrays(path, classes):
    file = _arrays_file(path)
    headers = _npz_headers(file)
    with _open_npz(file) as npz:
        arrays = {key: _array(npz, file, key) for key in ARRAY_KEYS if key in headers}
    return _own(arrays.get("x_train"), arrays.get("y_train"), arrays.get("x_test"), arrays.get("y_test"), classes,
                [f"{file}: {key}" for key in ARRAY_KEYS], (file,))


def _idx_files(path, images, labels, test_images, test_labels):
    """The IDX files a spec names: images, labels, then test images and test labels if given; relative names are
    under `path` when it is given."""
    if images is None or labels is None:
        raise DataError("data set 'idx' reads IDX files: give `images` and `labels`")
    if (test_images is None) != (test_labels is None):
        raise DataError("data set 'idx': give `test_images` and `test_labels` together, or neither")
    base = Path(path) if path is not None else Path()
    return [base / f for f in (images, labels, test_images, test_labels) if f is not None]


def _load_own_idx(path, classes, files):
    files = _idx_files(path, *files)
    arrays = [read_idx(f) for f in files]
    return _own(*arrays[:2], *(arrays[2:] or (None, None)), classes, [str(f) for f in files], tuple(files))


def _own(x, y, test_x, test_y, classes, where, files):
    """Your own samples and labels, checked; `where` names each of the four arrays (its file, and key) for errors:
    samples (N, ...) of finite numbers, labels (N,) of integers in 0..K-1, the test samples of the train's shape."""
    pairs = [(x, y, where[0], where[1])] + ([(test_x, test_y, where[2], where[3])] if test_x is not None else [])
    for xs, ys, wx, wy in pairs:
        if xs.ndim < 2 or not all(xs.shape[1:]):
            raise DataError(f"{wx}: must be (N, ...), one sample per row, with at least one feature; found shape "
                            f"{xs.shape}")
        if not len(xs):
            raise DataError(f"{wx}: no samples")
        if xs.dtype.kind not in "biuf":
            raise DataError(f"{wx}: must hold numbers, found {xs.dtype}")
        if xs.dtype.kind == "f" and not np.isfinite(xs).all():
            raise DataError(f"{wx}: holds NaN or infinite values")
        if ys.shape != (len(xs),):
            raise DataError(f"{wy}: must be (N,), one label per sample ({len(xs)}); found shape {ys.shape}")
    if test_x is not None and test_x.shape[1:] != x.shape[1:]:
        raise DataError(f"{where[2]}: samples of shape {test_x.shape[1:]}, those of {where[0]} are {x.shape[1:]}")
    n_classes = _n_classes({wy: ys for _, ys, _, wy in pairs}, classes)
    top = max(abs(float(x.min())), abs(float(x.max())))
    return _Raw(x, y, test_x, test_y, top or 1.0, _image_shape(x.shape[1:]), n_classes, files)


def _load_raw(name, path, download, classes, files):
    if name == "digits":
        return _load_digits(path)
    if name == "cifar10":
        return _load_cifar10(name, path, download)
    if name == "arrays":
        return _load_arrays(path, classes)
    if name == "idx":
        return _load_own_idx(path, classes, files)
    return _load_idx(name, path, download)


def absolute_paths(data):
    """A spec's `data` section (a DataSpec) with its relative file and folder names made absolute against the
    working directory, which is what they are relative to: a run directory records them so, and a resume or an
    eval started in another folder reads the same files. (`images` and the other IDX names stay relative to an
    absolute `path`.)"""
    def absolute(name):
        return None if name is None else os.path.abspath(name)

    names = ("path",) if data.path is not None else ("path", "images", "labels", "test_images", "test_labels")
    return dataclasses.replace(data, **{key: absolute(getattr(data, key)) for key in names})


# -- the digest ---------------------------------------------------------------------------------------------------
def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_digest(x, y, shape):
    """One split's size and the SHA-256 of its samples and labels as read (dtype, shape and bytes) and of the sample
    shape a network views them in. Taken before scaling: the raw values and which of them went where decide the
    data (scaling is the spec's, fixed in a run directory), and float rounding, which may differ between machines,
    plays no part."""
    digest = hashlib.sha256(repr((tuple(shape), x.dtype.str, x.shape, y.dtype.str, y.shape)).encode())
    for array in (x, y):
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return {"samples": len(y), "sha256": digest.hexdigest()}


def _said(split):
    return "nothing" if split is None else f"{split['samples']} samples, sha256 {split['sha256'][:12]}"


def data_changes(recorded: dict, found: dict) -> str | None:
    """What differs between two digests (`Dataset.digest`), in one line, or None when every split is the same. The
    splits decide, the files only explain: the same samples in the same places are the same data whichever files
    they came from (a gzipped file unpacked, a folder moved), and a changed split names the files whose bytes
    changed, vanished or came new."""
    splits = [f"{split} split: {_said(recorded['splits'].get(split))} recorded, {_said(part)} found"
              for split, part in found["splits"].items() if recorded["splits"].get(split) != part]
    if not splits:
        return None
    was, now = recorded["files"], found["files"]
    files = []
    for path, digest in was.items():
        if digest in now.values():
            continue
        files.append(f"file {path}: sha256 {digest[:12]} recorded, {now[path][:12]} found" if path in now else
                     f"file {path} (sha256 {digest[:12]}) is not read now")
    files += [f"file {path} (sha256 {digest[:12]}) is read instead" for path, digest in now.items()
              if path not in was and digest not in was.values()]
    return "; ".join(files + splits)


# -- splits -------------------------------------------------------------------------------------------------------
def _check_count(what, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value < high:
        raise DataError(f"{what} must be an integer in [{low}, {high}), got {value!r}")


def stratified(y, n, rng):
    """A mask of n of the samples labelled y, each class's share as in y (largest remainders, ties to the smaller
    label), the samples of each class drawn by `rng`: a small split still holds every class in proportion."""
    classes, counts = np.unique(y, return_counts=True)
    take, remainder = np.divmod(n * counts, len(y))
    take[np.argsort(-remainder, kind="stable")[:n - take.sum()]] += 1
    mask = np.zeros(len(y), dtype=bool)
    for label, k in zip(classes, take):
        mask[rng.permutation(np.flatnonzero(y == label))[:k]] = True
    return mask


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
    seed: int = 0,
    images=None,
    labels=None,
    test_images=None,
    test_labels=None,
    classes: int | None = None,
) -> Dataset:
    """Load a data set with deterministic splits: the same arguments give the same data in every run.

    validation: that many samples of the training set; for mnist, fashion-mnist, kmnist and cifar10 the last ones
      (the papers' convention), for digits, arrays and idx a stratified draw shuffled by `seed` (a spec's seed).
    test: only for data without a test split (digits; arrays or idx without test files): that many samples,
      a stratified draw with a fixed seed, the same whatever `seed`; default 20 %.
    scale: "unit" divides by the largest possible raw value (digits 16, the published sets 255, your own data the
      largest magnitude in its training samples as read), "standard" uses train-split statistics only (no leakage from
      validation/test), "none" keeps raw values.
    path: for the built-in sets, a directory holding the data set's files, searched before $LOCALNET_DATA, the
      cache and system directories; for `arrays` the .npz file (x_train, y_train, optionally x_test, y_test);
      for `idx` the directory `images`, `labels`, `test_images` and `test_labels` are relative to.
    classes: for arrays and idx, the number of classes K (default: the largest label + 1).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if scale not in SCALES:
        raise DataError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"dtype must be a floating-point type, got {dtype}")
    if test is not None and name in LAST_N_VALIDATION:
        raise DataError(f"{name} has an official test split; 'test' applies only to data without one")
    raw = _load_raw(name, path, download, classes, (images, labels, test_images, test_labels))
    x, y, test_x, test_y = raw.x, raw.y, raw.test_x, raw.test_y
    if test is not None and test_x is not None:
        raise DataError(f"{name}: the files hold a test split; 'test' applies only to data without one")
    if test_x is None:
        n_test = round(0.2 * len(x)) if test is None else test
        _check_count(f"{name}: test", n_test, 1, len(x))
        is_test = stratified(y, n_test, np.random.default_rng(_TEST_SEED))
        x, y, test_x, test_y = x[~is_test], y[~is_test], x[is_test], y[is_test]
    _check_count(f"{name}: validation", validation, 0, len(x))
    x, test_x = (a.reshape(len(a), math.prod(a.shape[1:])) for a in (x, test_x))
    if test_x.shape[1] != x.shape[1]:
        raise DataError(f"{name}: test samples have {test_x.shape[1]} features, training samples {x.shape[1]}")
    for labels_ in (y, test_y):
        if len(labels_) and (labels_.min() < 0 or labels_.max() >= raw.n_classes):
            raise DataError(f"{name}: labels outside 0..{raw.n_classes - 1} (range {labels_.min()}..{labels_.max()})")

    if name in LAST_N_VALIDATION:
        is_val = np.arange(len(x)) >= len(x) - validation
    else:
        is_val = stratified(y, validation, np.random.default_rng([seed, VALIDATION_STREAM]))
    parts = {"train": (x[~is_val], y[~is_val]), "validation": (x[is_val], y[is_val]), "test": (test_x, test_y)}
    if scale == "standard":
        mean, std = _train_moments(parts["train"][0])
        mean, std = mean.astype(dtype), std.astype(dtype)

    def split(features, labels):
        out = features.astype(dtype)
        if scale == "unit":
            out /= dtype.type(raw.top)
        elif scale == "standard":
            out -= mean
            out /= std
        return Split(np.ascontiguousarray(out), np.ascontiguousarray(labels, dtype=np.int64))

    digest = {"files": {os.path.abspath(f): _file_sha256(f) for f in raw.files},
              "splits": {split: _split_digest(*part, raw.shape) for split, part in parts.items()}}
    return Dataset(
        name=name,
        n_features=x.shape[1],
        n_classes=raw.n_classes,
        sample_shape=raw.shape,
        train=split(*parts["train"]),
        validation=split(*parts["validation"]) if validation else None,
        test=split(*parts["test"]),
        digest=digest,
    )
