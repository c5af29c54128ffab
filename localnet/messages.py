"""Messages: what crosses a channel, and the two ends a node sees of them.

- A `Message` carries a kind, its sender, a read-only payload and its provenance: what the sender computed it
  from (its own forward weights transposed, its feedback map, the loss gradient, ...; see PROVENANCE).
- An `Outbox` is what a node's phase method returns: kind -> payload, plus each payload's provenance, declared
  where the payload is computed (`out.send("gradient", e @ W.T, "Wᵀ", "s'", "gradient")`).
- An `Inbox` is what a node's phase method receives: `inbox[kind]` gives the read-only payload, records the read
  (receiver, phase, kind, sender, provenance) in the network's `Audit`, and raises LocalityError, naming the
  node and the kind, when no declared channel brings the node that kind.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import LocalityError

KINDS = ("activation", "label", "target", "gradient")
FORWARD_KINDS = ("activation", "label")  # the forward phase
BACKWARD_KINDS = ("target", "gradient")  # the backward phase

# What a payload may be computed from, as its sender declares it (the audit reads these; tests/test_locality.py
# checks the weight tags by perturbing the sender's weights with everything else held fixed).
PROVENANCE = {
    "W": "the sender's forward weights, in the forward direction",
    "b": "the sender's forward bias",
    "Wᵀ": "the transpose of the sender's forward weights (weight transport)",
    "s'": "the derivative of the sender's non-linearity",
    "V": "the sender's feedback weights (its map g)",
    "c": "the sender's feedback bias",
    "∂ℒ": "the global loss gradient (computed by the loss node from the output and the labels)",
    "target": "a target the sender received",
    "gradient": "a gradient the sender received",
    "data": "the data set (inputs or labels)",
}
NO_PROVENANCE = frozenset()
_KNOWN = frozenset(PROVENANCE)
_TAGS = {}  # the tuples `Outbox.send` was given -> their (checked) frozensets


def read_only(array):
    if hasattr(array, "copy_to_host"):  # a device array (backend cuda): no read-only flag exists; it crosses as is
        return array
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


class Message:
    """One delivery on one channel: kind, sender, read-only payload, provenance (a frozenset of PROVENANCE
    tags) and lag (how many steps ago the batch it belongs to went forward: 0 unless a channel delayed it)."""

    __slots__ = ("kind", "sender", "payload", "provenance", "lag")

    def __init__(self, kind, sender, payload, provenance=NO_PROVENANCE, lag=0):
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}")
        self.kind, self.sender, self.provenance, self.lag = kind, sender, provenance, lag
        self.payload = read_only(payload)

    def __repr__(self):
        return (f"Message({self.kind!r} from {self.sender!r}, {self.payload.dtype}{list(self.payload.shape)}, "
                f"computed with {sorted(self.provenance)})")


class Outbox(dict):
    """kind -> payload, as a node sends it; `provenance[kind]` says what the payload was computed from, `lags[kind]`
    how many steps ago its batch went forward (when it was computed from a delayed message), and `bases[kind]`,
    for a target, the receiver's activation as the sender saw it (what the target is a displacement from)."""

    __slots__ = ("provenance", "lags", "bases")

    def __init__(self):
        super().__init__()
        self.provenance, self.lags, self.bases = {}, {}, {}

    def send(self, kind, payload, *uses, lag=0, base=None):
        tags = _TAGS.get(uses)
        if tags is None:
            tags = frozenset(uses)
            if not tags <= _KNOWN:
                raise ValueError(f"unknown provenance {sorted(tags - _KNOWN)}; known: {', '.join(PROVENANCE)}")
            _TAGS[uses] = tags
        self[kind] = payload
        self.provenance[kind] = tags
        if lag:
            self.lags[kind] = lag
        if base is not None:
            self.bases[kind] = base
        return payload


class Audit:
    """The locality audit: every read a node made from its inbox, as a set of
    (receiver, phase, kind, sender, provenance) tuples (a set insert per read; `enabled = False` skips even that).
    """

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.reads = set()

    def clear(self):
        self.reads = set()

    def record(self, receiver, phase, message):
        self.reads.add((receiver, phase, message.kind, message.sender, message.provenance))


class Inbox(Mapping):
    """What a node received in one phase: `inbox[kind]` is the read-only payload. Asking for a kind no declared
    channel brings the node raises LocalityError; each read is recorded in the audit.

    `kind in inbox` (is that port connected?) is not a read and is not recorded.
    """

    __slots__ = ("_owner", "_phase", "_messages", "_audit", "_declared")

    def __init__(self, owner, phase, messages, audit=None, declared=()):
        self._owner, self._phase = owner, phase
        self._messages = messages  # kind -> Message
        self._audit = audit if audit is not None and audit.enabled else None
        self._declared = declared  # every kind any of the node's channels brings it, in any phase

    def __getitem__(self, kind):
        try:
            message = self._messages[kind]
        except (KeyError, TypeError):
            raise LocalityError(self._refusal(kind)) from None
        if self._audit is not None:
            self._audit.record(self._owner, self._phase, message)
        return message.payload

    def _refusal(self, kind):
        brings = ", ".join(f"{m.kind} from {m.sender!r}" for m in self._messages.values()) or "nothing"
        if kind in self._declared:
            why = f"its {kind} channel delivers in another phase"
        else:
            why = f"no declared channel brings it a {kind!r} message"
        return (f"layer {self._owner!r} asked for {kind!r} in the {self._phase} phase, but {why}; "
                f"its inbox holds: {brings}")

    def __contains__(self, kind):
        return kind in self._messages

    def lag(self, kind):
        """How many steps ago the batch the `kind` message belongs to went forward (0 unless delayed)."""
        try:
            return self._messages[kind].lag
        except (KeyError, TypeError):
            raise LocalityError(self._refusal(kind)) from None

    def __iter__(self):
        return iter(self._messages)

    def __len__(self):
        return len(self._messages)

    def messages(self):
        """The Message objects (kind, sender, payload, provenance), without recording a read."""
        return dict(self._messages)

    def __repr__(self):
        return f"Inbox({self._owner!r}, {self._phase}, {list(self._messages.values())})"
