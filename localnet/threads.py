"""How a process spends its cores: per engine, either one thread with BLAS on every core, or layer jobs in two
threads with the cores shared out between their BLAS calls.

Why both: at this project's shapes a product is too small to split well across cores, but a step is a chain of
them. `localnet bench` times a DTP step's products alone at the Fashion-MNIST net's shapes (2 cores, quiet): 1.18 s
per epoch in one thread with BLAS on both cores, 1.66 s with BLAS on one, 0.96 s as two streams in two threads with
one BLAS thread each. Two threads pay off when much of a step is work no message waits for: each layer's feedback
training, whose first gradient can be taken as soon as the layer's forward pass is done and whose rest starts as
soon as the layer has sent its target down (DTP, TP, L-DRL; DDTP-linear's only after its target). They do not for
backprop, whose work is the chain itself, nor for DTP-DRL, whose feedback training reads every feedback map above;
those keep one thread and the faster multi-threaded BLAS — except where a layer family's products are too small to
split (`products_split`, a conv block's one-sample products): there weight gradients beside the chain pay more.
Seconds per epoch of the Fashion-MNIST 784-256x5-10 net (numba on SciPy's OpenBLAS, 2 cores, quiet; `localnet bench SPEC --backend numba`, which times both layouts;
with MKL, localnet/blas.py, DTP takes 1.62 and 1.49 s, backprop 0.75 and 1.09 s, L-DRL 9.60 and 6.88 s, DDTP 4.03 and
3.74 s: there one thread's kernels also split their element-wise passes across its cores,
localnet/backends/numba/cores.py):

| spec | 1 thread, BLAS on 2 cores | 2 threads, BLAS on 1 each |
|---|---|---|
| fashion-mnist-dtp | 2.07 s | 1.70 s |
| fashion-mnist-ldrl (5 feedback iterations) | 11.47 s | 7.42 s |
| fashion-mnist-bp | 1.05 s | 1.39 s |
| fashion-mnist-ddtp-linear (with its extra feedback pass) | 4.77 s | 4.10 s |

`configure` says how many cores the process may use (default `$LOCALNET_THREADS`, else every core it may run on);
each engine picks its layout from that and sets BLAS to it at each phase (`set_blas`, a few microseconds).
"""

from __future__ import annotations

import os

from .errors import LocalnetError

_cores = None
_blas = None  # threadpoolctl's controllers of the loaded BLAS libraries, once SciPy's is loaded
_current = None


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(threads: int | None = None) -> int:
    """Let this process use `threads` cores (default: `$LOCALNET_THREADS`, else all available); returns it.
    Engines built afterwards lay their work out on that many."""
    global _cores
    if threads is None:
        text = os.environ.get("LOCALNET_THREADS", "")
        try:
            threads = int(text) if text else _available_cores()
        except ValueError:
            raise LocalnetError(f"LOCALNET_THREADS={text!r}: expected a whole number of threads ≥ 1") from None
    if threads < 1:
        raise LocalnetError(f"threads: expected a whole number ≥ 1, found {threads}")
    _cores = threads
    return threads


def cores() -> int:
    """The cores this process may use (configured on first use)."""
    return configure() if _cores is None else _cores


def layout(parallel: bool, n: int | None = None) -> tuple[int, int]:
    """(threads for layer jobs, BLAS threads per job) for an engine on `n` cores (default: `cores()`): two job
    threads only when it has work to run beside its chain of messages (`parallel`) and two cores to run it on."""
    n = cores() if n is None else n
    workers = 2 if parallel and n >= 2 else 1
    return workers, n // workers


def _controllers():
    """threadpoolctl's controllers of every loaded BLAS and of the OpenMP runtime MKL threads on (Intel's): with one
    BLAS thread per job, an OpenMP team left at two would keep a thread spinning beside the job threads."""
    global _blas
    if _blas is None:
        from . import blas
        blas.select()  # the numba kernels' BLAS (SciPy's OpenBLAS, or MKL) must be loaded first
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas", prefix="libiomp")
    return _blas


def set_blas(threads: int | None):
    """Give every loaded BLAS `threads` threads, for the whole process, if it does not have them already (None:
    leave them as they are). Engines call it at each phase, so that each runs with its own layout."""
    global _current
    if threads is None or threads == _current:
        return
    for lib in _controllers().lib_controllers:
        lib.set_num_threads(threads)
    _current = threads


def job_cores() -> int:
    """The cores each job has now, as `set_blas` gave them to BLAS (1 under `limit_blas`): where it is more than one
    (a one-thread layout), the numba kernels split their element-wise passes into that many parts too."""
    return _current or 1


def limit_blas(threads: int | None):
    """A `with` block in which every loaded BLAS has `threads` threads (None: no limit), SciPy's included: MPI
    ranks and the bench's measurements, which must not oversubscribe the cores."""
    global _current
    _current = None  # the block changes them behind `set_blas`'s back
    return _controllers().limit(limits=threads)


def blas_threads() -> list[int]:
    """The thread counts of the loaded BLAS libraries, as they are now."""
    return sorted({lib.num_threads for lib in _controllers().lib_controllers})
