"""`localnet bench`: how fast each backend trains a net, against what the machine could do at best.

One process, side by side:
- the machine's measured float32 GEMM rate, and the floor it sets for the benchmarked net: the seconds per epoch
  its matrix products alone would take at that rate (and, measured, at the net's own matrix shapes);
- seconds per training epoch for every backend that imports (numpy reference, numba, cuda on a real GPU; numba
  also in the engine layout it does not pick for the spec, one thread or two (localnet/threads.py)) and, when
  PyTorch or JAX is installed, for a straightforward implementation of the same step in it (localnet/peers/); each
  against the floor and against the peers; the rule's spec (DTP by default) and backprop on the same net;
- a per-phase breakdown (data, forward, targets, feedback training, updates), peak memory, a size sweep (batch,
  width, depth) and start-up to the first batch in a fresh process (first run compiling, then with the cache warm);
- on a real GPU (backend cuda imports, not under the simulator): the FLOP rate of the cuda backend's own matrix
  product kernel and seconds per epoch of a wide net (hidden layers 4096 wide, batch 1024), against PyTorch on the
  GPU when it sees one; without a GPU the report says "cuda: no GPU".

Epochs are timed on the real data when they are on disk (never downloaded here), else on random data of the same
shape; each epoch is exactly the trainer's loop (`training._passes`, a fresh permutation, `x[idx]` gathers,
`net.looks_finite()` after each step), after warm-up batches, and the median of the epochs is reported.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from .plugins import load as load_plugins, option as plugin_option

SPECS = Path(__file__).resolve().parent.parent / "specs"
DEFAULT_SPEC = "fashion-mnist-dtp.yaml"
DEFAULT_BP_SPEC = "fashion-mnist-bp.yaml"
QUIET_S = 0.3  # pause between measurements that use different BLAS libraries: their idle threads spin ~0.1 s


# -------------------------------------------------------------------------------------------------------------
# Specs and data
# -------------------------------------------------------------------------------------------------------------
def _spec_path(name):
    for base in (Path.cwd() / "specs", SPECS):
        if (base / name).is_file():
            return base / name
    return None


def _load(source, backend, overrides=()):
    from .spec import load_spec
    return load_spec(source, [*overrides, f"backend={backend}", "data.download=false"])


def _bp_twin(spec_path):
    """Backprop on the same net: `<name>-bp.yaml` beside `<name>-<rule>.yaml` where it exists, else the default."""
    stem, _, _ = Path(spec_path).stem.rpartition("-")
    twin = Path(spec_path).with_name(f"{stem}-bp.yaml") if stem else None
    return twin if twin is not None and twin.is_file() else _spec_path(DEFAULT_BP_SPEC)


def _sample_shape(spec, x):
    """The per-sample shape the spec's data set has (a conv net needs C×H×W), for x kept flat as (N, features)."""
    import math

    from .data import sample_shape
    shape = sample_shape(spec.data)
    return shape if math.prod(shape) == x.shape[1] else x.shape[1]


def _layer_text(layer):
    """A layer in a few characters: its width, `<channels>c<kernel>` for a conv block, or its type."""
    if layer.size is not None:
        return str(layer.size)
    if layer.type == "conv2d":
        return f"{layer.channels}c{layer.kernel}" + ({"max": "m", "avg": "a"}.get(layer.pool, ""))
    return layer.type


def _as_data(spec):
    from .spec import to_data
    return copy.deepcopy(to_data(spec))


def _dataset(spec):
    """(x, y, n_classes, description): the spec's training split if it is on disk, else random data of its shape."""
    from .data import dataset_shape
    from .errors import LocalnetError
    from .training import load_data
    try:
        data = load_data(spec)
        return data.train.x, data.train.y, data.n_classes, f"{spec.data.name} ({len(data.train.x)} training samples)"
    except LocalnetError:
        n_features, n_classes = dataset_shape(spec.data)
        n = 55_000 if spec.data.name in ("mnist", "fashion-mnist", "kmnist") else 50_000
        rng = np.random.default_rng(0)
        x = rng.random((n, n_features), dtype=np.float32).astype(spec.dtype, copy=False)
        return x, rng.integers(0, n_classes, n), n_classes, f"random data of {spec.data.name}'s shape ({n} samples)"


def _backends():
    from .backends import BACKENDS
    from .errors import LocalnetError
    out = {}
    for name, module in BACKENDS.items():
        try:
            module = importlib.import_module(module)
        except (ImportError, LocalnetError):  # (cuda: numba-cuda missing, or no GPU)
            continue
        if not getattr(module, "SIMULATED", False):  # the CUDA simulator is for tests, not for timing
            out[name] = module
    return out


def _splits():
    """Whether the numba kernels split element-wise passes across a one-thread layout's cores in this process."""
    from .backends.numba.cores import splits
    return splits()


# -------------------------------------------------------------------------------------------------------------
# FLOPs and the floor
# -------------------------------------------------------------------------------------------------------------
def step_gemms(net, batch):
    """The matrix products (m, k, n) of one training step of `net` on `batch` samples, as the kernels do them
    (each layer's `products`), or None where a layer's work is not matrix products."""
    out = []
    for layer in net.layers.values():
        products = layer.products(batch)
        if products is None:
            return None
        out += products
    return out


def flops(gemms):
    return sum(2 * m * k * n for m, k, n in gemms)


def measure_gemm_rate(size=2048, repeats=5):
    """Best-of float32 GEMM rate (GFLOP/s) of numpy's BLAS on square matrices: the machine's practical peak."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    c = np.empty_like(a)
    np.dot(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.dot(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def measure_gemms_at_shapes(gemms, dtype, backends, seconds=1.0):
    """Seconds for one step's matrix products through the BLAS the fastest CPU backend uses, in three layouts:
    in sequence with BLAS on every core (`blas_all`) or on one (`blas_1`), and as two sequences in two threads at
    once, one BLAS thread each, per step (`two_workers`: what the local engine's layer jobs can reach)."""
    import threading

    from .threads import cores, limit_blas
    rng = np.random.default_rng(0)

    def operands():
        return [(rng.random((m, k), dtype=np.float32).astype(dtype),
                 rng.random((k, n), dtype=np.float32).astype(dtype), np.empty((m, n), dtype)) for m, k, n in gemms]
    dot = _numba_dot() if "numba" in backends else (lambda a, b, c: np.dot(a, b, out=c))
    if "numba" in backends:
        from .blas import select
        which = "numba (MKL)" if select() == "mkl" else "numba (SciPy's OpenBLAS)"
    else:
        which = "numpy's BLAS"
    ops = [operands(), operands()]

    def once(k=0):
        for a, b, c in ops[k]:
            dot(a, b, c)

    def timed(run):
        for _ in range(3):
            run(3)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or reps < 5:
            run(5)
            reps += 5
        return (time.perf_counter() - t0) / reps

    def serial(n):
        for _ in range(n):
            once()

    def two(n):
        threads = [threading.Thread(target=lambda k=k: [once(k) for _ in range(n)]) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    layouts = {}
    with limit_blas(cores()):
        layouts["blas_all"] = timed(serial)
    with limit_blas(1):
        layouts["blas_1"] = timed(serial)
        layouts["two_workers"] = timed(two) / 2
    return layouts, which


def _numba_dot():
    from numba import njit

    @njit(nogil=True)
    def dot(a, b, c):
        np.dot(a, b, c)
    return dot


# -------------------------------------------------------------------------------------------------------------
# Memory and other load on the machine
# -------------------------------------------------------------------------------------------------------------
class LoadMeter:
    """The share of the machine's CPU time that other processes used while a measurement ran (Linux; None
    elsewhere): timings taken while the machine was busy with something else are not worth much."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system irq softirq steal
        tick = os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy / tick, t.user + t.system, time.perf_counter()

    def other(self):
        end = self._read()
        if self.start is None or end is None:
            return None
        wall = end[2] - self.start[2]
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else None

def _reset_peak_rss():
    """Reset the kernel's high-water mark of this process's resident memory (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _state_mib(net):
    """MiB of every layer's parameters and optimiser state (what the layer protocol calls its owned arrays)."""
    return sum(a.nbytes for layer in net.layers.values() for a in layer.owned_arrays().values()) / 2**20


# -------------------------------------------------------------------------------------------------------------
# Timing the library's own training step
# -------------------------------------------------------------------------------------------------------------
def time_epochs(spec, x, y, n_classes, *, epochs, warmup, batches=None, workers=None, blas=None, split=True):
    """Median seconds per epoch of the trainer's loop; `batches` times only that many per epoch (and scales up).
    `workers`, `blas`: the local engine's job threads and BLAS threads per job, instead of the layout it picks;
    `split=False`: the numba kernels' element-wise passes on one core (localnet/backends/numba/cores.py)."""
    if not split:
        from .backends.numba.cores import unsplit
        with unsplit():
            return time_epochs(spec, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches, workers=workers,
                               blas=blas)
    if workers is not None:
        from .engines import LocalEngine, using
        with using(lambda graph, nodes: LocalEngine(graph, nodes, workers=workers, blas=blas)):
            return time_epochs(spec, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches)
    from .network import build
    from .training import DATA_ORDER_STREAM, _passes
    t0 = time.perf_counter()
    net = build(spec, n_features=_sample_shape(spec, x), n_classes=n_classes)
    passes = _passes(spec, net)
    size = spec.train.batch_size
    n = len(x)
    starts = list(range(0, n, size))
    per_epoch = len(starts) * len(passes)
    first = None
    for i in range(warmup):  # compiles (or loads the cache) and warms caches and BLAS threads
        s = starts[i % len(starts)]
        for step in passes:
            step(x[s:s + size], y[s:s + size])
        if first is None:
            first = time.perf_counter() - t0
    rng = np.random.default_rng([spec.seed, DATA_ORDER_STREAM])
    seconds = []
    for _ in range(epochs):
        order = rng.permutation(n)
        todo = starts if batches is None else starts[:batches]
        began = time.perf_counter()
        for step in passes:
            for start in todo:
                idx = order[start:start + size]
                step(x[idx], y[idx])
                net.looks_finite()
        seconds.append((time.perf_counter() - began) * len(starts) / len(todo))
    return dict(seconds=float(np.median(seconds)), epochs=[round(s, 4) for s in seconds], first_step=first,
                state_mib=_state_mib(net), steps_per_epoch=per_epoch), net


def phase_breakdown(spec, x, y, n_classes, batches=150):
    """Seconds per epoch in each phase of `train_step`, timed phase by phase on `batches` batches."""
    from .network import build
    net = build(spec, n_features=_sample_shape(spec, x), n_classes=n_classes)
    eng = net.engine
    size = spec.train.batch_size
    n_batches = -(-len(x) // size)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(x))
    phases = dict(data=0.0, forward=0.0, targets=0.0, feedback=0.0, updates=0.0)

    def one(i, record):
        t0 = time.perf_counter()
        idx = order[(i % n_batches) * size:(i % n_batches) * size + size]
        xb, yb = net._batch(x[idx], y[idx])
        t1 = time.perf_counter()
        eng.forward(xb, yb, True)
        t2 = time.perf_counter()
        eng.backward()
        t3 = time.perf_counter()
        eng.train_feedback()
        t4 = time.perf_counter()
        eng.update()
        net.looks_finite()
        t5 = time.perf_counter()
        if record:
            for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                phases[k] += dt
    for i in range(10):
        one(i, False)
    for i in range(batches):
        one(i, True)
    return {k: v * n_batches / batches for k, v in phases.items()}


# -------------------------------------------------------------------------------------------------------------
# The peers: the same step in PyTorch and in JAX (localnet/peers/), each timed in a process of its own
# -------------------------------------------------------------------------------------------------------------
PEERS = {"pytorch": "torch", "jax": "jax"}  # each peer (localnet/peers/<name>.py) and the package it needs

PEER = """
import importlib, json, sys
import numpy as np
from localnet import bench, plugins
plugins.load(sys.argv[6:])
spec = bench._load(sys.argv[2], "numpy")
x, y, n_classes, _ = bench._dataset(spec)
x = np.ascontiguousarray(x, dtype=spec.dtype)
load = bench.LoadMeter()
try:
    peer = importlib.import_module("localnet.peers." + sys.argv[1])
    out = peer.time_epochs(spec, x, y, n_classes, epochs=int(sys.argv[3]), warmup=int(sys.argv[4]),
                           batches=None if sys.argv[5] == "all" else int(sys.argv[5]))
except ValueError as exc:
    out = {"error": str(exc)}
try:
    maps = open("/proc/self/maps").read()  # (Linux)
except OSError:
    maps = None
out.update(peak_rss_mib=bench._peak_rss_mib(), other_load=load.other(),
           localnet_openmp_loaded=None if maps is None else "libiomp" in maps)
print(json.dumps(out))
"""


def time_peer_in_own_process(peer, spec_path, *, epochs, warmup, batches=None, plugins=()):
    """`localnet.peers.<peer>.time_epochs` in a fresh process, as a user would run PyTorch or JAX: in the bench's
    own process PyTorch's OpenMP calls would bind to the Intel runtime localnet/blas.py loads for MKL, which
    measured up to 12 % slower for PyTorch after localnet's kernels had run. Each peer gets the cores localnet
    uses: PyTorch through `torch.set_num_threads`, XLA's CPU client through PJRT_NPROC, the size of the thread
    pool it creates at start-up (its default is every core; XLA_FLAGS are left as they are). ValueError if the
    step cannot be written in the peer."""
    from .threads import cores
    env = dict(os.environ, LOCALNET_THREADS=str(cores()), PJRT_NPROC=str(cores()))
    done = subprocess.run([sys.executable, "-c", PEER, peer, str(spec_path), str(epochs), str(warmup),
                           "all" if batches is None else str(batches), *plugins], env=env, capture_output=True,
                          text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise ValueError(out["error"])
    return out


# -------------------------------------------------------------------------------------------------------------
# The GPU (backend cuda, only on a real GPU)
# -------------------------------------------------------------------------------------------------------------
WIDE = 4096  # the wide net: every hidden layer this wide, batch WIDE_BATCH
WIDE_BATCH = 1024


def measure_cuda_gemm_rate(size=4096, repeats=5):
    """Best-of float32 rate (GFLOP/s) of the cuda backend's own matrix-product kernel on square matrices."""
    from numba import cuda

    from .backends.cuda import kernels
    rng = np.random.default_rng(0)
    a, b = (cuda.to_device(rng.random((size, size), dtype=np.float32)) for _ in range(2))
    c = cuda.device_array((size, size), np.float32)
    kernels.matmul(a, b, c)
    cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        kernels.matmul(a, b, c)
        cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def time_cuda(rules, x, y, n_classes, *, epochs, warmup, batches, torch):
    """Backend cuda on the wide net (every hidden layer WIDE units, batch WIDE_BATCH) for each rule, against
    the matrix-product kernel's measured rate and, when PyTorch sees the GPU, PyTorch on it (the benchmarked nets
    themselves are timed with the other backends)."""
    from numba import cuda
    from .network import build
    name = getattr(cuda.get_current_device(), "name", "the CUDA simulator")
    out = {"device": name.decode() if isinstance(name, bytes) else str(name), "gemm_gflops": measure_cuda_gemm_rate(),
           "rows": []}
    use_torch = False
    if torch:
        try:
            import torch as _torch
            use_torch = _torch.cuda.is_available()
        except ImportError:
            pass
    for rule, path in rules.items():
        base = _load(path, "cuda")
        wide = [f"network.layers.{layer.name}.size={WIDE}" for layer in base.network.layers[:-1]]
        s = _load(path, "cuda", [*wide, f"train.batch_size={WIDE_BATCH}"])
        timed, _ = time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches)
        gemm_s = flops(step_gemms(build(s, n_features=_sample_shape(s, x), n_classes=n_classes), WIDE_BATCH)) * \
            -(-len(x) // WIDE_BATCH) / (out["gemm_gflops"] * 1e9)
        row = dict(rule=rule, layers=[layer.size for layer in s.network.layers], batch_size=WIDE_BATCH,
                   seconds=timed["seconds"], vs_gemm_floor=timed["seconds"] / gemm_s)
        if use_torch:
            try:
                from .peers import pytorch
                row["pytorch_seconds"] = pytorch.time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup,
                                                             batches=batches, device="cuda")["seconds"]
            except ValueError as exc:
                row["pytorch_skipped"] = str(exc)
        out["rows"].append(row)
    return out


# -------------------------------------------------------------------------------------------------------------
# The size sweep and start-up
# -------------------------------------------------------------------------------------------------------------
def sweep_specs(spec):
    """(axis, value, spec): batch size, width and depth varied one at a time around the benchmarked net."""
    from .spec import load_spec
    base = _as_data(spec)
    hidden = [layer for layer in base["network"]["layers"][:-1]]
    width, depth, batch = hidden[0]["size"], len(hidden), base["train"]["batch_size"]
    out = []
    for b in sorted({max(1, batch // 4), batch, batch * 4}):
        d = copy.deepcopy(base)
        d["train"]["batch_size"] = b
        out.append(("batch", b, load_spec(d)))
    for w in sorted({max(1, width // 2), width, width * 2}):
        d = copy.deepcopy(base)
        for layer in d["network"]["layers"][:-1]:
            layer["size"] = w
        out.append(("width", w, load_spec(d)))
    for k in sorted({max(1, depth - 2), depth, depth + 2}):
        d = copy.deepcopy(base)
        layers = d["network"]["layers"]
        template = layers[0]
        d["network"]["layers"] = [dict(template, name=f"h{i + 1}") for i in range(k)] + [layers[-1]]
        out.append(("depth", k, load_spec(d)))
    return out


def time_samples(spec, x, y, n_classes, samples=8192, warmup=5):
    """Microseconds per training sample of the spec's step, and its matrix-product FLOPs per sample."""
    from .network import build
    net = build(spec, n_features=_sample_shape(spec, x), n_classes=n_classes)
    size = spec.train.batch_size
    steps = max(10, samples // size)
    n_batches = len(x) // size
    for i in range(warmup):
        net.train_step(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size])
    t0 = time.perf_counter()
    for i in range(steps):
        s = (i % n_batches) * size
        net.train_step(x[s:s + size], y[s:s + size])
    dt = (time.perf_counter() - t0) / (steps * size)
    return dt * 1e6, flops(step_gemms(net, size)) / size


STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import localnet
from localnet import plugins
from localnet.spec import load_spec
plugins.load(sys.argv[3:])
spec = load_spec(sys.argv[1], ["backend=" + sys.argv[2]])
net = localnet.build(spec)
x = np.random.default_rng(0).random((spec.train.batch_size, net.n_features), dtype=np.float32).astype(spec.dtype)
t1 = time.perf_counter()
net.train_step(x, np.zeros(len(x), np.int64))
t2 = time.perf_counter()
print(json.dumps({"import_build": t1 - t0, "first_step": t2 - t1}))
"""


def measure_startup(spec_path, backend, cold, plugins=()):
    """Seconds from process start to the end of the first batch, in fresh processes: the first with an empty Numba
    cache when `cold` (so it compiles), then again with that cache warm."""
    env = dict(os.environ)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="localnet-bench-numba-") as cache:
        if cold:
            env["NUMBA_CACHE_DIR"] = cache
        for label in ("first", "warm"):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", STARTUP, str(spec_path), backend, *plugins], env=env,
                                  capture_output=True, text=True, timeout=600, check=False)
            total = time.perf_counter() - t
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
            runs[label] = dict(json.loads(done.stdout.strip().splitlines()[-1]), total=total)
    return runs


# -------------------------------------------------------------------------------------------------------------
# The command
# -------------------------------------------------------------------------------------------------------------
def run_bench(spec_path=None, bp_spec_path=None, *, backends=None, epochs=3, warmup=20, batches=None,
              torch=True, jax=True, sweep=True, startup=True, cold=True, breakdown_batches=150, progress=None,
              plugins=()):
    """Everything `localnet bench` measures, as a JSON-ready dict; `torch`, `jax`: whether to time those peers
    (where installed); `plugins` (imported already, by the command) are imported again in the fresh processes
    that time the peers and start-up."""
    say = progress or (lambda msg: None)
    if batches is not None:  # a quick bench is quick everywhere
        breakdown_batches = min(breakdown_batches, batches)
    spec_path = Path(spec_path) if spec_path else _spec_path(DEFAULT_SPEC)
    if spec_path is None:
        raise click.UsageError(f"no spec given and specs/{DEFAULT_SPEC} not found")
    bp_spec_path = Path(bp_spec_path) if bp_spec_path else _bp_twin(spec_path)
    available = _backends()
    names = [b for b in (backends or available) if b in available]
    missing = [b for b in (backends or []) if b not in available]
    spec = _load(spec_path, names[0] if names else "numpy")
    x, y, n_classes, described = _dataset(spec)
    x = np.ascontiguousarray(x, dtype=spec.dtype)
    rules = {spec.rule.name: spec_path}
    if bp_spec_path is not None and spec.rule.name != "bp":
        rules["bp"] = bp_spec_path

    from .errors import LocalnetError
    from .network import build
    from .threads import cores
    report = {"machine": {"python": platform.python_version(), "numpy": np.__version__, "threads": cores(),
                          "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "net": {}, "floor": {}, "results": [], "breakdown": {}, "two_threads": {}, "split": {},
              "skipped": {}}
    for b in missing:
        report["skipped"][b] = "does not import here"
    if "cuda" not in available:
        report["skipped"]["cuda"] = "no GPU"
    say("measuring the float32 GEMM rate")
    peak = measure_gemm_rate()
    report["machine"]["gemm_gflops"] = peak
    time.sleep(QUIET_S)
    for rule, path in rules.items():
        s = _load(path, names[0] if names else "numpy")
        probe = build(s, n_features=_sample_shape(s, x), n_classes=n_classes)
        gemms = step_gemms(probe, s.train.batch_size)
        n_steps = -(-len(x) // s.train.batch_size)
        report["net"][rule] = {"spec": str(path), "layers": [_layer_text(layer) for layer in s.network.layers],
                               "batch_size": s.train.batch_size, "dtype": s.dtype, "steps_per_epoch": n_steps,
                               "mflop_per_sample": None if gemms is None else flops(gemms) / s.train.batch_size / 1e6}
        if gemms is None:  # conv blocks: their work is not a list of matrix products
            report["skipped"][f"floor {rule}"] = "the net has layers whose work is not matrix products (conv2d)"
            continue
        layouts, which = measure_gemms_at_shapes(gemms, np.dtype(s.dtype), names, 1.0 if batches is None else 0.2)
        report["floor"][rule] = {"peak_s": flops(gemms) * n_steps / (peak * 1e9),
                                 "gemm_at_shapes_s": min(layouts.values()) * n_steps, "gemm_at_shapes_blas": which,
                                 "layouts_s": {k: v * n_steps for k, v in layouts.items()}}
        time.sleep(QUIET_S)
    report["data"] = described

    for rule, path in rules.items():
        for name in names:
            s = _load(path, name)
            say(f"timing {name} {rule}")
            _reset_peak_rss()
            load = LoadMeter()
            timed, net = time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches)
            picked, timed_picked = net.engine.workers, timed["seconds"]
            report["results"].append(dict(backend=name, rule=rule, peak_rss_mib=_peak_rss_mib(), job_threads=picked,
                                          other_load=load.other(), **timed))
            if name == "numba" and cores() > 1:  # the layout the engine did not pick, for comparison
                other = 1 if picked > 1 else 2
                say(f"timing {name} {rule} in {other} thread(s)")
                load = LoadMeter()
                timed, _ = time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches,
                                       workers=other)
                report["results"].append(dict(backend=f"{name}, {other} thread{'s' if other > 1 else ''}",
                                              rule=rule, peak_rss_mib=_peak_rss_mib(), job_threads=other,
                                              other_load=load.other(), **timed))
                if picked > 1:  # the same work in one thread on one core: what the second core buys
                    say(f"timing {name} {rule} in 1 thread on 1 core")
                    load = LoadMeter()
                    serial, _ = time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches,
                                            workers=1, blas=1)
                    report["results"].append(dict(backend=f"{name}, 1 thread on 1 core", rule=rule,
                                                  peak_rss_mib=_peak_rss_mib(), job_threads=1,
                                                  other_load=load.other(), **serial))
                    report["two_threads"][rule] = {"one_core_s": serial["seconds"], "two_threads_s": timed_picked,
                                                   "speedup": serial["seconds"] / timed_picked}
                elif _splits():  # one thread: what splitting its element-wise passes across the cores buys
                    say(f"timing {name} {rule} with its element-wise passes on one core")
                    load = LoadMeter()
                    whole, _ = time_epochs(s, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches,
                                           split=False)
                    report["results"].append(dict(backend=f"{name}, passes not split", rule=rule,
                                                  peak_rss_mib=_peak_rss_mib(), job_threads=1,
                                                  other_load=load.other(), **whole))
                    report["split"][rule] = {"unsplit_s": whole["seconds"], "split_s": timed_picked,
                                             "speedup": whole["seconds"] / timed_picked}
            say(f"breakdown {name} {rule}")
            report["breakdown"].setdefault(name, {})[rule] = phase_breakdown(s, x, y, n_classes, breakdown_batches)
            time.sleep(QUIET_S)
        for peer, wanted in (("pytorch", torch), ("jax", jax)):
            if not wanted:
                continue
            if importlib.util.find_spec(PEERS[peer]) is None:
                report["skipped"][peer] = "not installed"
                continue
            say(f"timing {peer} {rule} (in a process of its own)")
            try:
                timed = time_peer_in_own_process(peer, path, epochs=epochs, warmup=warmup, batches=batches,
                                                 plugins=plugins)
            except (ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
                report["skipped"][f"{peer} {rule}"] = str(exc)
                continue
            report["results"].append(dict(backend=peer, rule=rule, **timed))
            time.sleep(QUIET_S)
    peer_s = {(r["backend"], r["rule"]): r["seconds"] for r in report["results"] if r["backend"] in PEERS}
    bp_s = {r["backend"]: r["seconds"] for r in report["results"] if r["rule"] == "bp"}
    for r in report["results"]:
        fl = report["floor"].get(r["rule"])
        if fl is not None:
            r["vs_peak_floor"] = r["seconds"] / fl["peak_s"]
            r["vs_gemm_at_shapes"] = r["seconds"] / fl["gemm_at_shapes_s"]
        for peer in PEERS:
            if (peer, r["rule"]) in peer_s:
                r[f"vs_{peer}"] = r["seconds"] / peer_s[peer, r["rule"]]
        if r["backend"] in bp_s:  # what the rule costs against backprop on the same net and backend
            r["vs_bp"] = r["seconds"] / bp_s[r["backend"]]

    if "cuda" in names:
        say("the GPU: kernel FLOP rate and the wide net")
        report["cuda"] = time_cuda(rules, x, y, n_classes, epochs=epochs, warmup=warmup, batches=batches,
                                   torch=torch)

    if sweep and names and any(layer.type != "dense" for layer in spec.network.layers):
        report["skipped"]["sweep"] = "the size sweep varies dense widths and depth; this net has other layers"
    elif sweep and names:
        fastest = min((r for r in report["results"] if r["backend"] in names and r["rule"] == spec.rule.name),
                      key=lambda r: r["seconds"])["backend"]
        report["sweep"] = {"backend": fastest, "rule": spec.rule.name, "rows": []}
        try:
            variants = sweep_specs(_load(spec_path, fastest))
        except LocalnetError as exc:  # a spec with explicit channels cannot simply be made deeper
            variants = []
            report["skipped"]["sweep"] = str(exc)
        for axis, value, s in variants:
            say(f"sweep {axis}={value}")
            us, fl_per_sample = time_samples(s, x, y, n_classes)
            report["sweep"]["rows"].append(dict(axis=axis, value=value, us_per_sample=us,
                                                mflop_per_sample=fl_per_sample / 1e6,
                                                gflops=fl_per_sample / us / 1e3,
                                                vs_peak=fl_per_sample / us / 1e3 / peak))
    if startup and "numba" in names:
        say("start-up in fresh processes")
        try:
            report["startup"] = {"backend": "numba", "cold_cache": cold,
                                 **measure_startup(spec_path, "numba", cold, plugins)}
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            report["skipped"]["startup"] = str(exc)
    return report


def render(report, console):
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]machine[/]: {m['cpus']} CPUs, {m['processor']}; float32 GEMM (numpy, 2048³) "
                  f"[bold]{m['gemm_gflops']:.0f} GFLOP/s[/]; data: {report['data']}", soft_wrap=True)
    floor = Table(title="the floor: matrix products alone, per epoch")
    for col in ("rule", "net", "MFLOP / sample", "at the GEMM rate (s)", "at the net's shapes (s): BLAS on all "
                "cores | BLAS on 1 | 2 threads × 1", "BLAS"):
        floor.add_column(col)
    for rule, f in report["floor"].items():
        n = report["net"][rule]
        lay = f["layouts_s"]
        floor.add_row(rule, f"{'-'.join(map(str, n['layers']))} ×{n['batch_size']} {n['dtype']}",
                      f"{n['mflop_per_sample']:.2f}", f"{f['peak_s']:.2f}",
                      f"{lay['blas_all']:.2f} | {lay['blas_1']:.2f} | {lay['two_workers']:.2f}", f["gemm_at_shapes_blas"])
    if report["floor"]:
        console.print(floor)
    for rule, n in report["net"].items():
        if rule not in report["floor"]:
            console.print(f"net ({rule}): {'-'.join(map(str, n['layers']))} ×{n['batch_size']} {n['dtype']}")
    console.print(f"cores used: {report['machine']['threads']} (`localnet --threads N`); the results' `job "
                  "threads` column: the local engine's layout (localnet/threads.py)")
    res = Table(title="seconds per training epoch (median)")
    for col in ("backend", "rule", "job threads", "s / epoch", "× floor", "× GEMM at shapes", "× PyTorch", "× JAX",
                "× bp", "peak RSS MiB", "first step s", "other load", "epochs"):
        res.add_column(col)

    def ratio(r, key):
        return f"{r[key]:.2f}" if key in r else "-"
    for r in report["results"]:
        res.add_row(r["backend"], r["rule"], str(r.get("job_threads", "-")), f"{r['seconds']:.2f}",
                    ratio(r, "vs_peak_floor"), ratio(r, "vs_gemm_at_shapes"), ratio(r, "vs_pytorch"),
                    ratio(r, "vs_jax"),
                    ratio(r, "vs_bp") if r["rule"] != "bp" else "-",
                    f"{r['peak_rss_mib']:.0f}", f"{r['first_step']:.2f}" if r.get("first_step") else "-",
                    f"{100 * r['other_load']:.0f}%" if r.get("other_load") is not None else "-",
                    " ".join(f"{s:.2f}" for s in r["epochs"]))
    console.print(res)
    for rule, t in report.get("two_threads", {}).items():
        console.print(f"{rule}: two job threads do an epoch's work in {t['two_threads_s']:.2f} s, which one thread on "
                      f"one core does in {t['one_core_s']:.2f} s: [bold]{t['speedup']:.2f}×[/] (2× would be "
                      "perfect; the rest is the chain no second thread can share, cores slowing each other, and "
                      "threads waiting)", soft_wrap=True)
    for rule, t in report.get("split", {}).items():
        console.print(f"{rule}: in one job thread, splitting the element-wise passes across its "
                      f"{report['machine']['threads']} cores (the forward pass's bias and non-linearity, the "
                      f"optimiser steps) takes an epoch from {t['unsplit_s']:.2f} s to {t['split_s']:.2f} s: "
                      f"[bold]{t['speedup']:.2f}×[/]", soft_wrap=True)
    busy = [r for r in report["results"] if (r.get("other_load") or 0) > 0.05]
    if busy:
        console.print(f"[yellow]other processes used the CPU during {len(busy)} measurement(s) (the 'other load' "
                      f"column): those timings are pessimistic; run again on a quiet machine[/]", soft_wrap=True)
    if report["breakdown"]:
        bd = Table(title="where an epoch goes (s / epoch, phase by phase)")
        bd.add_column("backend")
        bd.add_column("rule")
        keys = ("data", "forward", "targets", "feedback", "updates")
        for k in keys + ("total",):
            bd.add_column(k)
        for name, rules in report["breakdown"].items():
            for rule, ph in rules.items():
                total = sum(ph.values())
                bd.add_row(name, rule, *(f"{ph[k]:.2f} ({100 * ph[k] / total:.0f}%)" for k in keys), f"{total:.2f}")
        console.print(bd)
    if report.get("sweep"):
        sw = report["sweep"]
        t = Table(title=f"size sweep ({sw['backend']}, {sw['rule']}): one axis at a time around the net")
        for col in ("axis", "value", "µs / sample", "MFLOP / sample", "GFLOP/s", "of GEMM peak"):
            t.add_column(col)
        for r in sw["rows"]:
            t.add_row(r["axis"], str(r["value"]), f"{r['us_per_sample']:.1f}", f"{r['mflop_per_sample']:.2f}",
                      f"{r['gflops']:.0f}", f"{100 * r['vs_peak']:.0f}%")
        console.print(t)
    if report.get("cuda"):
        g = report["cuda"]
        t = Table(title=f"cuda on {g['device']} (its matrix-product kernel: {g['gemm_gflops']:.0f} GFLOP/s, "
                        f"float32 4096³): the wide net")
        for col in ("rule", "net", "s / epoch", "× its GEMM floor", "PyTorch s / epoch"):
            t.add_column(col)
        for r in g["rows"]:
            t.add_row(r["rule"], f"{'-'.join(map(str, r['layers']))} ×{r['batch_size']}", f"{r['seconds']:.2f}",
                      f"{r['vs_gemm_floor']:.2f}", f"{r['pytorch_seconds']:.2f}" if "pytorch_seconds" in r else "-")
        console.print(t)
    if report.get("startup"):
        s = report["startup"]
        first, warm = s["first"], s["warm"]
        console.print(f"[bold]start-up to the first batch[/] ({s['backend']}, fresh process): "
                      f"{'first run, empty cache' if s['cold_cache'] else 'first run'} {first['total']:.2f} s "
                      f"(first step {first['first_step']:.2f} s); cache warm {warm['total']:.2f} s "
                      f"(first step {warm['first_step']:.2f} s)", soft_wrap=True)
    for what, why in report["skipped"].items():
        console.print(f"skipped {what}: {why}", soft_wrap=True)


@click.command("bench")
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--bp-spec", "bp_spec_path", type=click.Path(dir_okay=False, exists=True),
              help="Backprop on the same net (default: specs/fashion-mnist-bp.yaml).")
@click.option("--backend", "backends", multiple=True, help="Only these backends (repeatable).")
@click.option("--epochs", default=3, show_default=True, help="Timed epochs per backend (the median is reported).")
@click.option("--warmup", default=20, show_default=True, help="Untimed batches before the timed epochs.")
@click.option("--batches", type=int, default=None, help="Time only this many batches per epoch, scaled up (quick).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch comparison.")
@click.option("--no-jax", is_flag=True, help="Skip the JAX comparison.")
@click.option("--no-sweep", is_flag=True, help="Skip the size sweep.")
@click.option("--no-startup", is_flag=True, help="Skip start-up timing in fresh processes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option("--engine", type=click.Choice(["local", "mpi"]), default="local", show_default=True,
              help="mpi: under `mpiexec -n K`, the MPI engine (plain and pipelined) against the local engine.")
@click.option("--steps", default=200, show_default=True, help="With --engine mpi: timed steps per repeat.")
@click.option("--repeats", default=3, show_default=True, help="With --engine mpi: interleaved repeats (median).")
@click.option("--placement", metavar="LAYER=RANK,...", help="With --engine mpi: the rank of every layer.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="With --engine mpi: spec overrides.")
@plugin_option
def bench(spec_path, bp_spec_path, backends, epochs, warmup, batches, no_torch, no_jax, no_sweep, no_startup,
          as_json, engine="local", steps=200, repeats=3, placement=None, overrides=(), plugins=()):
    """Time every backend (and PyTorch and JAX, when installed) on SPEC (default specs/fashion-mnist-dtp.yaml) and
    backprop on the same net, against the machine's float32 GEMM floor."""
    from .cli import _fail_cleanly, make_console
    err = make_console(stderr=True)
    _fail_cleanly(load_plugins)(plugins)  # every MPI rank runs this command, so this loads them on each
    if engine == "mpi":
        return _bench_mpi(spec_path, backends, warmup, steps, repeats, placement, overrides, as_json)
    report = run_bench(spec_path, bp_spec_path, backends=list(backends) or None, epochs=epochs, warmup=warmup,
                       batches=batches, torch=not no_torch, jax=not no_jax, sweep=not no_sweep,
                       startup=not no_startup, plugins=plugins,
                       progress=None if as_json else (lambda msg: err.print(f"[dim]{msg}…[/]")))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render(report, make_console())


def _bench_mpi(spec_path, backends, warmup, steps, repeats, placement, overrides, as_json):
    """`localnet bench --engine mpi`: rank 0 prints the report (engines/mpi.py, `bench`); other ranks nothing."""
    from rich.table import Table

    from .cli import make_console
    from .engines import mpi
    if len(backends) > 1:
        raise click.UsageError("--engine mpi times one backend: give at most one --backend")
    path = spec_path or _spec_path(DEFAULT_SPEC)
    if path is None:
        raise click.UsageError(f"no spec given and specs/{DEFAULT_SPEC} not found")
    report = mpi.bench(path, steps=steps, warmup=warmup, repeats=repeats, placement=placement,
                       overrides=overrides, backend=backends[0] if backends else None,
                       progress=lambda text: click.echo(text, err=True))
    if report is None:
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console = make_console()
    local = report["local"]["1 thread"]["seconds_per_step"]
    table = Table(title=f"{report['spec']}: seconds per training step (batch {report['batch']}, "
                        f"{report['backend']}; median of {report['repeats']} × {report['steps']} steps)")
    for col in ("engine", "setting", "s/step", "samples/s", "× local 1 thr.", "msgs/step", "kB/step",
                "waiting s/step by rank"):
        table.add_column(col)
    for engine_name in ("local", "mpi"):
        for what, r in report[engine_name].items():
            table.add_row(engine_name if engine_name == "local" else f"mpi, K = {report['ranks']}", what,
                          f"{r['seconds_per_step']:.4f}", f"{r['samples_per_second']:.0f}",
                          f"{local / r['seconds_per_step']:.2f}×",
                          f"{r['messages_per_step']:.0f}" if "messages_per_step" in r else "-",
                          f"{r['bytes_per_step'] / 1000:.0f}" if "bytes_per_step" in r else "-",
                          " ".join(f"{w:.4f}" for w in r.get("wait_seconds_per_step", ())) or "-")
    console.print(table)
    if report.get("placement"):
        console.print("placement: " + "; ".join(f"rank {k}: {', '.join(names)}"
                                                for k, names in enumerate(report["placement"])), soft_wrap=True)
        console.print("pipelined: late channels " + (", ".join(report["late_channels"]) or "none"), soft_wrap=True)
