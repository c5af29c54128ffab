"""A run's curves beside metrics.jsonl: metrics.csv always, TensorBoard event files where TensorBoard is installed;
both hold each epoch once, after a resume too."""

import csv
import json
import struct
from pathlib import Path

import pytest

import localnet
from localnet import curves
from helpers import only_run, stop_at
from localnet.errors import Interrupted, RunError
from localnet.runs import RunDir
from localnet.training import StopRequest, resume, train

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["backend=numpy", "train.epochs=3", "network.layers.h1.size=16", "network.layers.h2.size=16"]
COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]


def spec(*extra):
    return localnet.load_spec(ROOT / "specs" / "quickstart.yaml", SMALL + list(extra))


def epochs_logged(path):
    return [r for r in RunDir(path).metrics() if "kind" not in r]


def csv_rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.reader(fh))


def assert_csv_is_the_log(path):
    header, *rows = csv_rows(path)
    records = epochs_logged(path)
    assert header == COLUMNS
    assert [[float(v) for v in row] for row in rows] == [[float(r[c]) for c in COLUMNS] for r in records]


def interrupted_run(tmp_path, *extra, epoch=2, done=5):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec(*extra), runs_root=tmp_path, stop=stop, **stop_at(stop, epoch, done))
    return only_run(tmp_path)


def test_every_run_writes_metrics_csv_one_row_per_epoch(tmp_path):
    _, run = train(spec("diagnostics.every=10"), runs_root=tmp_path)  # diagnostics records stay out of it
    assert [row[0] for row in csv_rows(run.path)] == ["epoch", "1", "2", "3"]
    assert_csv_is_the_log(run.path)


def test_without_a_validation_split_there_are_no_validation_columns(tmp_path):
    _, run = train(spec("train.epochs=1", "data.validation=0"), runs_root=tmp_path)
    assert csv_rows(run.path)[0] == ["epoch", "train_loss", "train_accuracy", "seconds"]


def test_a_resumed_run_has_each_epoch_once(tmp_path):
    path = interrupted_run(tmp_path)
    assert [row[0] for row in csv_rows(path)] == ["epoch", "1"]
    resume(path)
    assert [row[0] for row in csv_rows(path)] == ["epoch", "1", "2", "3"]
    assert_csv_is_the_log(path)


def test_epochs_logged_after_the_checkpoint_are_dropped_from_the_csv_as_from_the_log(tmp_path):
    """A kill after epoch 2 was logged but before its checkpoint: resume trains epoch 2 again, and logs it once."""
    path = interrupted_run(tmp_path)
    logged = epochs_logged(path)[0]
    with open(path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({**logged, "epoch": 2}) + "\n")
    with open(path / "metrics.csv", "a") as fh:
        fh.write("2,9,9,9,9,9\n")
    resume(path)
    assert [row[0] for row in csv_rows(path)] == ["epoch", "1", "2", "3"]
    assert_csv_is_the_log(path)


def test_a_run_from_before_metrics_csv_gets_one_on_resume(tmp_path):
    path = interrupted_run(tmp_path)
    (path / "metrics.csv").unlink()
    resume(path)
    assert_csv_is_the_log(path)


def test_a_linked_metrics_csv_is_refused_and_what_it_points_at_untouched(tmp_path):
    path = interrupted_run(tmp_path / "runs")
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("mine\n")
    (path / "metrics.csv").unlink()
    (path / "metrics.csv").symlink_to(outside)
    with pytest.raises(RunError, match="metrics.csv is a symbolic link"):
        resume(path)
    assert outside.read_text() == "mine\n"


def test_without_tensorboard_no_event_files_and_nothing_said(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: False)
    _, run = train(spec("train.epochs=1"), runs_root=tmp_path)
    assert not (run.path / "tensorboard").exists()
    assert capsys.readouterr() == ("", "") and not recwarn.list


# -- TensorBoard ----------------------------------------------------------------------------------------------------
@pytest.fixture
def with_tensorboard(monkeypatch):
    monkeypatch.setattr(curves, "tensorboard_installed", lambda: True)


def fields(data):
    """{field number: [values]} of a protobuf message: varints as ints, fixed64 and fixed32 as bytes, the rest
    as the bytes they delimit."""
    out, at = {}, 0

    def varint():
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value
    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        else:
            size = {1: 8, 5: 4}.get(wire) or varint()
            value, at = data[at:at + size], at + size
        out.setdefault(number, []).append(value)
    return out


def events(path):
    """(step, tag, value) of every scalar in a run's event files in name order, and the steps of SessionLog START
    events; each record's CRC-32C is checked."""
    scalars, starts = [], []
    for file in sorted((path / "tensorboard").iterdir()):
        data, at = file.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            body = data[at + 12:at + 12 + length]
            assert data[at + 8:at + 12] == curves._masked(data[at:at + 8])
            assert data[at + 12 + length:at + 16 + length] == curves._masked(body)
            at += 16 + length
            event = fields(body)
            step = event.get(2, [0])[0]
            if 7 in event and fields(event[7][0]).get(1) == [1]:
                starts.append(step)
            if 5 in event:
                for value in map(fields, fields(event[5][0]).get(1, [])):
                    scalars.append((step, value[1][0].decode(), struct.unpack("<f", value[2][0])[0]))
    return scalars, starts


def test_crc32c_is_castagnolis():
    assert curves.crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_event_files_hold_each_epochs_scalars(tmp_path, with_tensorboard):
    _, run = train(spec(), runs_root=tmp_path)
    scalars, starts = events(run.path)
    records = epochs_logged(run.path)
    assert starts == []
    for key, tag in (("train_loss", "loss/train"), ("val_accuracy", "accuracy/validation"),
                     ("seconds", "seconds/epoch")):
        got = [(step, value) for step, t, value in scalars if t == tag]
        assert got == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in records]


def test_a_resumed_run_tells_tensorboard_to_drop_the_epochs_it_logs_again(tmp_path, with_tensorboard):
    path = interrupted_run(tmp_path, epoch=3, done=5)
    resume(path)
    scalars, starts = events(path)
    assert starts == [3]  # from epoch 3 on, TensorBoard keeps the second file's events only
    assert [step for step, tag, _ in scalars if tag == "loss/train"] == [1, 2, 3]


def test_tensorboard_reads_them(tmp_path, with_tensorboard):
    """TensorBoard's own reader, where it is installed: a resumed run shows each epoch once, the later value."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    path = interrupted_run(tmp_path, epoch=3, done=5)
    with open(path / "metrics.jsonl", "a") as fh:  # epoch 3 logged, then killed before its checkpoint
        fh.write(json.dumps({**epochs_logged(path)[-1], "epoch": 3}) + "\n")
    curves.EventFile(path / "tensorboard").scalars(3, {"loss/train": 99.0})  # as the killed process wrote it
    resume(path)
    reader = accumulator.EventAccumulator(str(path / "tensorboard"))
    reader.Reload()
    records = epochs_logged(path)
    assert [(e.step, e.value) for e in reader.Scalars("loss/train")] == \
        [(r["epoch"], pytest.approx(r["train_loss"], rel=1e-6)) for r in records]
