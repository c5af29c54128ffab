"""The training loop: data in, epochs of the rule's steps, metrics and checkpoints out to a run directory.

A run can be resumed from its last checkpoint (`resume`) and ends with the same parameters, bit for bit, as if it
had never stopped: a checkpoint holds every layer's full state (parameters, optimiser state, generator state), the
position in the schedule (epoch, pass, next batch), the data-order generator's state at the start of that epoch
(so the epoch's permutation is drawn again), the running metric sums and the time spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .curves import Curves
from .data import load_dataset
from .data.datasets import absolute_paths, data_changes
from .diagnostics import Probe
from .errors import DiskFull, Interrupted, LocalnetError, RunError
from .network import build
from .runs import RunDir
from .spec import load_spec

DATA_ORDER_STREAM = 0xDA7A  # mixed into the seed so the shuffling stream differs from every layer's
INPUT_NOISE_STREAM = 0x1A0153  # input noise: one generator per (epoch, pass, batch), so resuming needs no state
CHECKPOINT_FORMAT = 1
EXPLODED = 1e6  # a loss this many times the first batch's (or 1's, if larger) has diverged though finite


class Diverged(LocalnetError):
    """A NaN or Inf appeared (loss, activation, target, parameter, optimiser state), or the loss exploded:
    training stops instead of producing a garbage model; the last good checkpoint is kept."""


# -- stopping on a signal ---------------------------------------------------------------------------------------
class StopRequest:
    """Set by a signal handler, read by the training loop between batches."""

    def __init__(self):
        self.signal = None

    def request(self, signum=signal.SIGINT):
        self.signal = signum

    def __bool__(self):
        return self.signal is not None

    @property
    def name(self):
        return signal.Signals(self.signal).name if self.signal is not None else None


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """While inside, SIGINT and SIGTERM ask the training loop to finish its batch, checkpoint and stop; a second
    signal aborts at once (KeyboardInterrupt; the previous checkpoint stays in force). The previous handlers
    are restored on the way out. Main thread only, as Python's signal handling is."""
    request = StopRequest()

    def handler(signum, frame):
        if request:
            raise KeyboardInterrupt
        request.request(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# -- where a run is ---------------------------------------------------------------------------------------------
@dataclass
class Position:
    """The trainer's state at a batch boundary: the next batch to train is `batch` of pass `pass_` of `epoch`."""

    epoch: int = 1
    pass_: int = 0
    batch: int = 0
    data_rng: dict | None = None  # the data-order generator's state at the start of `epoch`
    loss_sum: float = 0.0  # running sums over `epoch`'s metrics pass so far
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0  # training time already spent in `epoch`
    seconds: list = field(default_factory=list)  # training time of each completed epoch
    steps: int = 0  # batches trained since the run began

    def to_dict(self):
        return {"format": CHECKPOINT_FORMAT,
                **{("pass" if k == "pass_" else k): v for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, data, where, *, epochs, passes, batches, first_epoch=1):
        """Check a trainer state read from `where` against the run's schedule (`passes(epoch)`: that epoch's
        number of passes; epochs from `first_epoch`, below 1 while feedback pre-training); RunError naming it
        if it does not fit."""
        def bad(why):
            return RunError(f"checkpoint file {where} is invalid: {why}")

        if data.get("format") != CHECKPOINT_FORMAT:
            raise bad(f"format {data.get('format')!r}, this localnet reads {CHECKPOINT_FORMAT}")
        kwargs = {}
        for f in fields(cls):
            key = "pass" if f.name == "pass_" else f.name
            if key not in data:
                raise bad(f"no {key!r}")
            kwargs[f.name] = data[key]
        pos = cls(**kwargs)
        ints = ("epoch", "pass_", "batch", "correct", "seen", "steps")
        if not all(isinstance(getattr(pos, k), int) and not isinstance(getattr(pos, k), bool)
                   and getattr(pos, k) >= (first_epoch if k == "epoch" else 0) for k in ints):
            raise bad("epoch, pass, batch and counts must be non-negative integers")
        if not all(isinstance(getattr(pos, k), (int, float)) for k in ("loss_sum", "epoch_seconds")):
            raise bad("loss_sum and epoch_seconds must be numbers")
        if not isinstance(pos.seconds, list) or not all(isinstance(s, (int, float)) for s in pos.seconds):
            raise bad("seconds must be a list of numbers")
        if not first_epoch <= pos.epoch <= epochs + 1 or pos.pass_ >= passes(pos.epoch) \
                or pos.batch >= max(batches, 1):
            raise bad(f"position epoch {pos.epoch}, pass {pos.pass_}, batch {pos.batch} is outside the run's "
                      f"schedule (epochs {first_epoch} to {epochs} of {passes(max(pos.epoch, 1))} pass(es) of "
                      f"{batches} batches)")
        if pos.data_rng is not None:
            try:
                np.random.PCG64().state = pos.data_rng
            except (ValueError, TypeError, KeyError) as exc:
                raise bad(f"data order generator state: {exc}") from None
        return pos


@dataclass
class Best:
    """The parameters of the epoch with the best validation score so far: model selection by the validation split,
    as in Meulemans et al. 2020 (whose tables give the test score of the epoch with the best validation accuracy,
    their `acc_test_val_best`). Accuracy for classifiers, loss for auto-encoders; a tie keeps the earlier epoch."""

    epoch: int
    metric: str  # "val_accuracy" (higher is better) or "val_loss" (lower is better)
    value: float
    params: dict  # {layer: {name: array}}, copies

    def beaten_by(self, record) -> bool:
        value = record[self.metric]
        return value > self.value if self.metric == "val_accuracy" else value < self.value

    def header(self):
        return {"best": {"epoch": self.epoch, "metric": self.metric, "value": self.value}}

    @classmethod
    def from_checkpoint(cls, run, checkpoint, trainer):
        head = trainer.get("best")
        if head is None:
            return None
        params = run.load_best(checkpoint, trainer)
        if not isinstance(head, dict) or params is None or head.get("metric") not in ("val_accuracy", "val_loss") \
                or not isinstance(head.get("epoch"), int) or not isinstance(head.get("value"), (int, float)):
            raise RunError(f"checkpoint file {checkpoint / 'trainer.json'} is invalid: its 'best' entry {head!r} "
                           f"does not describe a best-validation epoch it holds")
        return cls(head["epoch"], head["metric"], float(head["value"]), params)


def load_data(spec):
    d = spec.data
    return load_dataset(d.name, path=d.path, validation=d.validation, test=d.test, scale=d.scale,
                        dtype=np.dtype(spec.dtype), download=d.download, seed=spec.seed, images=d.images,
                        labels=d.labels, test_images=d.test_images, test_labels=d.test_labels, classes=d.classes)


def _absolute_data(spec):
    """`spec` with its data's relative file and folder names made absolute (`absolute_paths`), so that its run
    directory's spec.yaml names the files it reads wherever a resume or an eval starts; the origin (file,
    overrides) is kept."""
    data = absolute_paths(spec.data)
    if data == spec.data:
        return spec
    pinned = dataclasses.replace(spec, data=data)
    object.__setattr__(pinned, "origin", spec.origin)
    return pinned


def _data_check(run, data):
    """Whether `data`, loaded now, is the data the run trained on, by its record (data.json): (verdict, why,
    record), the verdict "same", "unrecorded" (a run made before localnet kept one) or "other" (the data
    differs, or the record is unreadable: then record is None), `why` one line saying so (None when the same)."""
    try:
        recorded = run.data_record()
    except RunError as exc:
        return "other", str(exc), None
    if recorded is None:
        return "unrecorded", f"{run.path} records no digest of its data (made before localnet kept one)", None
    changed = data_changes(recorded, data.digest)
    if changed is None:
        return "same", None, recorded
    return "other", f"the data is not the data {run.path} trained on: {changed}", recorded


def feedback_noise(rule, epoch):
    """σ of feedback training in `epoch` (from 1): σ / (1 + (epoch − 1)/τ) with τ = rule.feedback_noise_decay."""
    tau = rule.feedback_noise_decay
    return rule.feedback_noise / (1 + (epoch - 1) / tau) if tau else rule.feedback_noise


def noisy_inputs(spec, x, epoch, pass_, batch):
    """A training batch's inputs with `train.input_noise` Gaussian noise added (x itself when σ is 0), drawn from
    a generator keyed by the seed and the batch's position."""
    std = spec.train.input_noise
    if not std:
        return x
    rng = np.random.default_rng([spec.seed, INPUT_NOISE_STREAM, epoch, pass_, batch])
    return x + (std * rng.standard_normal(x.shape)).astype(x.dtype)


def _passes(spec, net, epoch=1):
    """The passes over the data of `epoch`: feedback only while pre-training (epoch < 1); otherwise the schedule's,
    then `train.extra_feedback_epochs` feedback-only passes. The last pass before those is the measured one."""
    feedback = [net.feedback_step] if net.graph.feedback_layers else []
    if epoch < 1:
        return feedback
    if spec.rule.schedule == "alternate_epoch" and feedback:
        return [net.feedback_step, net.forward_step] + feedback * spec.train.extra_feedback_epochs
    if spec.rule.schedule == "feedback_first" and feedback:
        return [net.feedback_first_step] + feedback * spec.train.extra_feedback_epochs
    return [net.train_step] + feedback * spec.train.extra_feedback_epochs


def _first_epoch(spec, net):
    """1, or 1 − `train.feedback_pretrain_epochs` when the rule has feedback maps to pre-train."""
    return 1 - spec.train.feedback_pretrain_epochs if net.graph.feedback_layers else 1


# -- entry points -----------------------------------------------------------------------------------------------
def train(spec, *, runs_root="runs", on_epoch=None, on_batch=None, stop=None):
    """Train `spec` to the end, logging to a new run directory; returns (summary, run directory).

    Everything that can fail on bad input (spec, graph, data) fails before the run directory exists.
    `on_batch(done, total)` and `on_epoch(record)` report progress; when `stop` (a StopRequest) becomes true,
    the loop checkpoints at the next batch boundary and raises Interrupted.
    """
    spec = _absolute_data(spec)
    data = load_data(spec)
    net = build(spec, n_features=data.sample_shape, n_classes=data.n_classes)
    run = RunDir.create(runs_root, spec, net.backend.NAME, data.digest)
    summary = {"status": "running", "run_dir": str(run.path), "epochs": 0}
    return _run(spec, net, data, run, Curves(run.path), Position(_first_epoch(spec, net)), None, None, summary,
                on_epoch, on_batch, stop)


def resume(run_dir, *, on_epoch=None, on_batch=None, stop=None, on_warning=None, allow_other_data=False):
    """Continue a run from its last checkpoint (from the start if it stopped before its first one), with the run
    directory's own spec and backend; returns (summary, run directory) like `train`.

    Metrics logged after the checkpoint are dropped (the resumed run logs those epochs again). A completed run,
    a directory that is not a run, a run another process holds, and a checkpoint that cannot be read or does not
    fit the run's network are refused with a RunError; so is data other than the run trained on (its files or
    splits changed: data.json, `_data_check`), or an unreadable record of it, unless `allow_other_data`, which
    warns and records the data found now. A run that records no data (made before localnet kept a record)
    resumes with a warning and gets a record.
    """
    warn = on_warning or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))
    run = RunDir(run_dir)
    run.check()
    run.lock()
    try:
        previous = run.summary()
        if previous.get("status") == "completed":
            raise RunError(f"{run.path} is completed; there is nothing to resume")
        spec = run.spec()
        backend = run.environment().get("backend")
        if spec.backend == "auto" and isinstance(backend, str):
            spec = load_spec(spec, [f"backend={backend}"])  # the backend it trained with, not today's fastest
        data = load_data(spec)
        verdict, why, recorded = _data_check(run, data)
        if verdict == "other" and not allow_other_data:
            raise RunError(f"{why}; refused (`localnet run --resume RUN_DIR --allow-other-data` trains on it anyway)")
        if verdict != "same":
            warn(f"{why}; resuming on the data found now" + (" (--allow-other-data)" if verdict == "other" else
                                                             ", whose digest is recorded from now on"))
        net = build(spec, n_features=data.sample_shape, n_classes=data.n_classes)
        pos, saved, best = _restore(run, spec, net, data)
        records, skipped = run.read_metrics()
        if skipped:
            warn(run.metrics_warning(skipped))
        kept = [r for r in records if _logged_before(r, pos)]
        run.rewrite_metrics(kept)
        curves = Curves(run.path, kept)  # metrics.csv rewritten from the same records
        resumes = previous.get("resumes")
        summary = {"status": "running", "run_dir": str(run.path), "epochs": max(pos.epoch - 1, 0),
                   "resumes": (resumes if isinstance(resumes, int) else 0) + 1,
                   "resumed_at": {"epoch": pos.epoch, "pass": pos.pass_, "batch": pos.batch}}
        if verdict != "same":  # the data trained on from here; what it replaced goes with it
            earlier = [*recorded.get("earlier", []), {k: v for k, v in recorded.items() if k != "earlier"}] \
                if recorded is not None else []
            run.write_data(data.digest, earlier)
        run.write_summary(summary)
    except BaseException:
        run.unlock()
        raise
    return _run(spec, net, data, run, curves, pos, saved, best, summary, on_epoch, on_batch, stop)


def _logged_before(record, pos):
    """Whether a metrics record describes training the checkpoint at `pos` already holds: an epoch record of an
    earlier epoch, a diagnostics record of a batch up to the checkpoint's step count."""
    if record.get("kind") == "diagnostics":
        return isinstance(record.get("step"), int) and record["step"] <= pos.steps
    return isinstance(record.get("epoch"), int) and record["epoch"] < pos.epoch


def _restore(run, spec, net, data):
    """The position, network state and best validation epoch of the run's current checkpoint; (start, None, None)
    when it has none."""
    checkpoint = run.checkpoint_path()
    if checkpoint is None:
        return Position(_first_epoch(spec, net)), None, None
    trainer = run.load_trainer_state(checkpoint)
    batches = math.ceil(len(data.train.x) / spec.train.batch_size)
    pos = Position.from_dict(trainer, checkpoint / "trainer.json", epochs=spec.train.epochs,
                             passes=lambda epoch: len(_passes(spec, net, epoch)), batches=batches,
                             first_epoch=_first_epoch(spec, net))
    if trainer.get("layers") != list(net.layers):
        raise RunError(f"checkpoint file {checkpoint / 'trainer.json'} names layers {trainer.get('layers')}, "
                       f"the run's network has {list(net.layers)}")
    for name, state in run.load_layer_states(checkpoint, net.layers, trainer).items():
        try:
            net.layers[name].load_state(state)
        except LocalnetError as exc:
            raise RunError(f"checkpoint file {checkpoint / (name + '.npz')} does not fit the run's network: "
                           f"{exc}") from None
    channels = run.load_channel_state(checkpoint, trainer)  # constraints' generators and delay queues, if any
    try:
        net.load_channel_state(channels)
    except LocalnetError as exc:
        raise RunError(f"checkpoint file {checkpoint / 'network.channels.npz'} does not fit the run's network: "
                       f"{exc}") from None
    return pos, (pos.epoch, pos.pass_, pos.batch), Best.from_checkpoint(run, checkpoint, trainer)


def _run(spec, net, data, run, curves, pos, saved, best, summary, on_epoch, on_batch, stop):
    """Train from `pos`, then evaluate; the summary records how it ended whatever happens (on a full disk too,
    where the half-written checkpoint has been deleted and the summary is overwritten in place if need be)."""
    try:
        summary.update(_loop(spec, net, data, run, curves, pos, saved, best, summary, on_epoch, on_batch, stop))
        summary["status"] = "completed"
    except DiskFull as exc:
        summary.update(status="stopped: disk full",
                       error=f"{exc}; stopped: make room, then `localnet run --resume {run.path}`")
        raise DiskFull(summary["error"]) from None
    except Diverged as exc:
        summary.update(status="diverged", error=str(exc))
        raise
    except (Interrupted, KeyboardInterrupt) as exc:
        summary.update(status="interrupted")
        if isinstance(exc, Interrupted):
            summary["error"] = str(exc)
        raise
    except Exception as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            run.write_summary(summary)
        except RunError as failed:
            if failed.__context__ is None:  # nothing else went wrong: this is the error
                raise
            # else the error that stopped the run goes on; this one is its consequence (the same full disk)
        finally:
            run.unlock()
    return summary, run


def _loop(spec, net, data, run, curves, pos, saved, best, summary, on_epoch, on_batch, stop):
    t = spec.train
    x, y = data.train.x, data.train.y
    n = len(x)
    starts = range(0, n, t.batch_size)
    rng = np.random.default_rng([spec.seed, DATA_ORDER_STREAM])
    if pos.data_rng is not None:
        rng.bit_generator.state = pos.data_rng
    seconds, steps = list(pos.seconds), pos.steps
    every = spec.diagnostics.every
    first_loss = None  # this process's first batch's: the scale an exploding loss is measured against

    def checkpoint(p: Position, why):
        nonlocal saved
        net.engine.synchronise()  # the MPI engine gathers every rank's layers into rank 0's copies
        found = net.find_nonfinite(("feedback parameters", "forward parameters", "optimiser state"))
        if found:
            raise Diverged(f"non-finite values before the checkpoint at epoch {p.epoch}, pass {p.pass_ + 1}, "
                           f"batch {p.batch + 1} ({why}): layer {found[0]!r}, {found[1]}; stopped"
                           f"{_kept(saved)}")
        net.check_isolation()  # no node holds another, or another's memory (LocalityError naming both)
        channels = net.channel_state()  # constraints' generators and delay queues; none without such constraints
        run.save_checkpoint(net.state(), {**p.to_dict(), **(best.header() if best else {})},
                            **({"channels": channels} if channels else {}), best=best.params if best else None)
        saved = (p.epoch, p.pass_, p.batch)
        summary.update(epochs=max(p.epoch - 1, 0), checkpoint={"epoch": p.epoch, "pass": p.pass_, "batch": p.batch})
        run.write_summary(summary)

    for epoch in range(pos.epoch, t.epochs + 1):
        resumed = epoch == pos.epoch
        passes = _passes(spec, net, epoch)
        total = len(starts) * len(passes)
        measured = len(passes) - 1 - (t.extra_feedback_epochs if epoch >= 1 and net.graph.feedback_layers else 0)
        epoch_rng = rng.bit_generator.state  # before this epoch's permutation: drawing it again gives the same
        order = rng.permutation(n) if t.shuffle else np.arange(n)
        loss_sum, correct, seen = (pos.loss_sum, pos.correct, pos.seen) if resumed else (0.0, 0, 0)
        spent = pos.epoch_seconds if resumed else 0.0
        first_pass, first_batch = (pos.pass_, pos.batch) if resumed else (0, 0)
        began = time.perf_counter()
        if spec.rule.feedback_noise_decay:
            net.set_feedback_noise(feedback_noise(spec.rule, epoch))
        if net.scheduled:
            net.start_epoch(epoch)
        for p in range(first_pass, len(passes)):
            step = passes[p]
            for b in range(first_batch if p == first_pass else 0, len(starts)):
                if stop:
                    checkpoint(Position(epoch, p, b, epoch_rng, loss_sum, correct, seen,
                                        spent + time.perf_counter() - began, seconds, steps), "interrupted")
                    raise Interrupted(f"stopped by {stop.name} at epoch {epoch}, batch {b + 1} of "
                                      f"{step.__name__}; checkpoint written; continue with "
                                      f"`localnet run --resume {run.path}`")
                start = starts[b]
                idx = order[start:start + t.batch_size]
                probe = None
                if every and (steps + 1) % every == 0:  # diagnostics: measured between backward and update
                    net.probe = probe = Probe(x[idx] if net.reconstructs else y[idx],
                                              reconstruction=step in (net.train_step, net.feedback_first_step))
                # an auto-encoder's target is the clean input; input noise corrupts what the network sees only
                metrics = step(noisy_inputs(spec, x[idx], epoch, p, b), x[idx] if net.reconstructs else y[idx])
                steps += 1
                if probe is not None:
                    net.probe = None
                if not net.looks_finite():
                    _check_divergence(net, metrics, epoch, b + 1, step.__name__, saved)
                first_loss = metrics["loss"] if first_loss is None else first_loss
                if metrics["loss"] > EXPLODED * max(abs(first_loss), 1.0):
                    raise Diverged(f"the loss exploded at epoch {epoch}, batch {b + 1} ({step.__name__}): "
                                   f"{metrics['loss']:.3g}, more than {EXPLODED:g} times the first batch's "
                                   f"{first_loss:.3g}; stopped{_kept(saved)}")
                if probe is not None and probe.layers is not None:  # None: a feedback-only pass learns nothing
                    run.log(probe.record(epoch=epoch, batch=b + 1, batches=len(starts), step=steps,
                                         loss=metrics["loss"]))
                if p == measured and epoch >= 1:
                    loss_sum += metrics["loss"] * len(idx)
                    correct += metrics["correct"]
                    seen += len(idx)
                if on_batch:
                    on_batch(p * len(starts) + b + 1, total)
        if epoch < 1:  # feedback pre-training: no forward weight changed, so no accuracy to report
            run.log({"kind": "feedback_pretrain", "epoch": epoch, "seconds": spent + time.perf_counter() - began,
                     "reconstruction_loss_last_batch": {name: layer.reconstruction_loss for name, layer
                                                        in net.layers.items()
                                                        if getattr(layer, "reconstruction_loss", None) is not None}})
            if t.checkpoint_every:
                checkpoint(Position(epoch + 1, 0, 0, rng.bit_generator.state, seconds=seconds, steps=steps), "epoch")
            continue
        seconds.append(spent + time.perf_counter() - began)
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "seconds": seconds[-1]}
        if data.validation is not None:
            val = net.evaluate(data.validation.x, data.validation.y, t.eval_batch_size)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            metric = "val_loss" if net.reconstructs else "val_accuracy"
            if best is None or best.beaten_by(record):
                net.engine.synchronise()  # (the MPI engine gathers every rank's layers to rank 0)
                best = Best(epoch, metric, record[metric], net.parameters())
        run.log(record)
        curves.epoch(record)
        if on_epoch:
            on_epoch(record)
        if t.checkpoint_every and epoch % t.checkpoint_every == 0 and epoch < t.epochs:
            checkpoint(Position(epoch + 1, 0, 0, rng.bit_generator.state, seconds=seconds, steps=steps), "epoch")
    if saved != (t.epochs + 1, 0, 0):
        checkpoint(Position(t.epochs + 1, 0, 0, rng.bit_generator.state, seconds=seconds, steps=steps), "final")
    final = {"epochs": t.epochs, "seconds_per_epoch": float(np.median(seconds)) if seconds else None}
    for split in ("train", "validation", "test"):
        part = getattr(data, split)
        if part is not None:
            result = net.evaluate(part.x, part.y, t.eval_batch_size)
            final[f"{split}_loss"], final[f"{split}_accuracy"] = result["loss"], result["accuracy"]
    if best is not None:
        final["best_validation"] = _judge(spec, data, best, final if best.epoch == t.epochs else None)
    return final


def _judge(spec, data, best, last):
    """Validation and test scores of the best validation epoch's parameters: the last epoch's numbers when it is
    that epoch (`last`), else those of a fresh network (local engine, the run's backend) holding its parameters,
    as `localnet eval --best` computes them."""
    result = {"epoch": best.epoch, "metric": best.metric}
    if last is not None:
        for split in ("validation", "test"):
            if f"{split}_loss" in last:
                result[f"{split}_loss"], result[f"{split}_accuracy"] = last[f"{split}_loss"], last[f"{split}_accuracy"]
        return result
    from .engines import LocalEngine, using
    with using(LocalEngine):
        judge = build(spec, n_features=data.sample_shape, n_classes=data.n_classes)
    judge.load_parameters(best.params)
    for split in ("validation", "test"):
        part = getattr(data, split)
        if part is not None:
            scores = judge.evaluate(part.x, part.y, spec.train.eval_batch_size)
            result[f"{split}_loss"], result[f"{split}_accuracy"] = scores["loss"], scores["accuracy"]
    return result


def _kept(saved):
    if saved is None:
        return "; no checkpoint had been written"
    return f"; the last good checkpoint (epoch {saved[0]}, pass {saved[1] + 1}, batch {saved[2] + 1}) is kept"


def _check_divergence(net, metrics, epoch, batch, phase, saved):
    """The cheap check saw something: find the first non-finite value, in the order a step computes them."""
    found = net.find_nonfinite()
    loss = metrics["loss"]
    if found is None and math.isfinite(loss):
        return  # a sum in the cheap check overflowed; every value is finite
    where = (f"first in layer {found[0]!r}, {found[1]}" if found
             else "every activation, target and parameter is finite")
    raise Diverged(f"non-finite values at epoch {epoch}, batch {batch} ({phase}): {where}; loss is {loss}; "
                   f"stopped{_kept(saved)}")


def evaluate_run(run_dir, split="test", best=False, unverified=False, on_warning=None):
    """Reload a run's current checkpoint and evaluate it on a split of its data set (the same numbers training
    reported, for a completed run); works on interrupted, diverged and killed runs too. With `best`, the
    parameters of the epoch with the best validation score so far instead of the latest; with `unverified`,
    checkpoint files that record no checksum are read (RunDir's `unverified`) instead of refused. Data that may
    not be what the run trained on (`_data_check`) is evaluated on with a warning: reading changes nothing."""
    warn = on_warning or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))
    run = RunDir(run_dir, unverified=unverified)
    spec = run.spec()
    data = load_data(spec)
    verdict, why, _ = _data_check(run, data)
    if verdict != "same":
        warn(f"{why}; the scores are of the data found now")
    part = getattr(data, split)
    if part is None:
        raise LocalnetError(f"the run's data has no {split} split")
    net = build(spec, n_features=data.sample_shape, n_classes=data.n_classes)
    params = run.load_parameters(net.layers, best=best)
    try:
        net.load_parameters(params)
    except LocalnetError as exc:
        raise RunError(f"the checkpoint of {run.path} does not fit its network: {exc}") from None
    return net.evaluate(part.x, part.y, spec.train.eval_batch_size), run
