"""Into how many blocks a kernel may split its element-wise passes: the cores the engine gave the calling job
(`threads.job_cores`: more than one only in a one-thread layout, where BLAS spreads each product over them), where
the blocks can run on BLAS's own threads.

They can where MKL threads on Intel's OpenMP runtime (localnet/blas.py loads it into the global namespace) and Numba
uses its OpenMP threading layer, which then runs on that same runtime and team: backprop's epoch 0.82 → 0.75 s
(`localnet bench`, which times both). Split on a second set of threads instead, every combination measured was
slower than not splitting, up to 28× (CHANGELOG.md): GNU OpenMP beside Intel's, TBB (Numba's default once
MKL's `tbb` dependency is installed), Numba's workqueue, GNU OpenMP beside OpenBLAS's threads. So kernels split
only in this one: not where `$NUMBA_THREADING_LAYER` names another layer, nor where Numba's threads were started
by other code before localnet's numba backend was imported.
"""

import contextlib
import os

from numba import config

from ... import blas
from ...threads import job_cores


def _shared_openmp() -> bool:
    blas.select()
    if not blas.OPENMP or os.environ.get("NUMBA_THREADING_LAYER", "omp") != "omp":
        return False
    os.environ["NUMBA_THREADING_LAYER"] = "omp"  # (Numba's compiler reloads its config from the environment)
    config.reload_config()
    from numba import threading_layer
    try:
        threading_layer()
    except ValueError:  # Numba's threads have not started: they will, on MKL's runtime
        return True
    return False  # started by other code before MKL's runtime was global: on another, whatever the layer's name


_SPLIT = _shared_openmp()


SPLIT_FROM = 16384  # elements: below this a split costs more (~4 µs to start the threads) than it saves


def parts(size: int) -> int:
    """Blocks for an element-wise pass over `size` elements in the calling job: its cores where they can run on
    BLAS's threads and the pass is large enough, else 1."""
    return job_cores() if _SPLIT and size >= SPLIT_FROM else 1


def splits() -> bool:
    """Whether kernels split at all in this process (they do where `parts` can exceed 1)."""
    return _SPLIT


@contextlib.contextmanager
def unsplit():
    """A block in which no kernel splits: `localnet bench` times backprop both ways."""
    global _SPLIT
    saved, _SPLIT = _SPLIT, False
    try:
        yield
    finally:
        _SPLIT = saved
