"""Nothing lost, in process: stop anywhere and resume to the same bits; checkpoints are atomic, complete and
refused clearly when corrupt; metrics survive a torn line; the divergence guard names layer, phase and step."""

import io
import json
import shutil
import signal
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import localnet
from helpers import only_run, reseal, stop_at
from localnet.cli import main
from localnet.errors import Interrupted, RunError
from localnet.runs import RunDir
from localnet.training import Diverged, StopRequest, evaluate_run, resume, stop_on_signals, train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "train.epochs=3", "network.layers.h1.size=16", "network.layers.h2.size=16"]
BATCHES = 39  # digits: 1237 training samples in batches of 32
VARIANTS = {
    "dtp": [],
    # Lee et al.'s schedule (two passes per epoch), sampling units (the layer's generator in the forward pass),
    # RMSprop with every state array and momentum on the feedback pathway
    "alternate_epoch": ["rule.schedule=alternate_epoch", "network.layers.h1.activation=stochastic_binary",
                        "optimizer.feedback={type: rmsprop, lr: 0.001, centered: true, momentum: 0.5}"],
    "bp": ["rule.name=bp", "optimizer.forward={type: sgd, lr: 0.05, momentum: 0.9}"],
    # Ernoult et al.'s order (feedback maps first, targets through the new g) and a cosine learning-rate schedule,
    # which a resumed run takes up at its epoch
    "feedback_first": ["rule.schedule=feedback_first", "rule.name=ldrl",
                       "optimizer.forward={type: sgd, lr: 0.05, momentum: 0.9, schedule: cosine, min_lr: 0.001}"],
}


def spec_of(variant, *extra):
    return localnet.load_spec(QUICKSTART, SMALL + VARIANTS[variant] + list(extra))


def full_state(run_dir):
    """Every array of every layer's file in the current checkpoint, and the trainer's state without times."""
    run = RunDir(run_dir)
    checkpoint = run.checkpoint_path()
    trainer = run.load_trainer_state(checkpoint)
    states = run.load_layer_states(checkpoint, trainer["layers"])
    for key in ("seconds", "epoch_seconds"):
        trainer.pop(key)
    return states, trainer


def assert_same_state(a, b):
    (states_a, trainer_a), (states_b, trainer_b) = full_state(a), full_state(b)
    assert trainer_a == trainer_b
    assert states_a.keys() == states_b.keys()
    for layer in states_a:
        assert states_a[layer].keys() == states_b[layer].keys(), layer
        for key in states_a[layer]:
            x, y = states_a[layer][key], states_b[layer][key]
            assert x.dtype == y.dtype and x.shape == y.shape, (layer, key)
            assert x.tobytes() == y.tobytes(), f"{layer} {key} differs"  # bit for bit, NaN patterns included


def same_metrics(a, b):
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(a).metrics()]
    return strip == [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(b).metrics()]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs every resumed run is compared with."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for variant in VARIANTS:
        summary, run = train(spec_of(variant), runs_root=root / variant)
        assert summary["status"] == "completed"
        out[variant] = run.path
    return out


@pytest.mark.parametrize("variant,epoch,done", [
    ("dtp", 1, 1), ("dtp", 2, 17), ("dtp", 2, BATCHES), ("dtp", 3, BATCHES - 1),
    ("alternate_epoch", 1, 5), ("alternate_epoch", 2, BATCHES), ("alternate_epoch", 2, BATCHES + 7),
    ("alternate_epoch", 3, 2 * BATCHES - 1),
    ("bp", 2, 3), ("feedback_first", 2, 30),
])
def test_stop_anywhere_then_resume_ends_bit_identical(tmp_path, references, variant, epoch, done):
    # the checkpoint is at the next batch (after an epoch's last batch: the next epoch's first)
    n_passes = 2 if variant == "alternate_epoch" else 1
    want = (epoch, done // BATCHES, done % BATCHES) if done < n_passes * BATCHES else (epoch + 1, 0, 0)
    stop = StopRequest()
    with pytest.raises(Interrupted, match=f"stopped by SIGTERM at epoch {want[0]}, batch {want[2] + 1} of "):
        train(spec_of(variant), runs_root=tmp_path, stop=stop, **stop_at(stop, epoch, done))
    path = only_run(tmp_path)
    run = RunDir(path)
    summary = run.summary()
    assert summary["status"] == "interrupted" and "checkpoint written" in summary["error"]
    trainer = run.load_trainer_state(run.checkpoint_path())
    assert (trainer["epoch"], trainer["pass"], trainer["batch"]) == want
    assert [r["epoch"] for r in run.metrics()] == list(range(1, want[0]))
    summary, _ = resume(path)
    assert summary["status"] == "completed" and summary["resumes"] == 1
    assert_same_state(references[variant], path)
    assert same_metrics(references[variant], path)
    assert summary["test_accuracy"] == RunDir(references[variant]).summary()["test_accuracy"]


def test_resume_is_bit_identical_on_the_numba_backend_too(tmp_path):
    """A backend may keep no state of its own between calls: everything random comes from the layer's generator."""
    pytest.importorskip("localnet.backends.numba")
    spec = spec_of("alternate_epoch", "backend=numba")
    _, reference = train(spec, runs_root=tmp_path / "reference")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec, runs_root=tmp_path / "stopped", stop=stop, **stop_at(stop, 2, BATCHES + 5))
    path = only_run(tmp_path / "stopped")
    resume(path)
    assert_same_state(reference.path, path)
    assert same_metrics(reference.path, path)


# a conv net (max-pool indices are step state) and a skip net (two inputs, two consumers), on the quickstart data
SHAPED = {
    "conv": ["network.layers=[{name: c1, type: conv2d, channels: 3, kernel: 3, padding: 1, pool: max}, "
             "{name: c2, type: conv2d, channels: 4, kernel: 3, pool: avg, pool_size: 1}, {name: fl, type: flatten}, "
             "{name: out, size: 10, activation: linear}]", "rule.name=ldrl", "rule.feedback_iterations=2"],
    "skip": ["network.layers=[{name: h1, size: 16}, {name: h2, size: 16}, {name: r, type: add, inputs: [h2, h1]}, "
             "{name: cat, size: 12, inputs: [r, h1]}, {name: out, size: 10, activation: linear}]"],
}


@pytest.mark.parametrize("net", sorted(SHAPED))
def test_conv_and_graph_nets_resume_bit_identical(tmp_path, net):
    spec = localnet.load_spec(QUICKSTART, ["backend=numpy", "train.epochs=2", *SHAPED[net]])
    _, reference = train(spec, runs_root=tmp_path / "reference")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec, runs_root=tmp_path / "stopped", stop=stop, **stop_at(stop, 1, 20))
    path = only_run(tmp_path / "stopped")
    summary, _ = resume(path)
    assert summary["status"] == "completed"
    assert_same_state(reference.path, path)
    assert same_metrics(reference.path, path)


def test_resume_twice_and_from_a_run_with_no_checkpoint_yet(tmp_path, references):
    """A run that died before its first checkpoint restarts from its spec; its stale metrics are dropped."""
    class Crash(Exception):
        pass

    def crash(record):
        raise Crash

    with pytest.raises(Crash):
        train(spec_of("dtp", "train.checkpoint_every=0"), runs_root=tmp_path, on_epoch=crash)
    path = only_run(tmp_path)
    assert RunDir(path).checkpoint_path() is None and len(RunDir(path).metrics()) == 1
    assert RunDir(path).summary()["status"] == "failed"
    stop = StopRequest()
    with pytest.raises(Interrupted):
        resume(path, stop=stop, **stop_at(stop, 2, 4))
    summary, _ = resume(path)
    assert summary["resumes"] == 2
    # checkpoint_every=0 still checkpoints on interrupt and at the end; the state matches the default's run
    assert_same_state(references["dtp"], path)
    assert same_metrics(references["dtp"], path)


@pytest.mark.parametrize("every,written", [(1, [2, 3, 4]), (2, [3, 5, 6]), (0, [6]), (7, [6])])
def test_checkpoint_every(tmp_path, monkeypatch, every, written):
    positions = []
    save = RunDir.save_checkpoint

    def spy(self, states, trainer, **files):
        positions.append(trainer["epoch"])
        return save(self, states, trainer, **files)

    monkeypatch.setattr(RunDir, "save_checkpoint", spy)
    epochs = written[-1] - 1
    train(spec_of("dtp", f"train.epochs={epochs}", f"train.checkpoint_every={every}"), runs_root=tmp_path)
    assert positions == written
    checkpoints = only_run(tmp_path) / "checkpoints"
    assert len([p for p in checkpoints.iterdir() if p.is_dir()]) == 1  # older ones are deleted after a commit


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch, references):
    """Kill-mid-checkpoint, made deterministic: the write of the second layer's file of epoch 2's checkpoint
    fails; the pointer still names epoch 1's complete checkpoint, and resuming from it ends bit-identical."""
    write = RunDir.write_layer_state
    calls = []

    def failing(self, checkpoint, layer, state):
        calls.append(layer)
        if len(calls) == 5:  # epoch 1's checkpoint wrote h1, h2, out; epoch 2's fails on h2
            raise OSError(28, "No space left on device")
        return write(self, checkpoint, layer, state)

    monkeypatch.setattr(RunDir, "write_layer_state", failing)
    with pytest.raises(OSError):
        train(spec_of("dtp"), runs_root=tmp_path)
    monkeypatch.setattr(RunDir, "write_layer_state", write)
    path = only_run(tmp_path)
    run = RunDir(path)
    assert run.summary()["status"] == "failed" and "No space left" in run.summary()["error"]
    partial = sorted(p.name for p in (path / "checkpoints").iterdir() if p.is_dir())
    assert len(partial) == 2  # the complete one and the torn one
    assert run.load_trainer_state(run.checkpoint_path())["epoch"] == 2
    resume(path)
    assert_same_state(references["dtp"], path)
    assert [p.name for p in (path / "checkpoints").iterdir() if p.is_dir()] == [run.checkpoint_path().name]


def test_a_torn_metrics_line_is_ignored_reported_and_repaired(tmp_path, references):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec_of("dtp"), runs_root=tmp_path, stop=stop, **stop_at(stop, 3, 10))
    path = only_run(tmp_path)
    with open(path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "train_loss": 0.1')  # a crash in the middle of writing a record
    records, skipped = RunDir(path).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2] and skipped == [3]
    # report and eval read the interrupted run, and say what they skipped
    for args in (["report", str(path)], ["eval", str(path)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "metrics.jsonl: line 3 is not a complete record" in " ".join(result.output.split())
    result = CliRunner().invoke(main, ["report", str(path)])
    assert "status: interrupted" in result.output and "epoch 3, pass 1, batch 11" in result.output
    warnings = []
    resume(path, on_warning=warnings.append)
    assert len(warnings) == 1 and "line 3" in warnings[0]
    assert RunDir(path).read_metrics()[1] == []
    assert same_metrics(references["dtp"], path)


def test_resume_refuses_completed_runs_non_runs_and_runs_in_use(tmp_path, references):
    with pytest.raises(RunError, match="is completed; there is nothing to resume"):
        resume(references["dtp"])
    with pytest.raises(RunError, match="is not a run directory"):
        resume(tmp_path)
    with pytest.raises(RunError, match="is not a directory"):
        resume(tmp_path / "nope")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec_of("dtp"), runs_root=tmp_path / "r", stop=stop, **stop_at(stop, 1, 1))
    holder = RunDir(only_run(tmp_path / "r"))
    holder.lock()  # another process training in it (flock conflicts across open files, even in one process)
    try:
        assert holder.path and RunDir(holder.path).in_use()
        with pytest.raises(RunError, match="in use by another localnet process"):
            resume(holder.path)
    finally:
        holder.unlock()
    assert RunDir(holder.path).summary()["status"] == "interrupted"  # a refused resume changes nothing
    resume(holder.path)


def test_resume_needs_no_spec_file_and_pins_the_backend(tmp_path, monkeypatch):
    """`backend: auto` resumes on the backend the run trained with (in environment.json), not today's fastest."""
    spec_path = tmp_path / "spec.yaml"
    shutil.copy(QUICKSTART, spec_path)
    monkeypatch.setattr("localnet.backends.PREFERENCE", ("numpy",))  # auto picks numpy here: no JIT warm-up
    s = localnet.load_spec(spec_path, [o for o in SMALL if not o.startswith("backend")])
    assert s.backend == "auto"
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(s, runs_root=tmp_path / "r", stop=stop, **stop_at(stop, 1, 2))
    spec_path.unlink()
    path = only_run(tmp_path / "r")
    assert json.loads((path / "environment.json").read_text())["backend"] == "numpy"
    asked = []
    real = localnet.network.backends.get_backend
    monkeypatch.setattr(localnet.network.backends, "get_backend", lambda name: asked.append(name) or real(name))
    summary, run = resume(path)
    assert summary["status"] == "completed" and asked and set(asked) == {"numpy"}  # (the best epoch's judge too)


# -- corrupt checkpoints ----------------------------------------------------------------------------------------

def _truncate(p):
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _flip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _wrong_shape(p):
    with np.load(p) as d:
        arrays = dict(d)
    arrays["param.W"] = np.zeros((3, 3), arrays["param.W"].dtype)
    np.savez(p, **arrays)


def _pickled(p):
    with np.load(p) as d:
        arrays = dict(d)
    arrays["param.W"] = np.array([object()], dtype=object)
    np.savez(p, **arrays)


def _bad_rng(p):
    with np.load(p) as d:
        arrays = dict(d)
    arrays["rng"] = np.array('{"bit_generator": "PCG64", "state": 5}')
    np.savez(p, **arrays)


def _replaced(make):
    """A corruption that replaces a layer file's param.W by `make(W)`."""
    def corrupt(p):
        with np.load(p) as d:
            arrays = dict(d)
        arrays["param.W"] = make(arrays["param.W"])
        np.savez(p, **arrays)
    return corrupt


def _nan(w):
    w = w.copy()
    w[0, 0] = np.nan
    return w


def _member(data, compress=zipfile.ZIP_STORED):
    """A corruption that writes `data` (bytes of an .npy file) as a layer file's param.W member."""
    def corrupt(p):
        with np.load(p) as d:
            arrays = dict(d)
        with zipfile.ZipFile(p, "w") as archive:
            for key, value in arrays.items():
                buffer = io.BytesIO()
                np.save(buffer, value)
                archive.writestr(f"{key}.npy", data if key == "param.W" else buffer.getvalue(),
                                 compress_type=compress if key == "param.W" else zipfile.ZIP_STORED)
    return corrupt


def _npy(shape, body=b"", descr="<f8"):
    """An .npy file's bytes: a header claiming `shape` of `descr`, then `body`."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue() + body


def _forget_checksum(p):
    """Delete a layer file's recorded SHA-256 (and record the trainer file's new one): only that file unchecked."""
    trainer = json.loads((p.parent / "trainer.json").read_text())
    del trainer["sha256"][p.name]
    (p.parent / "trainer.json").write_text(json.dumps(trainer))
    reseal(p.parent)


CORRUPTIONS = {
    "layer truncated": ("h2.npz", _truncate, "SHA-256"),
    "layer flipped": ("h2.npz", _flip, "SHA-256"),  # without the checksum, many flipped bytes load silently
    "layer garbage": ("out.npz", lambda p: p.write_bytes(b"not a checkpoint at all"), "SHA-256"),
    "layer empty": ("out.npz", lambda p: p.write_bytes(b""), "SHA-256"),
    "layer missing": ("h1.npz", lambda p: p.unlink(), "missing"),
    "layer wrong shape": ("h1.npz", _wrong_shape, "SHA-256"),
    "trainer truncated": ("trainer.json", _truncate, "SHA-256"),
    "trainer flipped": ("trainer.json", _flip, "SHA-256"),
    # what a file says is checked too, when its recorded checksums were made to match (`reseal`)
    "layer truncated, resealed": ("h2.npz", _truncate, "unreadable"),
    "layer garbage, resealed": ("out.npz", lambda p: p.write_bytes(b"not a checkpoint at all"), "unreadable"),
    "layer empty, resealed": ("out.npz", lambda p: p.write_bytes(b""), "unreadable"),
    "layer wrong shape, resealed": ("h1.npz", _wrong_shape, "does not fit the run's network"),
    "layer pickled, resealed": ("h1.npz", _pickled, "unreadable"),
    "weights of text, resealed": ("h1.npz", _replaced(lambda w: np.full(w.shape, "abc", "<U3")), "dtype '<U3'"),
    "weights of void, resealed": ("h1.npz", _replaced(lambda w: np.zeros(w.shape, "V4")), "dtype '|V4'"),
    "weights of NaN, resealed": ("h1.npz", _replaced(_nan), "NaN or an Inf"),
    "header claims 2**40, resealed": ("h2.npz", _member(_npy((2**40,), bytes(8))), "claims shape"),
    "member deflated, resealed": ("h2.npz", _member(_npy((1024,), bytes(8192)), zipfile.ZIP_DEFLATED),
                                     "compressed"),
    # item 12: without its checksums a checkpoint is refused, whatever it holds
    "checksums deleted": ("trainer.json", lambda p: _drop_checksums(p.parent), "no recorded SHA-256"),
    "one layer's checksum deleted": ("h1.npz", _forget_checksum, "no recorded SHA-256"),
    "layer generator, resealed": ("h2.npz", _bad_rng, "invalid generator state"),
    "trainer position, resealed": (
        "trainer.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "batch": 10**6})),
        "outside the run's schedule"),
    "trainer not a dict, resealed": ("trainer.json", lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    "trainer not JSON, resealed": ("trainer.json", lambda p: p.write_text("{"), "unreadable"),
    "pointer garbage": ("../latest.json", lambda p: p.write_text("{\"checkpoint\": \"../../etc\"}"), "invalid"),
    "pointer truncated": ("../latest.json", _truncate, "unreadable"),
    "pointer dangling": ("../latest.json", lambda p: p.write_text('{"checkpoint": "999999"}'), "missing"),
}


def _drop_checksums(checkpoint):
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    trainer.pop("sha256")
    (checkpoint / "trainer.json").write_text(json.dumps(trainer))
    pointer = checkpoint.parent / "latest.json"
    pointer.write_text(json.dumps({k: v for k, v in json.loads(pointer.read_text()).items() if k != "sha256"}))


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec_of("dtp"), runs_root=root, stop=stop, **stop_at(stop, 2, 5))
    return only_run(root)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_checkpoints_give_a_run_error_naming_the_file(tmp_path, interrupted_run, name):
    target, corrupt, message = CORRUPTIONS[name]
    path = tmp_path / "run"
    shutil.copytree(interrupted_run, path)
    checkpoint = RunDir(path).checkpoint_path()
    victim = (checkpoint / target).resolve()
    corrupt(victim)
    if "resealed" in name:  # as if the file had been written so, checksums and all: what it says is refused
        reseal(checkpoint)
    before = (path / "summary.json").read_text()
    with pytest.raises(RunError, match=message) as info:
        resume(path)
    assert str(victim) in str(info.value) or str(victim.relative_to(path.resolve())) in str(info.value)
    assert (path / "summary.json").read_text() == before  # a refused resume changes nothing
    if not any(word in name for word in ("generator", "position", "wrong shape, resealed")):
        with pytest.raises(RunError, match=message):  # eval reads the parameters: the same clear error
            evaluate_run(path)
    result = CliRunner().invoke(main, ["run", "--resume", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and victim.name in last


@pytest.mark.parametrize("corrupt", [_member(_npy((2**40,), bytes(8))),
                                     _member(_npy((2**24,), bytes(8 << 24)), zipfile.ZIP_DEFLATED)],
                         ids=["header claims 8 TiB", "128 MiB deflate bomb"])
def test_a_header_claim_or_a_deflate_bomb_allocates_nothing(tmp_path, interrupted_run, corrupt):
    """Checksums made to match: the member is refused from its zip entry and .npy header, before its size is
    allocated or inflated."""
    path = tmp_path / "run"
    shutil.copytree(interrupted_run, path)
    checkpoint = RunDir(path).checkpoint_path()
    corrupt(checkpoint / "h2.npz")
    reseal(checkpoint)
    tracemalloc.start()
    try:
        with pytest.raises(RunError, match="h2.npz is unreadable: 'param.W' (claims shape|is compressed)"):
            evaluate_run(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


def test_eval_of_a_run_stopped_before_its_first_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    def crash(done, total):
        raise Crash

    with pytest.raises(Crash):
        train(spec_of("dtp"), runs_root=tmp_path, on_batch=crash)
    result = CliRunner().invoke(main, ["eval", str(only_run(tmp_path))])
    assert result.exit_code == 1 and "has no checkpoint yet" in result.output


# -- the divergence guard ---------------------------------------------------------------------------------------

def poison(monkeypatch, epoch, done, layer, where):
    """Write a NaN into one array of one layer right after batch `done` of `epoch` (the network is reached by
    wrapping `build`, as a test must: the training loop gives no one its layers)."""
    built = {}
    real_build = localnet.training.build

    def spy(*args, **kwargs):
        built["net"] = real_build(*args, **kwargs)
        return built["net"]

    monkeypatch.setattr(localnet.training, "build", spy)
    hooks = stop_at(StopRequest(), epoch, done)
    on_epoch = hooks["on_epoch"]
    current = [1]

    def on_batch(d, total):
        if (current[0], d) == (epoch, done):
            where(built["net"].layers[layer])[(0,) * where(built["net"].layers[layer]).ndim] = np.nan

    def epoch_hook(record):
        current[0] = record["epoch"] + 1
        on_epoch(record)

    return {"on_epoch": epoch_hook, "on_batch": on_batch}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("layer,where,phase,batch", [  # poisoned after batch 6 of epoch 2, found at `batch`
    ("h2", lambda l: l.feedback_params["V"], "feedback parameters", 7),  # targets below go bad; the cause is V
    ("h1", lambda l: l.forward_params["W"], "forward activation", 7),
    ("out", lambda l: l.forward_params["b"], "forward activation", 7),
    ("h2", lambda l: l.forward_optimizer.state["W"]["m"], "forward activation", 8),  # W turns NaN at batch 7
])
def test_divergence_names_layer_phase_and_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, layer, where, phase, batch):
    hooks = poison(monkeypatch, 2, 6, layer, where)
    with pytest.raises(Diverged) as info:
        train(spec_of("dtp"), runs_root=tmp_path, **hooks)
    message = str(info.value)
    assert message.startswith(f"non-finite values at epoch 2, batch {batch} (train_step): "
                              f"first in layer {layer!r}, {phase}"), message
    assert "the last good checkpoint (epoch 2, pass 1, batch 1) is kept" in message
    path = only_run(tmp_path)
    run = RunDir(path)
    assert run.summary()["status"] == "diverged" and run.summary()["error"] == message
    states, trainer = full_state(path)
    assert trainer["epoch"] == 2
    assert all(np.isfinite(a).all() for s in states.values() for k, a in s.items() if k != "rng")
    result, _ = evaluate_run(path)  # the last good checkpoint still evaluates
    assert 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_no_checkpoint_is_ever_written_with_a_nan(tmp_path, monkeypatch):
    """Adam's moment of h1's feedback-free W turns NaN on the last batch of epoch 2: no step has used it yet, but
    the scan before epoch 2's checkpoint finds it, and epoch 1's checkpoint stays in force."""
    hooks = poison(monkeypatch, 2, BATCHES, "h1", lambda l: l.forward_optimizer.state["W"]["v"])
    with pytest.raises(Diverged, match="non-finite values before the checkpoint at epoch 3, pass 1, batch 1 "
                                       r"\(epoch\): layer 'h1', optimiser state"):
        train(spec_of("dtp"), runs_root=tmp_path, **hooks)
    _, trainer = full_state(only_run(tmp_path))
    assert trainer["epoch"] == 2


# -- signals, in process ----------------------------------------------------------------------------------------

def test_signal_handlers_are_installed_only_inside_and_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert signal.getsignal(signal.SIGINT) not in before
        signal.raise_signal(signal.SIGTERM)
        assert stop and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal aborts at once
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    train(spec_of("dtp", "train.epochs=1"), runs_root=tmp_path)  # the library alone installs nothing
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_cli_resume_arguments():
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(QUICKSTART), "--resume", "x"])
    assert result.exit_code == 2 and "give no SPEC" in result.output
    result = runner.invoke(main, ["run"])
    assert result.exit_code == 2 and "--resume RUN_DIR" in result.output


# -- concurrency ------------------------------------------------------------------------------------------------

def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path, monkeypatch):
    """Two runs in threads, with the clock frozen and the random ids colliding at first: mkdir without exist_ok
    makes the second pick a new id; each run writes only its own files."""
    monkeypatch.setattr("localnet.runs.time.strftime", lambda fmt, *a: "20260101-000000")
    ids = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb", "cccccc", "dddddd"])
    lock = threading.Lock()

    def token(n):
        with lock:
            return next(ids)

    monkeypatch.setattr("localnet.runs.secrets.token_hex", lambda n: token(n) if n == 3 else "0" * (2 * n))
    results, errors = [], []

    def go():
        try:
            results.append(train(spec_of("dtp", "train.epochs=1"), runs_root=tmp_path)[1].path)
        except Exception as exc:  # reported below, with the thread's exception
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        "20260101-000000-quickstart-aaaaaa", "20260101-000000-quickstart-bbbbbb"]
    for path in results:
        assert RunDir(path).summary()["status"] == "completed" and RunDir(path).summary()["run_dir"] == str(path)
        assert not [p for p in path.rglob("*.tmp")]
    assert_same_state(*results)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_adam_second_moment_overflowing_is_caught_at_its_batch(tmp_path, monkeypatch, dtype):
    """Feedback SGD at lr 5 with linear feedback maps grows h1's feedback gradients until its Adam second moment
    overflows to Inf, which makes Adam's update 0 and shows nowhere else: the guard stops at that batch (it was
    1 batch late in float32, 23 in float64)."""
    built = {}
    real_build = localnet.training.build
    monkeypatch.setattr(localnet.training, "build", lambda *a, **k: built.setdefault("net", real_build(*a, **k)))
    unseen = []

    def on_batch(done, total):  # after the guard looked at the batch: nothing non-finite may be left unseen
        unseen.append(built["net"].find_nonfinite(("optimiser state",)))

    with pytest.raises(Diverged, match="first in layer 'h1', optimiser state"):
        train(spec_of("dtp", f"dtype={dtype}", "network.layers.h1.size=128", "network.layers.h2.size=128",
                      "network.feedback.activation=linear", "optimizer.feedback={type: sgd, lr: 5}"),
              runs_root=tmp_path, on_batch=on_batch)
    assert unseen and not any(unseen)


def test_a_loss_that_explodes_stops_the_run(tmp_path):
    """Adam at lr 1e30 once 'completed' with a loss of 1e32: every value finite, the model garbage."""
    with pytest.raises(Diverged, match=r"the loss exploded at epoch 1, batch \d+ \(train_step\): .* more than 1e\+06 "
                                       r"times the first batch's"):
        train(spec_of("dtp", "optimizer.forward={type: adam, lr: 1e30}"), runs_root=tmp_path)
    assert RunDir(only_run(tmp_path)).summary()["status"] == "diverged"
