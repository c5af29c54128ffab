"""The data source: the graph node that emits the batch's inputs and labels."""

from ..messages import Outbox
from .base import Node


class InputNode(Node):
    def __init__(self, name):
        self.name = name
        self._batch = None

    def feed(self, x, y):
        self._batch = (x, y)

    def forward(self, inbox, train):
        x, y = self._batch
        out = Outbox()
        out.send("activation", x, "data")
        out.send("label", y, "data")
        return out
