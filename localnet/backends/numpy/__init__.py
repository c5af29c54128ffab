"""The numpy reference backend: the oracle every fast backend is tested against."""

from . import activations, arrays, conv, dense, loss, optim

NAME = "numpy"
BITS_FOLLOW_THREADS = True  # NumPy's own BLAS (OpenBLAS in its wheels) rounds a product differently on another
# number of threads: engines that give products different thread counts agree to rounding only (docs/mpi.md)


def check_supported(spec, engine):
    """Nothing to refuse: every rule, constraint, diagnostic and engine runs on the CPU backends."""
