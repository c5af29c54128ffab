"""A run's curves beside metrics.jsonl: metrics.csv always, TensorBoard event files with tensorboardX; both hold
each epoch once, after a resume too."""

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

import localnet
from helpers import only_run, stop_at
from localnet.errors import Interrupted
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


def test_without_tensorboardx_no_event_files_and_nothing_said(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if it were not installed
    _, run = train(spec("train.epochs=1"), runs_root=tmp_path)
    assert not (run.path / "tensorboard").exists()
    assert capsys.readouterr() == ("", "") and not recwarn.list


# -- TensorBoard ----------------------------------------------------------------------------------------------------
def events(path):
    """(wall time, step, tag, value) of every scalar in the run's event files, in file order, and the purge steps."""
    from tensorboardX.proto import event_pb2
    scalars, purges = [], []
    for file in sorted((path / "tensorboard").iterdir()):
        data = file.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                purges.append(event.step)
            for value in event.summary.value:
                scalars.append((event.step, value.tag, value.simple_value))
    return scalars, purges


def test_tensorboard_event_files_hold_each_epochs_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    _, run = train(spec(), runs_root=tmp_path)
    scalars, _ = events(run.path)
    records = epochs_logged(run.path)
    for key, tag in (("train_loss", "loss/train"), ("val_accuracy", "accuracy/validation")):
        got = [(step, value) for step, t, value in scalars if t == tag]
        assert got == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in records]


def test_a_resumed_run_tells_tensorboard_to_drop_the_epochs_it_logs_again(tmp_path):
    pytest.importorskip("tensorboardX")
    path = interrupted_run(tmp_path, epoch=3, done=5)
    resume(path)
    scalars, purges = events(path)
    assert purges == [3]  # TensorBoard hides the first process's events from epoch 3 on: there are none here
    assert [step for step, tag, _ in scalars if tag == "loss/train"] == [1, 2, 3]
