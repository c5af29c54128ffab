"""Reader for the IDX format that MNIST, Fashion-MNIST and KMNIST are published in."""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# IDX type codes; all multi-byte values in the format are big-endian.
_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER = 4 + 4 * 255


def _header(path, raw):
    """(shape, dtype, header bytes) from the start of an IDX file's (decompressed) bytes."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty file'})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return shape, _DTYPES[code], header


def read_idx_header(path):
    """(shape, dtype) of an IDX file from its header alone, so a network can be sized without reading the data."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            start = fh.read(2)
        with (gzip.open if start == _GZIP_MAGIC else open)(path, "rb") as fh:
            raw = fh.read(_MAX_HEADER)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    shape, dtype, _ = _header(path, raw)
    return shape, dtype.newbyteorder("=")


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzipped or not (told apart by content, so a misnamed file still loads).

    The payload must match the header exactly: a short or padded file means a broken
    download or copy, and failing loudly beats training on garbage.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    shape, dtype, header = _header(path, raw)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a hostile header cannot overflow the check
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX payload is {len(raw) - header} bytes, header {shape} of {dtype.name} needs {expected}"
            + (" (file truncated)" if len(raw) - header < expected else " (trailing data)")
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
