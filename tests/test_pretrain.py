"""Feedback pre-training (`train.feedback_pretrain_epochs`) and extra feedback passes (`train.extra_feedback_epochs`):
only the feedback maps learn in them, they are logged apart from the training epochs, and a run stopped or crashed
in them resumes to the same bits as a run that never stopped."""

import signal
from pathlib import Path

import numpy as np
import pytest

import localnet
from localnet.errors import Interrupted
from localnet.runs import RunDir
from localnet.training import StopRequest, resume, train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "network.layers.h1.size=16", "network.layers.h2.size=16", "train.epochs=2",
         "train.feedback_pretrain_epochs=2", "train.extra_feedback_epochs=1"]
BATCHES = 39  # digits: 1237 training samples in batches of 32


def spec_of(*extra):
    return localnet.load_spec(QUICKSTART, SMALL + list(extra))


def layer_files(run_dir):
    run = RunDir(run_dir)
    checkpoint = run.checkpoint_path()
    return {name: dict(np.load(checkpoint / f"{name}.npz")) for name in ("h1", "h2", "out")}


def assert_same_layers(a, b):
    sa, sb = layer_files(a), layer_files(b)
    for layer in sa:
        assert sa[layer].keys() == sb[layer].keys()
        for key in sa[layer]:
            assert sa[layer][key].tobytes() == sb[layer][key].tobytes(), f"{layer} {key} differs"


def metrics_without_times(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run_dir).metrics()]


def stop_after(stop, calls):
    """on_batch that requests a stop once `calls` batches have been trained, counted across every pass."""
    count = [0]

    def on_batch(done, total):
        count[0] += 1
        if count[0] == calls:
            stop.request(signal.SIGTERM)
    return on_batch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    summary, run = train(spec_of(), runs_root=tmp_path_factory.mktemp("reference"))
    assert summary["status"] == "completed"
    return run.path


def test_pretraining_trains_only_the_feedback_maps(tmp_path):
    spec = spec_of("train.epochs=0")
    fresh = localnet.build(spec, n_features=64, n_classes=10)
    summary, run = train(spec, runs_root=tmp_path)
    assert summary["status"] == "completed"
    saved = layer_files(run.path)
    for name, layer in fresh.layers.items():
        for key, value in layer.forward_params.items():
            assert np.array_equal(saved[name][f"param.{key}"], value), (name, key)
        for key, value in layer.feedback_params.items():  # h2 and out own g; two epochs of training moved it
            assert np.abs(saved[name][f"param.{key}"] - value).max() > 1e-4, (name, key)
    assert "V" in fresh.layers["out"].feedback_params and not fresh.layers["h1"].feedback_params
    records = RunDir(run.path).metrics()
    assert [(r["kind"], r["epoch"]) for r in records] == [("feedback_pretrain", -1), ("feedback_pretrain", 0)]
    assert set(records[-1]["reconstruction_loss_last_batch"]) == {"h2", "out"}


def test_metrics_and_passes_with_pretraining_and_extra_feedback(reference):
    records = RunDir(reference).metrics()
    assert [r.get("kind", "epoch") for r in records] == ["feedback_pretrain"] * 2 + ["epoch"] * 2
    assert [r["epoch"] for r in records] == [-1, 0, 1, 2]
    assert RunDir(reference).summary()["epochs"] == 2


def test_extra_feedback_passes_change_the_run(tmp_path, reference):
    """Without the extra pass the run differs (the option is not ignored) but its feedback maps still learn."""
    _, plain = train(spec_of("train.extra_feedback_epochs=0"), runs_root=tmp_path)
    a, b = layer_files(plain.path), layer_files(reference)
    assert not np.array_equal(a["h2"]["param.V"], b["h2"]["param.V"])


@pytest.mark.parametrize("calls", [
    5,                        # pre-training epoch -1
    BATCHES,                  # the end of pre-training epoch -1 (the checkpoint is at epoch 0's first batch)
    2 * BATCHES + 7,          # epoch 1's training pass
    3 * BATCHES + 11,         # epoch 1's extra feedback pass
])
def test_stop_in_pretraining_or_an_extra_pass_then_resume_bit_identical(tmp_path, reference, calls):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec_of(), runs_root=tmp_path, stop=stop, on_batch=stop_after(stop, calls))
    (path,) = tmp_path.iterdir()
    summary, _ = resume(path)
    assert summary["status"] == "completed"
    assert_same_layers(reference, path)
    assert metrics_without_times(reference) == metrics_without_times(path)


def test_a_crash_in_pretraining_before_any_checkpoint_restarts_it(tmp_path, reference):
    class Crash(Exception):
        pass

    def crash(done, total):
        if done == 9:
            raise Crash

    with pytest.raises(Crash):
        train(spec_of(), runs_root=tmp_path, on_batch=crash)
    (path,) = tmp_path.iterdir()
    assert RunDir(path).checkpoint_path() is None
    resume(path)
    assert_same_layers(reference, path)
    assert metrics_without_times(reference) == metrics_without_times(path)


def test_pretraining_is_a_no_op_for_a_rule_without_feedback(tmp_path):
    _, a = train(spec_of("rule.name=bp", "train.epochs=1"), runs_root=tmp_path / "a")
    _, b = train(spec_of("rule.name=bp", "train.epochs=1", "train.feedback_pretrain_epochs=0"),
                 runs_root=tmp_path / "b")
    assert_same_layers(a.path, b.path)
    assert [r["epoch"] for r in RunDir(a.path).metrics()] == [1]
