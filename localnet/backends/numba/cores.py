"""Into how many blocks a kernel may split its element-wise passes: the cores the engine gave the calling job
(`threads.job_cores`: more than one only in a one-thread layout, where BLAS spreads each product over them), where
the blocks can run on BLAS's own threads.

They can where MKL threads on Intel's OpenMP runtime (localnet/blas.py loads it into the global namespace) and Numba
uses its OpenMP threading layer, which then runs on that same runtime and team. Measured on backprop's step (2 cores,
`/tmp`-style A/B, s/epoch): 0.83 serial, 0.70 split on MKL's team; split on a second runtime instead, 3.0 (GNU OpenMP
beside Intel's), 0.88 (TBB, Numba's default once MKL's `tbb` dependency is installed), 1.0–1.3 (Numba's workqueue,
whose threads sleep between regions), and 27 with OpenBLAS's threads beside GNU OpenMP's: every other combination
keeps two sets of threads spinning for the same cores, so kernels split only in this one.
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
    try:
        from numba import threading_layer
        return threading_layer() == "omp"  # Numba's threads already started (by other code in this process)
    except ValueError:  # not started yet: they will start on this layer
        return True


_SPLIT = _shared_openmp()


def parts() -> int:
    """Blocks for an element-wise pass of the calling job: its cores where they can run on BLAS's threads, else 1."""
    return job_cores() if _SPLIT else 1


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
