"""Messages: what crosses a channel. The payload a receiver gets is read-only, so no layer can write into
another's memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("activation", "label", "target", "gradient")
FORWARD_KINDS = ("activation", "label")  # the forward phase
BACKWARD_KINDS = ("target", "gradient")  # the backward phase


def read_only(array):
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class Message:
    kind: str
    sender: str
    payload: np.ndarray

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown message kind {self.kind!r}")
        object.__setattr__(self, "payload", read_only(self.payload))
