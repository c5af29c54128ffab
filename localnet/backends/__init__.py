"""Backends: one module per layer family (dense, loss, optim), the same names in each backend.

Layers call kernels through the backend they were built with; a kernel never sees a layer object.
"""

import importlib

from ..errors import SpecError

BACKENDS = {"numpy": "localnet.backends.numpy", "numba": "localnet.backends.numba"}
PREFERENCE = ("numba", "numpy")  # `auto` picks the first that imports; faster backends go in front as they land


def get_backend(name):
    if name == "auto":
        for candidate in PREFERENCE:
            try:
                return importlib.import_module(BACKENDS[candidate])
            except ImportError:
                continue
    if name not in BACKENDS:
        raise SpecError("unknown backend", path=("backend",), expected="one of " + ", ".join(["auto", *BACKENDS]),
                        found=repr(name))
    return importlib.import_module(BACKENDS[name])
