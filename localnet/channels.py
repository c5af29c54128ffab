"""Typed, one-direction channels between graph nodes; the place where plausibility constraints will live."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GraphError
from .messages import Message


@dataclass(frozen=True)
class Channel:
    sender: str
    receiver: str
    kind: str
    shape: tuple  # per-sample shape of the payload
    dtype: str

    def deliver(self, payload) -> Message:
        """Wrap a payload for the receiver, refusing one that does not match the channel's declared type."""
        if payload.shape[1:] != self.shape or payload.dtype != self.dtype:
            raise GraphError(f"channel {self} was handed {payload.dtype} of shape {payload.shape[1:]} per sample")
        return Message(self.kind, self.sender, payload)

    def __str__(self):
        return f"{self.sender} -[{self.kind} {'x'.join(map(str, self.shape))} {self.dtype}]-> {self.receiver}"
