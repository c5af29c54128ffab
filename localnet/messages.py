"""Messages: what crosses a channel, and the two ends a node sees of them.

- A `Message` carries a kind, its sender, a read-only payload and its provenance: what the sender computed it
  from (its own forward weights transposed, its feedback map, the loss gradient, ...; see PROVENANCE).
- An `Outbox` is what a node's phase method returns: kind -> payload, plus each payload's provenance, declared
  where the payload is computed (`out.send("gradient", e @ W.T, "Wᵀ", "s'", "gradient")`). A node with several
  inputs addresses what it sends down to each of them (`send(..., to=sender)`); the rest goes to every receiver.
- An `Inbox` is what a node's phase method receives: `inbox[kind]` gives the read-only payload, records the read
  (receiver, phase, kind, sender, provenance) in the network's `Audit`, and raises LocalityError, naming the
  node and the kind, when no declared channel brings the node that kind. A node with several inputs (or several
  consumers, in the backward phase) reads them all with `inbox.each(kind)`: {sender: payload}.
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
    "sign(Wᵀ)": "the signs of the sender's forward weights, transposed (weight transport of signs)",
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
    for a target, the receiver's activation as the sender saw it (what the target is a displacement from). A
    payload addressed to one receiver (`send(..., to=name)`) is kept under (kind, name) in each of these."""

    __slots__ = ("provenance", "lags", "bases")

    def __init__(self):
        super().__init__()
        self.provenance, self.lags, self.bases = {}, {}, {}

    def send(self, kind, payload, *uses, lag=0, base=None, to=None):
        tags = _TAGS.get(uses)
        if tags is None:
            tags = frozenset(uses)
            if not tags <= _KNOWN:
                raise ValueError(f"unknown provenance {sorted(tags - _KNOWN)}; known: {', '.join(PROVENANCE)}")
            _TAGS[uses] = tags
        key = kind if to is None else (kind, to)
        self[key] = payload
        self.provenance[key] = tags
        if lag:
            self.lags[key] = lag
        if base is not None:
            self.bases[key] = base
        return payload

    def key(self, kind, receiver):
        """Where the payload of `kind` for `receiver` is kept: addressed to it, or sent to every receiver."""
        addressed = (kind, receiver)
        return addressed if addressed in self else kind


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
    channel brings the node raises LocalityError; each read is recorded in the audit. Where several channels bring
    the same kind (a layer with several inputs, or with several consumers sending targets down), `inbox.each(kind)`
    reads them all, {sender: payload} in the order of the channels; `inbox[kind]` then refuses.

    `kind in inbox` (is that port connected?) is not a read and is not recorded.
    """

    __slots__ = ("_owner", "_phase", "_messages", "_audit", "_declared")

    def __init__(self, owner, phase, messages, audit=None, declared=()):
        """`messages`: the Messages delivered, in the order of the node's channels."""
        self._owner, self._phase = owner, phase
        self._messages = {}  # kind -> [Message, ...]
        for m in messages:
            self._messages.setdefault(m.kind, []).append(m)
        self._audit = audit if audit is not None and audit.enabled else None
        self._declared = declared  # every kind any of the node's channels brings it, in any phase

    def _of(self, kind):
        try:
            return self._messages[kind]
        except (KeyError, TypeError):
            raise LocalityError(self._refusal(kind)) from None

    def __getitem__(self, kind):
        messages = self._of(kind)
        if len(messages) > 1:
            raise LocalityError(f"layer {self._owner!r} receives {len(messages)} {kind} messages in the "
                                f"{self._phase} phase (from {', '.join(repr(m.sender) for m in messages)}); "
                                f"read them with inbox.each({kind!r})")
        message = messages[0]
        if self._audit is not None:
            self._audit.record(self._owner, self._phase, message)
        return message.payload

    def each(self, kind):
        """{sender: payload} of every `kind` message, in the order of the node's channels (each read recorded)."""
        messages = self._of(kind)
        if self._audit is not None:
            for message in messages:
                self._audit.record(self._owner, self._phase, message)
        return {m.sender: m.payload for m in messages}

    def count(self, kind):
        """How many `kind` messages arrived (not a read)."""
        return len(self._messages.get(kind, ()))

    def _refusal(self, kind):
        brings = ", ".join(f"{m.kind} from {m.sender!r}" for m in self.messages()) or "nothing"
        if kind in self._declared:
            why = f"its {kind} channel delivers in another phase"
        else:
            why = f"no declared channel brings it a {kind!r} message"
        return (f"layer {self._owner!r} asked for {kind!r} in the {self._phase} phase, but {why}; "
                f"its inbox holds: {brings}")

    def __contains__(self, kind):
        return kind in self._messages

    def lag(self, kind):
        """How many steps ago the batch the `kind` message belongs to went forward (0 unless delayed; the graph
        refuses delays into a node that receives several of a kind)."""
        return self._of(kind)[0].lag

    def __iter__(self):
        return iter(self._messages)

    def __len__(self):
        return len(self._messages)

    def messages(self, sender=None):
        """The Message objects (kind, sender, payload, provenance) in channel order, without recording a read;
        only `sender`'s with `sender`."""
        return [m for ms in self._messages.values() for m in ms if sender is None or m.sender == sender]

    def __repr__(self):
        return f"Inbox({self._owner!r}, {self._phase}, {self.messages()})"
