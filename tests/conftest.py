"""Session set-up. The cuda backend's tests run under Numba's CUDA simulator unless LOCALNET_CUDA_REAL=1 asks for
the real GPU. Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, so it is set here, before any test
module imports numba; it changes nothing for CPU Numba, and `backend: auto` never picks the simulator."""

import os
import sys
import warnings

if os.environ.get("LOCALNET_CUDA_REAL") != "1":
    if "numba" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        warnings.warn("numba was imported before tests/conftest.py could select the CUDA simulator; "
                      "the cuda backend's tests will skip or need a GPU")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
