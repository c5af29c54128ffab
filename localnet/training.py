"""The training loop: data in, epochs of the rule's steps, metrics and a checkpoint out to a run directory."""

from __future__ import annotations

import math
import time

import numpy as np

from .data import load_dataset
from .errors import LocalnetError
from .network import build
from .runs import RunDir

DATA_ORDER_STREAM = 0xDA7A  # mixed into the seed so the shuffling stream differs from every layer's


class Diverged(LocalnetError):
    """The loss became NaN or infinite: training stops instead of producing a garbage model."""


def load_data(spec):
    d = spec.data
    return load_dataset(d.name, path=d.path, validation=d.validation, test=d.test, scale=d.scale,
                        dtype=np.dtype(spec.dtype), download=d.download)


def train(spec, *, runs_root="runs", on_epoch=None, on_batch=None):
    """Train `spec` to the end, logging to a new run directory; returns (summary, run directory).

    Everything that can fail on bad input (spec, graph, data) fails before the run directory exists.
    `on_batch(done, total)` and `on_epoch(record)` report progress.
    """
    data = load_data(spec)
    net = build(spec, n_features=data.n_features, n_classes=data.n_classes)
    run = RunDir.create(runs_root, spec, net.backend.NAME)
    summary = {"status": "running", "run_dir": str(run.path), "epochs": 0}
    try:
        summary.update(_loop(spec, net, data, run, on_epoch, on_batch))
        summary["status"] = "completed"
    except Diverged as exc:
        summary.update(status="diverged", error=str(exc))
        raise
    except KeyboardInterrupt:
        summary.update(status="interrupted")
        raise
    except Exception as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        run.write_summary(summary)
    return summary, run


def _loop(spec, net, data, run, on_epoch, on_batch):
    t = spec.train
    rng = np.random.default_rng([spec.seed, DATA_ORDER_STREAM])
    x, y = data.train.x, data.train.y
    n = len(x)
    starts = range(0, n, t.batch_size)
    passes = ([net.feedback_step, net.forward_step] if spec.rule.schedule == "alternate_epoch"
              and net.graph.feedback_layers else [net.train_step])
    total = len(starts) * len(passes)
    seconds = []
    for epoch in range(1, t.epochs + 1):
        order = rng.permutation(n) if t.shuffle else np.arange(n)
        began = time.perf_counter()
        loss_sum = correct = seen = done = 0
        for step in passes:
            for start in starts:
                idx = order[start:start + t.batch_size]
                metrics = step(x[idx], y[idx])
                if not math.isfinite(metrics["loss"]):
                    raise Diverged(f"loss is {metrics['loss']} at epoch {epoch}, batch {start // t.batch_size + 1}"
                                   f" ({step.__name__}); stopped")
                if step is passes[-1]:
                    loss_sum += metrics["loss"] * len(idx)
                    correct += metrics["correct"]
                    seen += len(idx)
                done += 1
                if on_batch:
                    on_batch(done, total)
        seconds.append(time.perf_counter() - began)
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "seconds": seconds[-1]}
        if data.validation is not None:
            val = net.evaluate(data.validation.x, data.validation.y, t.eval_batch_size)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        run.log(record)
        if on_epoch:
            on_epoch(record)
    run.save_parameters(net.parameters())
    final = {"epochs": t.epochs, "seconds_per_epoch": float(np.median(seconds)) if seconds else None}
    for split in ("train", "validation", "test"):
        part = getattr(data, split)
        if part is not None:
            result = net.evaluate(part.x, part.y, t.eval_batch_size)
            final[f"{split}_loss"], final[f"{split}_accuracy"] = result["loss"], result["accuracy"]
    return final


def evaluate_run(run_dir, split="test"):
    """Reload a run's checkpoint and evaluate it on a split of its data set (the same numbers training reported)."""
    run = RunDir(run_dir)
    spec = run.spec()
    data = load_data(spec)
    part = getattr(data, split)
    if part is None:
        raise LocalnetError(f"the run's data has no {split} split")
    net = build(spec, n_features=data.n_features, n_classes=data.n_classes)
    net.load_parameters(run.load_parameters(net.layers))
    return net.evaluate(part.x, part.y, spec.train.eval_batch_size), run
