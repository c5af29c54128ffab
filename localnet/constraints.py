"""Plausibility constraints: what a channel does to the messages that cross it, and what a layer may do to its own
weights. One line of YAML each (spec/schema.py, `ConstraintSpec`):

on a channel (explicit `channels:` entries), on a layer (every channel out of it) or on the network (every channel),
optionally restricted to one `kind`:
  {type: noise, std: 0.1}          Gaussian noise N(0, std²) added to every value; with `relative: true`,
                                   N(0, (std·rms)²), rms being each sample's root mean square: noise that keeps
                                   its proportion to messages that shrink (a target's displacement, ∝ 1/batch)
  {type: quantize, bits: 4}        uniform quantisation to 2^bits − 1 levels, symmetric about 0; the scale is each
                                   sample's largest magnitude, or a fixed `range: r` (values clipped to [−r, r])
  {type: sign}                     one bit per value: sign(v) times each sample's mean magnitude
  {type: drop, p: 0.1}             each sample's message is lost with probability p and the receiver gets nothing
                                   for it (zeros; for a target: no displacement, so no error)
  {type: delay, steps: 2}          (targets and gradients only) the receiver gets what the sender sent `steps`
                                   steps ago (before that many exist, the oldest one kept), marked with its age:
                                   the receiver learns from it against its own state of that step (below)
on a layer:
  {type: fixed_feedback}           its feedback map g is never trained (random init as usual, or `scale: s` for
                                   V, c ~ U(−s, s), e.g. Shibuya et al.'s 1e-3)
  {type: sign_constrained}         each of its inputs' outgoing weights (a row of W) keeps one sign, chosen at
                                   initialisation; after every update a weight that crossed zero is set to 0

Targets cross as displacements wherever the target channel or the activation channel the other way is constrained:
the sender's ĥ is sent as Δ = ĥ − x, x being the receiver's activation as the sender received it; the channel's
constraints act on Δ, and the receiver gets h + Δ' with its own h. So dropping a target means "no error",
quantising one keeps its small displacement, and what the upward channel did to h does not come back down inside
the target. With neither direction constrained, targets are delivered as sent, bit for bit.

A delay acts after a channel's other constraints (it holds what would have been delivered). A delayed message
carries its age in steps (its `lag`); a layer that receives a target or gradient of lag k learns from it with its
own input, pre-activation and output of k steps ago (it keeps that many), so its update is the one of the batch
the message belongs to, computed k steps late, as in pipelined training; the targets it sends down carry the same
lag. Delays along a path add up. Stochastic constraints (noise, drop)
act when training; in evaluation (`evaluate`, `forward`) messages pass without them, as dropout does; quantise
and sign always act. Where a constraint needs randomness, the channel owns a generator seeded from the network's
seed and the channel's identity (sender, receiver, kind), so the same spec and seed give the same numbers, and
the generator's state and the delay queue are saved in checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import deque

import numpy as np

from .errors import LocalnetError, LocalnetWarning
from .files import parse_json

MESSAGE_CONSTRAINTS = ("noise", "quantize", "sign", "drop", "delay")
LAYER_CONSTRAINTS = ("fixed_feedback", "sign_constrained")
CONSTRAINT_TYPES = MESSAGE_CONSTRAINTS + LAYER_CONSTRAINTS
CONSTRAINED_KINDS = ("activation", "target", "gradient")  # labels are data, never constrained
KINDS_OF = {"noise": CONSTRAINED_KINDS, "quantize": CONSTRAINED_KINDS, "sign": CONSTRAINED_KINDS,
            "drop": CONSTRAINED_KINDS, "delay": ("target", "gradient")}
# which keys each type needs and which it may have (besides `type` and, for message constraints, `kind`)
REQUIRED = {"noise": ("std",), "quantize": ("bits",), "sign": (), "drop": ("p",), "delay": ("steps",),
            "fixed_feedback": (), "sign_constrained": ()}
OPTIONAL = {"noise": ("relative",), "quantize": ("range",), "fixed_feedback": ("scale",)}
PARAMETERS = ("std", "bits", "range", "p", "steps", "scale", "relative")
CHANNEL_STREAM = 0xC4A7  # mixed into a channel's seed so its stream differs from every layer's and the data's


def check_constraints(spec, ctx):
    """Spec checks a type cannot express: each constraint's keys, where it may appear, which kinds it fits."""
    net = spec.network
    places = [(("network", "constraints"), net.constraints, "network", None)]
    places += [(("network", "layers", i, "constraints"), layer.constraints, "layer", None)
               for i, layer in enumerate(net.layers)]
    places += [(("network", "channels", i, "constraints"), channel.constraints, "channel", channel.kind)
               for i, channel in enumerate(net.channels or ())]
    for path, constraints, where, channel_kind in places:
        for j, c in enumerate(constraints):
            at = path + (j,)
            allowed = set(REQUIRED[c.type]) | set(OPTIONAL.get(c.type, ()))
            for key in PARAMETERS:
                given = getattr(c, key) is not None
                if key in REQUIRED[c.type] and not given:
                    raise ctx.error(at + (key,), f"a {c.type} constraint needs `{key}`", expected=f"`{key}`")
                if given and key not in allowed:
                    raise ctx.error(at + (key,), f"`{key}` does not apply to a {c.type} constraint",
                                    expected="one of " + ", ".join(["type", "kind", *allowed]) if c.type in
                                    MESSAGE_CONSTRAINTS else "one of " + ", ".join(["type", *allowed]),
                                    found=key)
            if c.type in LAYER_CONSTRAINTS:
                if where != "layer":
                    raise ctx.error(at + ("type",), f"{c.type} constrains a layer's own weights",
                                    expected="it in a layer's `constraints`", found=f"it on a {where}")
                if c.kind is not None:
                    raise ctx.error(at + ("kind",), f"`kind` does not apply to a {c.type} constraint")
                continue
            fits = KINDS_OF[c.type]
            if channel_kind is not None:
                if c.kind is not None and c.kind != channel_kind:
                    raise ctx.error(at + ("kind",), "the constraint's kind differs from its channel's",
                                    expected=repr(channel_kind), found=repr(c.kind))
                if channel_kind not in fits:
                    raise ctx.error(at + ("type",), f"a {c.type} constraint cannot act on a {channel_kind} channel",
                                    expected="a channel of kind " + " or ".join(fits))
            elif c.kind is not None and c.kind not in fits:
                raise ctx.error(at + ("kind",), f"a {c.type} constraint cannot act on {c.kind} messages",
                                expected=" or ".join(fits), found=repr(c.kind))


def constraints_for(spec, sender, receiver, kind, channel_index=None):
    """The constraint specs that act on one channel, in the order they apply: the network's, the sending
    layer's, then the channel's own (those that fit the channel's kind)."""
    net = spec.network
    found = list(net.constraints)
    found += [c for layer in net.layers if layer.name == sender for c in layer.constraints]
    if channel_index is not None and net.channels is not None:
        found += list(net.channels[channel_index].constraints)
    return tuple(c for c in found if c.type in MESSAGE_CONSTRAINTS and (c.kind is None or c.kind == kind)
                 and kind in KINDS_OF[c.type])


def channel_seed(seed, sender, receiver, kind):
    """Entropy for one channel's generator: the network's seed and a stable digest of the channel's identity."""
    digest = hashlib.sha256(f"{sender}\0{receiver}\0{kind}".encode("utf-8")).digest()
    return np.random.SeedSequence([seed, CHANNEL_STREAM, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


# -- the message constraints --------------------------------------------------------------------------------------
def _rows(v):
    """v as (samples, values) for per-sample statistics."""
    return v.reshape(len(v), -1) if v.ndim > 1 else v.reshape(len(v), 1)


def _per_sample(values, v):
    """One value per sample, shaped to broadcast against v."""
    return values.reshape((len(v),) + (1,) * (v.ndim - 1))


LOUD = 10  # an absolute noise σ this many times the RMS of what crosses, at the first step, is warned about


class Noise:
    stochastic = True

    def __init__(self, spec):
        self.std, self.relative = spec.std, bool(spec.relative)

    def __call__(self, v, rng, train):
        if not train or self.std == 0:
            return v
        scale = self.std * _per_sample(np.sqrt(np.mean(np.square(_rows(v)), axis=1)), v) if self.relative \
            else self.std
        return v + (scale * rng.standard_normal(v.shape, dtype=v.dtype)).astype(v.dtype, copy=False)

    def check(self, v, channel):
        """Warn, naming `channel`, when an absolute σ drowns what crosses (over LOUD× its RMS): a trap that shows
        only as poor accuracy, such as σ = 0.01 on targets whose displacements are 10⁻⁴ at batch size 128."""
        if self.relative or self.std == 0:
            return
        rms = float(np.sqrt(np.mean(np.square(v, dtype=np.float64)))) if v.size else 0.0
        if self.std <= LOUD * rms:
            return
        what = "its targets' displacements ĥ − h" if channel.endswith(".target") else "its messages"
        warnings.warn(f"channel {channel}: noise std {self.std:g} is "
                      + (f"{self.std / rms:.3g}× the RMS of {what} ({rms:.3g})" if rms else f"set on {what}, whose "
                         "RMS is 0") + " at the first training step, so they arrive as mostly noise; `relative: "
                      "true` makes std a fraction of each message's RMS", LocalnetWarning, stacklevel=2)


class Quantize:
    stochastic = False

    def __init__(self, spec):
        self.levels = 2 ** (spec.bits - 1) - 1  # per sign: 2^bits − 1 levels in all, 0 included
        self.range = spec.range

    def __call__(self, v, rng, train):
        if self.range is not None:
            scale = np.asarray(self.range, v.dtype)
            u = np.clip(v, -scale, scale)
        else:
            scale = np.abs(_rows(v)).max(axis=1).reshape((len(v),) + (1,) * (v.ndim - 1))
            scale = np.where(scale > 0, scale, 1).astype(v.dtype)
            u = v
        step = scale / self.levels
        return (np.rint(u / step) * step).astype(v.dtype, copy=False)


class Sign:
    stochastic = False

    def __init__(self, spec):
        pass

    def __call__(self, v, rng, train):
        scale = _per_sample(np.abs(_rows(v)).mean(axis=1), v)
        return (np.sign(v) * scale).astype(v.dtype, copy=False)


class Drop:
    stochastic = True

    def __init__(self, spec):
        self.p = spec.p

    def __call__(self, v, rng, train):
        if not train or self.p == 0:
            return v
        kept = rng.random(len(v)) >= self.p
        return v * kept.reshape((len(v),) + (1,) * (v.ndim - 1)).astype(v.dtype)


class Delay:
    """Keeps the last `steps` payloads (with their lags) and delivers the one from `steps` steps ago, or the
    oldest kept before that many exist, with its lag increased by its age."""

    def __init__(self, steps):
        self.steps = steps
        self.queue = deque(maxlen=steps + 1)  # (payload, lag), newest last

    def __call__(self, v, lag):
        self.queue.append((np.array(v), lag))  # a private copy: nothing outside can change what is queued
        old, old_lag = self.queue[0]
        return old, old_lag + len(self.queue) - 1

    def state(self):
        out = {f"queue.{i}": a for i, (a, _) in enumerate(self.queue)}
        out["lags"] = np.array([lag for _, lag in self.queue], np.int64)
        return out

    def load_state(self, state, dtype):
        lags = np.asarray(state.get("lags", np.zeros(0, np.int64)))
        if "lags" not in state or lags.ndim != 1 or lags.dtype != np.int64 or (lags < 0).any():
            raise LocalnetError("invalid delay queue: no valid `lags`")
        if len(lags) > self.steps + 1 or set(state) != {"lags", *(f"queue.{i}" for i in range(len(lags)))}:
            raise LocalnetError(f"invalid delay queue: {len(lags)} entries, keys {sorted(state)}")
        queue = []
        for i, lag in enumerate(lags):
            a = np.asarray(state[f"queue.{i}"])
            if a.dtype != dtype or a.ndim < 1:
                raise LocalnetError(f"invalid delay queue entry {i}: {a.dtype} of shape {a.shape}")
            queue.append((np.array(a), int(lag)))
        self.queue = deque(queue, maxlen=self.steps + 1)


CONSTRAINTS = {"noise": Noise, "quantize": Quantize, "sign": Sign, "drop": Drop}


class Pipeline:
    """The constraints of one channel, with the channel's own generator: the transforms in order, then the
    delays (their steps add up)."""

    def __init__(self, specs, seed_sequence, channel=""):
        """`channel` names the channel in warnings."""
        self.specs, self.channel = specs, channel
        self.checked = False  # whether the first training step's messages have been looked at
        self.steps = [CONSTRAINTS[c.type](c) for c in specs if c.type != "delay"]
        delay = sum(c.steps for c in specs if c.type == "delay")
        self.delay = Delay(delay) if delay else None
        self.stochastic = any(step.stochastic for step in self.steps)
        self.rng = np.random.Generator(np.random.PCG64(seed_sequence))

    @property
    def stateful(self):
        return self.stochastic or self.delay is not None

    def transform(self, v, train):
        check = train and not self.checked
        for step in self.steps:
            if check and isinstance(step, Noise):
                step.check(v, self.channel)
            v = step(v, self.rng, train)
        self.checked = self.checked or train
        return v

    def describe(self):
        out = []
        for c in self.specs:
            args = ", ".join(f"{k}={getattr(c, k)}" for k in PARAMETERS if getattr(c, k) is not None)
            out.append(f"{c.type}({args})" if args else c.type)
        return ", ".join(out)

    # -- state, for checkpoints ----------------------------------------------------------------------------------
    def state(self):
        out = {"rng": np.array(json.dumps(self.rng.bit_generator.state))}
        if self.delay is not None:
            out.update({f"delay.{k}": v for k, v in self.delay.state().items()})
        return out

    def load_state(self, state, dtype):
        try:
            rng_state = parse_json(str(np.asarray(state["rng"])[()]))  # (from a file)
            probe = np.random.PCG64()
            probe.state = rng_state
        except (ValueError, TypeError, KeyError) as exc:
            raise LocalnetError(f"invalid generator state: {exc}") from None
        part = {k[len("delay."):]: v for k, v in state.items() if k.startswith("delay.")}
        extra = sorted(set(state) - {"rng"} - {f"delay.{k}" for k in part})
        if extra or (part and self.delay is None):
            raise LocalnetError(f"unexpected {', '.join(extra or sorted(part))}")
        if self.delay is not None:
            self.delay.load_state(part, np.dtype(dtype))
        self.rng.bit_generator.state = rng_state
        self.checked = True  # a checkpoint comes after the run's first training step, which was looked at then


# -- layer constraints ----------------------------------------------------------------------------------------
def layer_constraint(layer_spec, kind):
    """The layer's constraint spec of type `kind`, or None."""
    for c in layer_spec.constraints:
        if c.type == kind:
            return c
    return None


def check_layer_constraints(spec, graph):
    """Checks that need the graph: fixed_feedback needs a layer that owns a feedback map, and a message constraint
    on the network or a layer must act on some channel."""
    from .graph import spec_error
    used = {id(c) for channel in graph.channels for c in channel.constraints}
    places = [(("network", "constraints", j), c, "the network") for j, c in enumerate(spec.network.constraints)]
    places += [(("network", "layers", i, "constraints", j), c, f"layer {layer.name!r}")
               for i, layer in enumerate(spec.network.layers) for j, c in enumerate(layer.constraints)]
    for path, c, owner in places:
        if c.type in MESSAGE_CONSTRAINTS and id(c) not in used:
            kinds = [c.kind] if c.kind else list(KINDS_OF[c.type])
            raise spec_error(spec, path, f"this {c.type} constraint acts on no channel: {owner} sends no "
                             f"{' or '.join(kinds)} message", expected="a kind of message it sends")
    for i, layer in enumerate(spec.network.layers):
        for j, c in enumerate(layer.constraints):
            if c.type == "fixed_feedback" and layer.name not in graph.feedback_layers:
                owners = ", ".join(graph.feedback_layers) or "none"
                raise spec_error(spec, ("network", "layers", i, "constraints", j),
                                 f"layer {layer.name!r} owns no feedback map under rule {spec.rule.name!r} "
                                 "(a layer owns one when it receives a target and passes one down)",
                                 expected=f"fixed_feedback on a layer with a feedback map ({owners})")
