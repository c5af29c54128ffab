"""Typed, one-direction channels between graph nodes, and the place plausibility constraints live
(localnet/constraints.py): noise, quantisation, dropped and delayed messages act in `Channel.deliver`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .constraints import Pipeline, channel_seed
from .errors import GraphError, LocalnetError
from .messages import NO_PROVENANCE, Message


@dataclass(eq=False)
class Channel:
    sender: str
    receiver: str
    kind: str
    shape: tuple  # per-sample shape of the payload
    dtype: str
    constraints: tuple = ()  # ConstraintSpec, in the order they act
    pipeline: Pipeline | None = field(default=None, repr=False)  # their runtime state, once `bind` has run
    displacement: bool = False  # a target channel that carries ĥ − (the sender's view of h): set by the engine

    @property
    def identity(self):
        return f"{self.sender}>{self.receiver}.{self.kind}"

    def bind(self, seed):
        """Give the channel's constraints their state: a generator seeded from `seed` and the channel's identity,
        empty delay queues. A channel without constraints has no state."""
        self.pipeline = (Pipeline(self.constraints, channel_seed(seed, self.sender, self.receiver, self.kind),
                                  self.identity) if self.constraints else None)

    def deliver(self, payload, provenance=NO_PROVENANCE, reference=None, train=True, lag=0) -> Message:
        """Wrap a payload for the receiver, refusing one that does not match the channel's declared type, after
        the channel's constraints have acted on it; a delay returns an older payload and adds its age to the
        message's `lag`. `reference`, for a displacement channel: (the receiver's activation as the sender
        received it, the receiver's own activation); the target crosses as ĥ minus the first, and the receiver
        gets the second plus what arrived."""
        payload = self.arrive(payload, reference, train)
        pipeline = self.pipeline
        if pipeline is not None:
            if pipeline.delay is not None:
                payload, lag = pipeline.delay(payload, lag)
        return Message(self.kind, self.sender, payload, provenance, lag)

    def arrive(self, payload, reference=None, train=True):
        """What `deliver` hands its delay queue: the payload checked, displaced and transformed by the channel's
        other constraints (the MPI engine's pipelined schedule queues what arrives late through this)."""
        if payload.shape[1:] != self.shape or payload.dtype != self.dtype:
            raise GraphError(f"channel {self} was handed {payload.dtype} of shape {payload.shape[1:]} per sample")
        pipeline = self.pipeline
        if reference is not None:
            seen, own = reference
            change = payload - seen
            if pipeline is not None and pipeline.steps:
                change = pipeline.transform(change, train)
            payload = np.asarray(own + change, dtype=self.dtype)
        elif pipeline is not None and pipeline.steps:
            payload = np.asarray(pipeline.transform(payload, train), dtype=self.dtype)
        return payload

    @property
    def delay(self):
        """Steps this channel delays its messages by (0: none)."""
        return self.pipeline.delay.steps if self.pipeline is not None and self.pipeline.delay is not None else 0

    # -- state, for checkpoints --------------------------------------------------------------------------------
    @property
    def stateful(self):
        return self.pipeline is not None and self.pipeline.stateful

    def state(self) -> dict:
        return self.pipeline.state() if self.stateful else {}

    def load_state(self, state):
        if not self.stateful:
            if state:
                raise LocalnetError(f"channel {self.identity}: it keeps no state, found {', '.join(sorted(state))}")
            return
        try:
            self.pipeline.load_state(state, self.dtype)
        except LocalnetError as exc:
            raise LocalnetError(f"channel {self.identity}: {exc}") from None

    def __str__(self):
        text = f"{self.sender} -[{self.kind} {'x'.join(map(str, self.shape))} {self.dtype}]-> {self.receiver}"
        return text + (f" with {self.pipeline.describe()}" if self.pipeline is not None else "")
