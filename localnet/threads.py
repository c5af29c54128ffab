"""How a process spends its cores: layer jobs in two threads, each with its own share of the BLAS threads.

Why not leave it to BLAS: at this project's shapes a product is too small to split well. On the 2-core machines
(float32, 128x256 @ 256x256 in a Numba kernel, while other jobs shared the machine) OpenBLAS gave ~97 GFLOP/s with
2 threads, ~148 with 1, and ~270 for two such products in two threads at once, 1 BLAS thread each; `localnet bench`
measures the same three layouts at the benchmarked net's shapes. A DTP step has two streams of work that no message
orders against each other (the forward/target chain; each layer's feedback training and weight-gradient product
beside it), so the local engine runs them in two threads (`localnet/engines/local.py`), and BLAS gets the cores
left over per thread.

`configure` sets this for the whole process (BLAS limits are process-wide, through threadpoolctl); `workers`
configures the default on first use: `$LOCALNET_THREADS`, else every core this process may run on.
"""

from __future__ import annotations

import os

from .errors import LocalnetError

MAX_WORKERS = 2  # the two chains of a step; more threads would wait on messages

_workers = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(threads: int | None = None) -> tuple[int, int]:
    """Use `threads` cores (default: `$LOCALNET_THREADS`, else all available): returns (workers, BLAS threads
    per worker). Engines built afterwards use `workers` threads; BLAS is limited for the whole process."""
    global _workers
    if threads is None:
        text = os.environ.get("LOCALNET_THREADS", "")
        try:
            threads = int(text) if text else available_cores()
        except ValueError:
            raise LocalnetError(f"LOCALNET_THREADS={text!r}: expected a whole number of threads ≥ 1") from None
    if threads < 1:
        raise LocalnetError(f"threads: expected a whole number ≥ 1, found {threads}")
    workers = min(MAX_WORKERS, threads)
    blas = max(1, threads // workers)
    limit_blas(blas)
    _workers = workers
    return workers, blas


def limit_blas(threads: int | None):
    """Limit every loaded BLAS to `threads` (None: no limit); for the whole process, or until the end of a `with`
    block when used as one. SciPy's BLAS, which numba kernels call, is loaded first: a limit misses libraries
    loaded after it (and MPI ranks or sweep workers would then oversubscribe the cores)."""
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api="blas")


def workers() -> int:
    """The number of threads an engine built now runs layer jobs in."""
    if _workers is None:
        configure()
    return _workers


def layout() -> dict:
    """{workers, blas}: what a run's bit-for-bit repeatability depends on besides the spec and seed (OpenBLAS's
    rounding may change with its thread count). `blas` lists the thread counts of every BLAS loaded."""
    from threadpoolctl import threadpool_info
    n = workers()
    return {"workers": n, "blas": sorted({i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"})}
