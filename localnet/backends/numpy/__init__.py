"""The numpy reference backend: the oracle every fast backend is tested against."""

from . import activations, dense, loss, optim

NAME = "numpy"
