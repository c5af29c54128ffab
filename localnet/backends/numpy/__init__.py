"""The numpy reference backend: the oracle every fast backend is tested against."""

from . import activations, arrays, conv, dense, loss, optim

NAME = "numpy"


def check_supported(spec, engine):
    """Nothing to refuse: every rule, constraint, diagnostic and engine runs on the CPU backends."""
