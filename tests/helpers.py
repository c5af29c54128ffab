"""Small helpers shared by several test files."""

import signal
from pathlib import Path

import numpy as np


def stop_at(stop, epoch, done):
    """Callbacks that request a stop once batch `done` (counted across passes) of `epoch` has been trained."""
    current = [1]

    def on_epoch(record):
        current[0] = record["epoch"] + 1

    def on_batch(d, total):
        if (current[0], d) == (epoch, done):
            stop.request(signal.SIGTERM)
    return {"on_epoch": on_epoch, "on_batch": on_batch}


def only_run(root):
    """The one run directory under `root`."""
    (run,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return run


# Where a unit's value, or its (surrogate) derivative, jumps (localnet/backends/numpy/activations.py).
JUMPS = {"step": {"value": (0.0,), "derivative": (-1.0, 1.0)}, "relu": {"value": (), "derivative": (0.0,)}}


def near_a_jump(act, inputs, weights, bias=None, derivative=False):
    """Whether a pre-activation `inputs @ weights + bias` lies within rounding distance of a point where `act`'s
    value (with `derivative`, also its derivative) jumps. Two correct kernels that sum in different orders may land
    on opposite sides of such a point (a step unit then differs by 2), so a comparison there tests nothing; kernel
    tests `assume` such draws away. An exact sum (all terms but one zero) is never near: both sides get it exactly."""
    points = JUMPS.get(act, {}).get("value", ()) + (JUMPS.get(act, {}).get("derivative", ()) if derivative else ())
    if not points:
        return False
    dtype = np.result_type(inputs, weights)
    x, w = np.asarray(inputs, np.float64), np.asarray(weights, np.float64)
    b = 0.0 if bias is None else np.asarray(bias, np.float64)
    a = x @ w + b
    size = np.abs(x) @ np.abs(w)
    slack = 2 * (x.shape[1] + 2) * np.finfo(dtype).eps * (size + np.where(size > 0, np.abs(b), 0))
    return any(bool(np.any(np.abs(a - p) < slack)) for p in points)
