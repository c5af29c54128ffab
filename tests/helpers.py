"""Small helpers shared by several test files."""

import gzip
import hashlib
import json
import signal
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


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


def reseal(checkpoint):
    """Record the SHA-256 of a checkpoint's files as they are now, as localnet would have had it written them so:
    what an attacker who edits a file and its checksums leaves, which reaches the checks behind the checksums
    (what a file says). The trainer file is rewritten only where it is a JSON object that records checksums."""
    checkpoint = Path(checkpoint)
    trainer = checkpoint / "trainer.json"
    try:
        data = json.loads(trainer.read_text())
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("sha256"), dict):
        data["sha256"] = {name: hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
                          for name in data["sha256"] if (checkpoint / name).exists()}
        trainer.write_text(json.dumps(data))
    pointer = checkpoint.parent / "latest.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()),
                                   "sha256": hashlib.sha256(trainer.read_bytes()).hexdigest()}))


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


# -- kernels against the numpy reference (test_numba_backend, test_cuda_backend) ----------------------------------
ACTS = ("linear", "tanh", "sigmoid", "relu", "elu", "step", "stochastic_binary")
DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=1e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def gen(seed):
    return np.random.Generator(np.random.PCG64(seed))


class Replay:
    """Stands in for a np.random.Generator: hands the reference the numbers the kernel drew."""

    def __init__(self, normals=None, uniforms=None):
        self.normals, self.uniforms = normals, uniforms

    def standard_normal(self, shape, dtype):
        assert self.normals.shape == tuple(shape) and self.normals.dtype == dtype
        return self.normals

    def random(self, shape, dtype):
        assert self.uniforms.shape == tuple(shape) and self.uniforms.dtype == dtype
        return self.uniforms


@st.composite
def arrays(draw, dtype, shape, lo=-2.0, hi=2.0):
    width = 32 if dtype == np.float32 else 64
    return draw(hnp.arrays(dtype, shape, elements=st.floats(lo, hi, width=width)))


@st.composite
def dense_case(draw, acts=ACTS, rows=9, n_in=12, n_out=12):
    """A batch x, weights W, b (or None), V, c (or None), and activations: shapes (up to the given sizes) and values
    both drawn."""
    dtype = draw(st.sampled_from(DTYPES))
    rows, n_in, n_out = draw(st.integers(1, rows)), draw(st.integers(1, n_in)), draw(st.integers(1, n_out))
    case = dict(dtype=dtype, act=draw(st.sampled_from(acts)), fb_act=draw(st.sampled_from(acts)),
                x=draw(arrays(dtype, (rows, n_in))), W=draw(arrays(dtype, (n_in, n_out), -1, 1)),
                V=draw(arrays(dtype, (n_out, n_in), -1, 1)),
                h=draw(arrays(dtype, (rows, n_out))), target=draw(arrays(dtype, (rows, n_out))),
                delta=draw(arrays(dtype, (rows, n_out))), seed=draw(st.integers(0, 2**32 - 1)))
    case["b"] = draw(st.one_of(st.none(), arrays(dtype, (n_out,))))
    case["c"] = draw(st.one_of(st.none(), arrays(dtype, (n_in,))))
    return case


IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array, dtype):
    """An IDX file's bytes (the MNIST format): magic, shape, big-endian data."""
    array = np.asarray(array, dtype=dtype)
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path, array, dtype="u1", gz=False):
    data = idx_bytes(array, dtype)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
