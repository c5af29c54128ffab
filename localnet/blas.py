"""Which BLAS the numba kernels' matrix products run on: SciPy's OpenBLAS, or Intel's MKL where it is installed.

Why: at this project's shapes (batch 128, widths 256–784) MKL's single-threaded sgemm does 200–215 GFLOP/s on the
2-core machines against OpenBLAS's 157–181 (1.18–1.28× per product), which made a numba DTP epoch 12 % shorter and a
backprop one 13 % (`localnet bench`, docs/performance.md; session 4, before the kernels split their element-wise
passes). MKL is an optional extra (`pip install -e ".[mkl]"`: Intel's `mkl` and `intel-openmp` wheels, about
260 MB, under the Intel Simplified Software License).

How: `np.dot` inside `@njit` calls BLAS through the function pointers SciPy exports in
`scipy.linalg.cython_blas.__pyx_capi__`, which Numba's helper library looks up the first time a product runs in the
process and keeps. `select` puts MKL's `sgemm`/`dgemm` (the same Fortran interface) in their place before that, so
the compiled kernels, cached or not, call MKL. It must therefore run before the first product of the process:
the numba backend calls it when it is imported, before any of its kernels runs. (Other Numba code that ran a
product in the same process before that would have fixed the pointers to OpenBLAS for good.)

Threads: the engines set MKL's thread count per phase through threadpoolctl, as OpenBLAS's. With intel-openmp
installed MKL threads through Intel's OpenMP runtime, and `select` sets `OMP_NUM_THREADS=1` when it is unset: an
OpenMP team left at two threads spins beside the engine's job threads (3.4–3.9 against 3.2–3.4 ms per DTP step).
Other OpenMP libraries that start later in the process then default to one thread too. `select` also loads that
runtime into the global namespace, so that Numba's OpenMP threading layer (built against GNU OpenMP, whose entry
points Intel's runtime provides) runs on MKL's threads, where the kernels' split element-wise passes pay
(localnet/backends/numba/cores.py); other libraries loaded later that call GNU OpenMP (PyTorch) run on it too, which
is why the bench times PyTorch in a process of its own.

`$LOCALNET_BLAS`: `auto` (default: MKL when installed), `mkl` (an error if it is not installed) or `openblas`.
Numbers differ between the two in their last bits (summation order), as between any two BLAS builds; each is
deterministic for a given thread count, and both change their bits with it. MKL's code path can also depend on
the arrays' memory alignment, so `select` sets `MKL_CBWR=AUTO,STRICT`, its strict conditional numerical
reproducibility, when unset (about 1 % slower on a DTP step). Intel documents strict mode as independent of the
thread count for ?gemm too, but on an AMD EPYC (2026-12-02) MKL 2026.2 rounded (11, 64)·(64, 12) and (9, 64)·(64, 12)
float32 products differently on one thread and on two under every strict branch tried (AUTO, AVX2, AVX512,
COMPATIBLE); so nothing here relies on it (docs/mpi.md). The provider is recorded in a run's `environment.json`.
"""

from __future__ import annotations

import ctypes
import os

from .errors import LocalnetError

CHOICES = ("auto", "mkl", "openblas")
PROVIDER = None  # "mkl" or "openblas" once `select` has run
OPENMP = False  # whether MKL threads on Intel's OpenMP runtime, loaded into the global namespace
_kept = []  # the capsules' names must outlive them


def _mkl_library():
    """The installed MKL runtime library's path, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        files = distribution("mkl").files or []
    except PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmkl_rt.so"):
            path = f.locate()
            if os.path.exists(path):
                return os.path.realpath(path)
    return None


def _swap_gemm(library):
    """Put `library`'s Fortran sgemm/dgemm where Numba looks up SciPy's."""
    import scipy.linalg.cython_blas as cython_blas
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
    api.PyCapsule_New.restype = ctypes.py_object
    api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    for fn in ("sgemm", "dgemm"):
        name = api.PyCapsule_GetName(cython_blas.__pyx_capi__[fn])  # the signature SciPy declares, checked on lookup
        _kept.append(name)
        address = ctypes.cast(getattr(library, fn + "_"), ctypes.c_void_p).value
        cython_blas.__pyx_capi__[fn] = api.PyCapsule_New(address, name, None)


def select(choice=None) -> str:
    """Choose the BLAS of the numba kernels (once per process; later calls return the first choice)."""
    global PROVIDER, OPENMP
    if PROVIDER is not None:
        return PROVIDER
    choice = (choice or os.environ.get("LOCALNET_BLAS") or "auto").lower()
    if choice not in CHOICES:
        raise LocalnetError(f"LOCALNET_BLAS={choice!r}: expected one of {', '.join(CHOICES)}")
    path = _mkl_library() if choice != "openblas" else None
    if choice == "mkl" and path is None:
        raise LocalnetError("LOCALNET_BLAS=mkl, but MKL is not installed: pip install -e \".[mkl]\"")
    if path is None:
        import scipy.linalg.cython_blas  # noqa: F401  loads SciPy's OpenBLAS now, so that threadpoolctl, whose
        # controllers localnet/threads.py builds once, can set its threads: else MPI ranks left it on every core
        PROVIDER = "openblas"
        return PROVIDER
    # Intel's OpenMP threads when intel-openmp is there (several BLAS threads for a one-thread engine layout), else
    # MKL's sequential layer; OpenMP's own default at one thread (see the module notes)
    openmp = os.path.join(os.path.dirname(path), "libiomp5.so")
    threaded = os.path.exists(openmp)
    if threaded:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        # in the global namespace, so that Numba's OpenMP threading layer, loaded later, runs on Intel's runtime (it
        # provides GNU OpenMP's entry points) and shares MKL's threads: with two runtimes each keeps a thread spinning
        # and the kernels that split their element-wise passes get several times slower (backends/numba/cores.py)
        ctypes.CDLL(openmp, mode=ctypes.RTLD_GLOBAL)
        OPENMP = True
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # the same bits run after run, whatever the arrays' alignment
    library = ctypes.CDLL(path)
    library.MKL_Set_Threading_Layer(ctypes.c_int(0 if threaded else 1))  # MKL_THREADING_INTEL, _SEQUENTIAL
    _swap_gemm(library)
    PROVIDER = "mkl"
    return PROVIDER
