"""The bench's peers: the same training step written the way a user of another framework would write it
(`pytorch.py`, `jax.py`), for `localnet bench`'s comparison columns. What the peers can write, and the loop that
times an epoch of steps, are here, shared by both."""

from __future__ import annotations

import time

import numpy as np

ACTIVATIONS = ("linear", "tanh", "sigmoid", "relu", "elu")


def check(spec, dtypes=("float32",)):
    """Whether `spec`'s net is a dense chain (True) or has conv blocks (False); ValueError unless the peers write
    its step: a plain chain of dense layers trained by backprop or by DTP (first target on the output, one feedback
    iteration, alternate_batch), or of conv2d, flatten and dense layers trained by backprop; Adam throughout."""
    if spec.dtype not in dtypes:
        raise ValueError(f"the peer comparison is {' or '.join(dtypes)} only")
    layers = spec.network.layers
    if spec.network.chain is not None or spec.network.channels is not None or \
            any(layer.inputs is not None for layer in layers):
        raise ValueError("only plain chains have a peer comparison")
    for layer in layers:
        if layer.activation not in ACTIVATIONS:
            raise ValueError(f"activation {layer.activation} has no peer comparison")
        if layer.type not in ("dense", "conv2d", "flatten"):
            raise ValueError(f"{layer.type} layers have no peer comparison")
    dense = all(layer.type == "dense" for layer in layers)
    r = spec.rule
    if not (r.name == "bp" or (dense and r.name == "dtp" and r.first_target == "output"
                               and r.schedule == "alternate_batch" and r.feedback_iterations == 1)):
        raise ValueError("peer comparison: backprop, or DTP on a dense chain with the first target on the output, "
                         "one feedback iteration and alternate_batch")
    optimizers = [spec.optimizer.forward] + ([spec.optimizer.feedback] if r.name == "dtp" else [])
    if any(o.type != "adam" for o in optimizers):
        raise ValueError("the peer comparison uses Adam")
    return dense


def time_steps(step, n, size, *, epochs, warmup, batches=None, wait=lambda: None):
    """Median seconds per epoch of `step(idx)` over a fresh permutation of `n` samples in batches of `size`, as
    the trainer's loop; `batches` times only that many per epoch (and scales up). The warm-up also steps the short
    last batch once, so that a peer which compiles per batch shape (JAX) does so before the clock starts; `wait()`
    blocks until the steps dispatched have run, before the clock stops."""
    starts = list(range(0, n, size))
    if warmup:
        for i in range(warmup):
            s = starts[i % len(starts)]
            step(np.arange(s, min(s + size, n)))
        step(np.arange(starts[-1], n))
        wait()
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        order = rng.permutation(n)
        todo = starts if batches is None else starts[:batches]
        began = time.perf_counter()
        for start in todo:
            step(order[start:start + size])
        wait()
        seconds.append((time.perf_counter() - began) * len(starts) / len(todo))
    return dict(seconds=float(np.median(seconds)), epochs=[round(s, 4) for s in seconds])
