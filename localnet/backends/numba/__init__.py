"""The Numba CPU backend: the numpy reference's kernels, compiled, fused per phase and checked against it.

Importing it compiles nothing; each kernel compiles on first use (about 10 s for the Fashion-MNIST DTP net) and is
cached on disk (`cache=True`, in `__pycache__` beside the sources, or `$NUMBA_CACHE_DIR`), so later processes start in
under a second. An ImportError here (Numba or SciPy missing) makes `auto` fall back to numpy.

One thing to know when mixing it with other numpy code: `np.dot` inside `@njit` calls the OpenBLAS that SciPy ships
(or MKL, localnet/blas.py), not NumPy's own. Each library keeps its idle threads spinning for about 0.1 s after a call, so on a 2-core machine
alternating between the two (a NumPy matrix product in every training step, say) makes them fight for the cores and
slows both several-fold. Keep per-step arithmetic on one backend; occasional NumPy products cost nothing.
"""

import scipy.linalg.cython_blas  # noqa: F401  np.dot inside @njit calls SciPy's BLAS: fail at import, not mid-run

from ...blas import select as _select_blas

_select_blas()  # MKL's products where it is installed (localnet/blas.py): before any kernel runs

from ..numpy import check_supported  # noqa: F401  (nothing to refuse, as numpy)
from . import activations, arrays, conv, dense, loss, optim  # noqa: F401

NAME = "numba"
