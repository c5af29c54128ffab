"""The in-process engine: runs each phase over the schedule and routes messages along channels."""

from __future__ import annotations

from ..graph import INPUT, NetworkGraph
from ..messages import BACKWARD_KINDS, FORWARD_KINDS


class LocalEngine:
    def __init__(self, graph: NetworkGraph, nodes: dict):
        self.graph, self.nodes = graph, nodes
        self._forward = [(name, graph.inbound(name, FORWARD_KINDS)) for name in graph.forward_order]
        self._backward = [(name, graph.inbound(name, BACKWARD_KINDS))
                          for name in graph.backward_order if name != INPUT]
        self._outbox = {}

    def _run(self, schedule, call):
        outbox = self._outbox
        for name, channels in schedule:
            inbox = {c.kind: c.deliver(outbox[c.sender][c.kind]).payload for c in channels}
            outbox[name] = call(self.nodes[name], inbox)

    def forward(self, x, y, train):
        """Forward phase: every node computes its output from what it received and sends it on."""
        self._outbox = {}
        self.nodes[INPUT].feed(x, y)
        self._run(self._forward, lambda node, inbox: node.forward(inbox, train))

    def train_feedback(self):
        """Feedback phase: each layer with a feedback map fits it to its own forward map, alone."""
        for name in self.graph.feedback_layers:
            self.nodes[name].train_feedback()

    def backward(self):
        """Backward phase: the first target (or ℒ's gradient) enters at the top and goes down the schedule."""
        self._run(self._backward, lambda node, inbox: node.backward(inbox))

    def update(self):
        for name in self.graph.layers:
            self.nodes[name].apply_update()
