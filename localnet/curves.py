"""A run's learning curves in the formats other tools read, beside metrics.jsonl: `metrics.csv`, one row per epoch
(pandas, a spreadsheet), and, where TensorBoard is installed (`pip install 'localnet[tensorboard]'`), TensorBoard
event files in `tensorboard/` (`tensorboard --logdir runs`). Without TensorBoard nothing is said and nothing else
changes.

Both hold the epoch records only (per-batch diagnostics stay in metrics.jsonl). The CSV is appended one flushed
and fsynced row at a time, as the log is; on resume it is rewritten from the records the log keeps, so it never
holds an epoch twice or misses one, and the event file a resumed run starts tells TensorBoard to drop the older
files' events from the first epoch logged again.

The event files are written here, not by a writer package: they are TFRecords of `Event` protocol buffers, of
which a scalar needs five fields. tensorboardX, the smallest writer on PyPI, imports PyTorch wherever it is
installed, and with PyTorch imported two same-seed numba runs in one process no longer gave the same parameters;
TensorBoard itself is needed only to look at the files.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import socket
import struct
import time

from .runs import append, own, write_text

CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
# the columns of metrics.csv, in this order, where the run logs them (no validation split: no val_ columns)
ORDER = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
# TensorBoard tags: train and validation side by side in one section per quantity
TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "train_accuracy": "accuracy/train",
        "val_accuracy": "accuracy/validation", "seconds": "seconds/epoch"}


def is_epoch(record) -> bool:
    """An epoch's record (train/validation metrics), not a diagnostics or feedback pre-training one."""
    return "kind" not in record and isinstance(record.get("epoch"), int)


def _line(values) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class Curves:
    """The CSV and TensorBoard writers of one run directory, for the process that trains it."""

    def __init__(self, path, kept=None, tensorboard=None):
        """A new run (`kept` None), or one resumed with `kept`, the records its metrics.jsonl keeps: the CSV is
        rewritten from them and TensorBoard hides its events from the first epoch logged again on. `tensorboard`:
        whether to write event files (default: where TensorBoard is installed)."""
        self.path = own(path / CSV)
        epochs = [r for r in kept or () if is_epoch(r)]
        self.columns = _columns(epochs[0]) if epochs else None
        if kept is not None:
            write_text(self.path, "".join(_line(values) for values in
                                          [self.columns] + [self._values(r) for r in epochs]) if epochs else "")
        if tensorboard is None:
            tensorboard = tensorboard_installed()
        self.events = EventFile(own(path / TENSORBOARD), None if kept is None else epochs[-1]["epoch"] + 1
                                if epochs else 1) if tensorboard else None

    def _values(self, record):
        return [record.get(c, "") for c in self.columns]

    def epoch(self, record):
        """Add an epoch record: one CSV row (the header first, in a new or emptied file) and its scalars."""
        header = self.columns is None
        if header:
            self.columns = _columns(record)
        append(self.path, ((_line(self.columns) if header else "") + _line(self._values(record))).encode("utf-8"))
        if self.events is not None:
            self.events.scalars(record["epoch"], {tag: record[key] for key, tag in TAGS.items()
                                                  if isinstance(record.get(key), (int, float))})


def _columns(record):
    return [c for c in ORDER if c in record] + sorted(c for c in record if c not in ORDER)


# -- TensorBoard's event files ----------------------------------------------------------------------------------
def _crc32c_table():
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # an int64 as protobuf encodes it
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, *, scalars=None, file_version=None, start=False, wall_time=None) -> bytes:
    """One `Event` (tensorflow/core/util/event.proto): wall_time = 1 (double), step = 2, then file_version = 3,
    summary = 5 (Summary.value = 1: Value.tag = 1, Value.simple_value = 2, a float) or session_log = 7
    (SessionLog.status = 1, START = 1)."""
    out = b"\x09" + struct.pack("<d", time.time() if wall_time is None else wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        out += _field(5, b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                                  for tag, value in scalars.items()))
    if start:
        out += _field(7, b"\x08\x01")
    return out


def record(data: bytes) -> bytes:
    """A TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(data))
    return length + _masked(length) + data + _masked(data)


class EventFile:
    """A new event file in `folder`, appended one flushed record per epoch. `purge`: a resumed run's first epoch
    logged again, written as a SessionLog START at that step, upon which TensorBoard drops every earlier file's
    events from that step on (the epochs the resumed run logs again)."""

    def __init__(self, folder, purge=None):
        folder.mkdir(exist_ok=True)
        stamp = time.time_ns()  # TensorBoard reads a folder's files in name order: a resumed run's sorts after
        self.path = own(folder / f"events.out.tfevents.{stamp}.{socket.gethostname()}")
        self._write(event(0, file_version="brain.Event:2", wall_time=stamp / 1e9),
                    *([event(purge, start=True, wall_time=stamp / 1e9)] if purge is not None else []))

    def scalars(self, step, values):
        self._write(event(step, scalars=values))

    def _write(self, *events):
        append(self.path, b"".join(record(e) for e in events))
