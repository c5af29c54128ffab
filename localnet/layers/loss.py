"""The global loss node: receives h_L and labels, and sends the first target or ℒ's gradient down."""

from ..messages import Outbox
from .base import Node

LOSSES = {"softmax_cross_entropy": "softmax_cross_entropy", "mse": "mse", "reconstruction": "reconstruction"}


class LossNode(Node):
    def __init__(self, name, loss, target_step, kernels, down_kinds, arrays=None):
        """kernels: the backend's loss module; arrays: its array API (numpy's when not given)."""
        if arrays is None:
            from ..backends.numpy import arrays
        self.name = name
        self.down_kinds = frozenset(down_kinds)
        self._loss = getattr(kernels, LOSSES[loss])
        self._descend = arrays.descend
        self.target_step = target_step
        self.value = self.correct = None
        self._h = self._grad = None

    def forward(self, inbox, train):
        self._h = inbox["activation"]
        self.value, self._grad, self.correct = self._loss(self._h, inbox["label"])
        return {}

    @property
    def output(self):
        """The network's output h_L this node last received (read-only, as delivered)."""
        return self._h

    def backward(self, inbox):
        out = Outbox()
        if "gradient" in self.down_kinds:
            out.send("gradient", self._grad, "∂ℒ")
        if "target" in self.down_kinds:
            # the first target is one step down ℒ's gradient: ĥ_L = h_L − η̂ ∂ℒ/∂h_L
            out.send("target", self._descend(self._h, self._grad, self.target_step), "∂ℒ", base=self._h)
        return out
