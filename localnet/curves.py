"""A run's learning curves in the formats other tools read, beside metrics.jsonl: `metrics.csv`, one row per epoch
(pandas, a spreadsheet), and, where the `tensorboard` extra (tensorboardX, `pip install 'localnet[tensorboard]'`)
is installed, TensorBoard event files in `tensorboard/` (`tensorboard --logdir runs`). Without tensorboardX
nothing is said and nothing else changes.

Both hold the epoch records only (per-batch diagnostics stay in metrics.jsonl). The CSV is appended one flushed
and fsynced row at a time, as the log is; on resume it is rewritten from the records the log keeps, so it never
holds an epoch twice or misses one, and TensorBoard is told to drop the events of the epochs logged again.
"""

from __future__ import annotations

import csv
import io
import os

from .runs import own, write_text

CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
# the columns of metrics.csv, in this order, where the run logs them (no validation split: no val_ columns)
ORDER = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
# TensorBoard tags: train and validation side by side in one section per quantity
TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "train_accuracy": "accuracy/train",
        "val_accuracy": "accuracy/validation", "seconds": "seconds per epoch"}


def is_epoch(record) -> bool:
    """An epoch's record (train/validation metrics), not a diagnostics or feedback pre-training one."""
    return "kind" not in record and isinstance(record.get("epoch"), int) and record["epoch"] >= 1


def _line(values) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


class Curves:
    """The CSV and TensorBoard writers of one run directory, for the process that trains it."""

    def __init__(self, path, kept=None):
        """A new run (`kept` None), or one resumed with `kept`, the records its metrics.jsonl keeps: the CSV is
        rewritten from them and TensorBoard hides its events from the first epoch logged again on."""
        self.path = own(path / CSV)
        epochs = [r for r in kept or () if is_epoch(r)]
        self.columns = _columns(epochs[0]) if epochs else None
        if kept is not None:
            write_text(self.path, "".join(_line(values) for values in
                                          [self.columns] + [self._values(r) for r in epochs]) if epochs else "")
        self.board = _board(path, None if kept is None else epochs[-1]["epoch"] + 1 if epochs else 1)

    def _values(self, record):
        return [record.get(c, "") for c in self.columns]

    def epoch(self, record):
        """Add an epoch record: one CSV row (the header first, in a new file) and its scalars."""
        if self.columns is None:
            self.columns = _columns(record)
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write((_line(self.columns) if fh.tell() == 0 else "") + _line(self._values(record)))
            fh.flush()
            os.fsync(fh.fileno())
        if self.board is not None:
            for key, tag in TAGS.items():
                if isinstance(record.get(key), (int, float)):
                    self.board.add_scalar(tag, record[key], record["epoch"])
            self.board.flush()

    def close(self):
        if self.board is not None:
            self.board.close()
            self.board = None


def _columns(record):
    return [c for c in ORDER if c in record] + sorted(c for c in record if c not in ORDER)


def _board(path, purge):
    """A tensorboardX SummaryWriter on `path/tensorboard`, or None without tensorboardX. `purge`: on resume, the
    first epoch logged again (TensorBoard hides the older event files' events from it on)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir=str(own(path / TENSORBOARD)), purge_step=purge)
