"""Reader for the CIFAR-10 "python version" batches, which are pickles and so need care."""

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_DIR = "cifar-10-batches-py"
N_FEATURES = 3 * 32 * 32

# Exactly what a pickled numpy array needs; the batches hold nothing else but builtins.
# Both module spellings: the official files were written by numpy 1 ("numpy.core"),
# numpy 2 writes "numpy._core".
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickling can call any importable function; allow only numpy array reconstruction."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a hostile or corrupt pickle can raise nearly anything
        raise DataError(f"{where}: not a CIFAR-10 batch: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    x, y = batch[b"data"], batch[b"labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != N_FEATURES:
        found = f"{x.dtype} array {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{where}: data must be an N×{N_FEATURES} uint8 array, found {found}")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: labels are not integers: {e}") from e
    if y.shape != (len(x),):
        raise DataError(f"{where}: {len(x)} images but labels of shape {y.shape}")
    return x, y


def _read_dir(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        file = path / name
        try:
            data = file.read_bytes()
        except OSError as e:
            raise DataError(f"{file}: cannot read CIFAR-10 batch: {e}") from e
        batches[name] = _read_batch(data, str(file))
    return batches


def _read_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One pass in archive order: seeking backwards in a gzip stream means decompressing it again."""
    wanted = {f"{BATCH_DIR}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    batches = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    data = archive.extractfile(member).read()
                    batches[wanted[member.name]] = _read_batch(data, f"{path}:{member.name}")
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DataError(f"{path}: cannot read CIFAR-10 archive: {e}") from e
    missing = [m for m, name in wanted.items() if name not in batches]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)}")
    return batches


def read_cifar10(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test) from the unpacked batch directory or the .tar.gz.

    Reading the archive directly means a download never needs unpacking to disk. Images stay
    in the published channel-major (R, G, B planes of 32×32) flattened layout.
    """
    path = Path(path)
    batches = _read_dir(path) if path.is_dir() else _read_archive(path)
    x_train = np.concatenate([batches[name][0] for name in TRAIN_BATCHES])
    y_train = np.concatenate([batches[name][1] for name in TRAIN_BATCHES])
    return (x_train, y_train, *batches[TEST_BATCH])
