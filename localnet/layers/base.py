"""The node interface: the graph's nodes exchange messages and touch nothing but their own state.

Phase methods take an inbox (kind -> read-only array) and return an outbox (kind -> array). The engine routes
outboxes along channels; no node holds a reference to another.
"""


class Node:
    name: str

    def forward(self, inbox, train):
        return {}

    def backward(self, inbox):
        return {}
