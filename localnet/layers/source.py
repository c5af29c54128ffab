"""The data source: the graph node that emits the batch's inputs and labels."""

from ..messages import Outbox
from .base import Node


class InputNode(Node):
    def __init__(self, name, arrays=None):
        """arrays: the backend's array API (localnet/backends/numpy/arrays.py); the batch goes to the device here."""
        self.name = name
        self._to_device = arrays.to_device if arrays is not None else None
        self._batch = None

    def feed(self, x, y):
        self._batch = (x, y) if self._to_device is None else (self._to_device(x), self._to_device(y))

    def forward(self, inbox, train):
        x, y = self._batch
        out = Outbox()
        out.send("activation", x, "data")
        out.send("label", y, "data")
        return out
