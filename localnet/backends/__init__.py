"""Backends: one module per layer family (dense, loss, optim), the same names in each backend, plus `arrays`, the
few array operations layers, optimisers and the data source use to allocate, copy in, read back and check arrays
(plain numpy on the CPU backends; device arrays on cuda).

Layers call kernels through the backend they were built with; a kernel never sees a layer object.
"""

import importlib

from ..errors import LocalnetError, SpecError

BACKENDS = {"numpy": "localnet.backends.numpy", "numba": "localnet.backends.numba", "cuda": "localnet.backends.cuda"}
PREFERENCE = ("cuda", "numba", "numpy")  # `auto` picks the first that imports; faster backends go in front as they land


def _driver_present():
    """Whether a CUDA driver library is installed: `auto` skips importing numba.cuda (about 1 s) when none is."""
    import ctypes.util
    return any(ctypes.util.find_library(lib) for lib in ("cuda", "nvcuda"))


def get_backend(name):
    if name == "auto":
        for candidate in PREFERENCE:
            if candidate == "cuda" and not _driver_present():
                continue
            try:
                module = importlib.import_module(BACKENDS[candidate])
            except (ImportError, LocalnetError):
                continue
            if not getattr(module, "SIMULATED", False):  # the CUDA simulator is for tests, never picked by itself
                return module
    if name not in BACKENDS:
        raise SpecError("unknown backend", path=("backend",), expected="one of " + ", ".join(["auto", *BACKENDS]),
                        found=repr(name))
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        if name != "cuda":
            raise
        raise LocalnetError(f"backend 'cuda' needs numba-cuda (pip install 'localnet[cuda]'): {exc}") from None
