"""Diagnostics: a non-local probe that compares each layer's local update with backprop's gradient, and the
quantities logged with it (distance to target, feedback reconstruction error, target and activation norms).

Turn it on in a spec with `diagnostics: {every: N}` (every N learning batches; 0 or absent: off, at no cost): each
measurement is one line of the run's metrics.jsonl with `"kind": "diagnostics"`. `localnet plot` draws them.
"""

from .probe import FIELDS, Probe, backprop_gradients, diagnose, measure
from .record import LayerRecord, record_step
from .reference import angle

__all__ = ["FIELDS", "Probe", "angle", "backprop_gradients", "diagnose", "measure", "record_step", "LayerRecord"]
