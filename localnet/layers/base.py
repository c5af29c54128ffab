"""The node interface: the graph's nodes exchange messages and touch nothing but their own state.

Phase methods take an inbox (`localnet.messages.Inbox`: `inbox[kind]` is a read-only array; asking for a kind no
declared channel brings raises LocalityError, and every read is recorded for the locality audit) and return an
outbox (`localnet.messages.Outbox`, a dict of kind -> array whose `send` also records what each payload was
computed from; a plain dict works too, without provenance). The engine routes outboxes along channels; no node
holds a reference to another (checked at build time and before every checkpoint, localnet/isolation.py).
"""


class Node:
    name: str

    def forward(self, inbox, train):
        return {}

    def backward(self, inbox):
        return {}
