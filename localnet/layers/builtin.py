"""The built-in layer families; importing this module registers them (`localnet.layers.base.family`)."""

from . import add, conv, dense, flatten  # noqa: F401
