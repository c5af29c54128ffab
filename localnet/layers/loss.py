"""The global loss node: receives h_L and labels, and sends the first target or ℒ's gradient down."""

from ..messages import Outbox
from .base import Node

LOSSES = {"softmax_cross_entropy": "softmax_cross_entropy", "mse": "mse", "reconstruction": "reconstruction"}


class LossNode(Node):
    def __init__(self, name, loss, target_step, kernels, down_kinds, rule, arrays=None, direct=()):
        """kernels: the backend's loss module; rule: says what it sends down (`Rule.loss_send`); arrays: the
        backend's array API (numpy's when not given); direct: the layers below the top one it sends to straight
        (DRTP)."""
        if arrays is None:
            from ..backends.numpy import arrays
        self.name = name
        self.down_kinds = frozenset(down_kinds)
        self._loss = getattr(kernels, LOSSES[loss])
        self._descend = arrays.descend
        self.target_step = target_step
        self.rule, self.direct = rule, tuple(direct)
        self.value = self.correct = None
        self._h = self._grad = self.label = None

    def forward(self, inbox, train):
        self._h, self.label = inbox["activation"], inbox["label"]
        self.value, self._grad, self.correct = self._loss(self._h, self.label)
        return {}

    @property
    def output(self):
        """The network's output h_L this node last received (read-only, as delivered)."""
        return self._h

    @property
    def gradient(self):
        """∂ℒ/∂h_L of this step."""
        return self._grad

    def first_target(self):
        """ĥ_L = h_L − η̂ ∂ℒ/∂h_L: one step down ℒ's gradient."""
        return self._descend(self._h, self._grad, self.target_step)

    def backward(self, inbox):
        out = Outbox()
        self.rule.loss_send(self, self.down_kinds, out)
        return out
