"""The invariants of DESIGN §4 as public checks: each takes a network and a batch, raises AssertionError with a
message naming the layer and the numbers when the invariant fails, and leaves the network it was given untouched
(it works on clones built from the network's spec, seed and full state).

Every check computes its reference values with its own float64 numpy (`localnet.diagnostics.reference`), never
with `localnet.backends` or `localnet.rules`, and a check that finds nothing to check fails rather than pass
vacuously. Tolerances scale with the network's dtype and the magnitudes involved; a wrong formula misses them by
orders of magnitude.

Which rules satisfy which check (the built-ins are tested both ways, in tests/test_testing.py):

======================  ====  ====  ====
check                   dtp   tp    bp
======================  ====  ====  ====
no_error_no_change      yes   no    no
exact_inverse           yes   yes   no (no feedback maps)
difference_identity     yes   no    no (no feedback maps)
first_order_descent     yes   yes   yes
locality                yes   yes   yes (its non-locality is in what the *sender* computes: weight transport)
determinism             yes   yes   yes
======================  ====  ====  ====

These checks assume channels without noise, quantisation or delay (the invariants are about the rule).
"""

from __future__ import annotations

import math

import numpy as np

from ..diagnostics import reference
from ..diagnostics.record import record_step
from ..graph import LOSS
from ..layers.base import combined
from ..messages import BACKWARD_KINDS
from ..network import Network
from ..rules import get_rule
from ..rules.base import Step
from ..spec import load_spec

__all__ = ["check_no_error_no_change", "check_exact_inverse_dtp_equals_tp", "check_difference_identity",
           "check_first_order_descent", "check_locality", "check_determinism", "check_invariants", "CHECKS",
           "clone"]


# -- helpers ------------------------------------------------------------------------------------------------------
def clone(net, overrides=()) -> Network:
    """A new network with `net`'s spec (plus `key.path=value` overrides), seed, sizes and full state
    (parameters, optimiser states, generators; channels' state where channels keep one)."""
    spec = load_spec(net.spec, list(overrides)) if overrides else net.spec
    other = Network(spec, net.seed, net.input_shape, net.n_classes)
    other.load_state(net.state())
    if hasattr(net, "channel_state"):
        other.load_channel_state(net.channel_state())
    return other


def _eps(net):
    return float(np.finfo(net.dtype).eps)


def _rule(net):
    return net.spec.rule.name


def _max(*arrays):
    return max((float(np.max(np.abs(np.asarray(a, np.float64)))) for a in arrays if a is not None and np.size(a)),
               default=0.0)


def _g(layer, h):
    """The layer's feedback map g(h), computed by its float64 reference (the layer protocol), flattened per sample."""
    return _rows(layer.reference().g(h))


def _f(layer, x):
    """The layer's forward map f(x), computed by its float64 reference (a stochastic unit gives its mean)."""
    return _rows(layer.reference().f(x))


def _rows(a):
    """`a` as float64 (batch, features): layers of several families compare in one layout."""
    a = np.asarray(a, np.float64)
    return a.reshape(len(a), -1)


def _sender(net, name):
    channels = net.graph.inbound(name, BACKWARD_KINDS)
    return channels[0].sender if channels else None


def _fail(title, failures):
    if failures:
        raise AssertionError(title + ":\n  " + "\n  ".join(failures))


def _nothing(net, what):
    raise AssertionError(f"rule {_rule(net)!r}: {what}, so this invariant has nothing to check (it is about rules "
                         "that send targets down through feedback maps g)")


def _feedback_pairs(net, records):
    """(name, layer, record) of each layer that owns g, learned from a target and sent a target down."""
    return [(name, layer, records[name]) for name, layer in net.layers.items()
            if layer.has_feedback and records[name].received == "target" and _sent(layer, records[name]) is not None]


def _sent(layer, record, kind="target"):
    """What the layer sent down as `kind`, joined into its input x's shape (each input its part), or None."""
    outbox = record.outbox
    parts = {sender: outbox.get((kind, sender), outbox.get(kind)) for sender, _ in layer.inputs}
    if any(part is None for part in parts.values()):
        return None
    return layer.join(parts)


def _batch(x, y):
    return np.asarray(x), np.asarray(y)


# -- the checks -----------------------------------------------------------------------------------------------------
def check_no_error_no_change(net, x, y):
    """No error, no change: with the first target equal to the activation (target step η̂ = 0), every target
    equals its layer's activation, for any feedback maps, and every forward update is zero — except that of a
    layer trained on ℒ's own gradient straight from the loss node (the output layer under `last_hidden`).

    Equality is to rounding: (h + g(ĥ)) − g(h) need not be h to the last bit. The tolerance is 64 ulps of the
    largest magnitude involved, per layer, times how much the feedback maps below can amplify a difference (the
    product of max(1, ‖V_i‖) in the ∞→∞ norm). Plain TP fails this (ĥ_{i-1} = g_i(h_i) ≠ h_{i-1}), and so does
    backprop (η̂ scales no gradient it sends down)."""
    x, y = _batch(x, y)
    zero = clone(net, ["rule.target_step=0"])
    records = record_step(zero, x, y)
    gain = 1.0
    magnitudes = [x]
    for name, layer in zero.layers.items():
        r = records[name]
        magnitudes += [r.h, r.target]
        ref = layer.reference()
        if ref.has_g:
            magnitudes.append(ref.g(r.h))
            gain *= ref.feedback_gain()
    tol = 64 * _eps(net) * len(zero.layers) * gain * (1.0 + _max(*magnitudes))
    failures = []
    for name, r in records.items():
        gap = _max(np.asarray(r.target, np.float64) - np.asarray(r.h, np.float64).reshape(np.shape(r.target)))
        if not gap <= tol:
            failures.append(f"layer {name!r}: its target differs from its activation by up to {gap:.3g} "
                            f"(tolerance {tol:.2g})")
    for name, r in records.items():
        if r.received == "gradient" and _sender(zero, name) == LOSS:
            continue  # trained on ℒ itself, which η̂ does not scale
        size = _max(*r.grads.values())
        bound = 4 * tol * (1.0 + _max(r.x))
        if not size <= bound:
            failures.append(f"layer {name!r}: its forward update is not zero: largest gradient entry {size:.3g} "
                            f"(tolerance {bound:.2g}; it learned from a {r.received} sent by {_sender(zero, name)!r})")
    _fail(f"no error, no change fails for rule {_rule(net)!r} with target_step 0", failures)


def check_exact_inverse_dtp_equals_tp(net, x, y, seed=None):
    """Exact inverses make DTP equal TP: on a variant of `net` in which every layer that owns a feedback map is
    square and linear with a linear g that inverts it exactly (W a scaled orthogonal matrix, V = W⁻¹,
    c = −b W⁻¹, so g_i(f_i(h)) = h), every target a layer sends down equals TP's g_i(ĥ_i), and the inverse is
    two-sided: f_i(ĥ_{i-1}) = ĥ_i.

    The variant keeps the spec's rule, depth, loss, first-target placement and the other layers' activations; every
    layer gets n_classes units (so the maps can be square) and random parameters drawn from `seed` (default: the
    network's). Fails for a rule without feedback maps."""
    x, y = _batch(x, y)
    owners = [i for i, layer in enumerate(net.layers.values()) if layer.has_feedback]
    if not owners:
        _nothing(net, "no layer owns a feedback map")
    lacking = [f"{name} ({layer.family})" for name, layer in net.layers.items() if not layer.has_exact_inverse]
    if lacking:
        _nothing(net, f"layers {', '.join(lacking)} have no exactly invertible variant")
    n = net.n_classes
    overrides = []
    for i, layer in enumerate(net.layers.values()):
        overrides += layer.exact_inverse_overrides(f"network.layers.{i}", n, owner=i in owners)
    spec = load_spec(net.spec, overrides)
    variant = Network(spec, net.seed, net.input_shape, net.n_classes)
    rng = np.random.default_rng(net.seed if seed is None else seed)
    params = variant.parameters()
    for name, layer in variant.layers.items():
        if layer.has_feedback:
            layer.exact_inverse_parameters(params[name], rng)
        else:
            for k in params[name]:
                params[name][k] = 0.6 * rng.standard_normal(params[name][k].shape)
    variant.load_parameters(params)
    records = record_step(variant, x, y)
    pairs = _feedback_pairs(variant, records)
    if not pairs:
        _nothing(net, "no layer that owns g sends a target down")
    eps, failures = _eps(net), []
    for name, layer, r in pairs:
        sent = np.asarray(_sent(layer, r), np.float64)
        tp = _g(layer, r.target)
        forward = _f(layer, sent)
        sent = _rows(sent)
        tol = 64 * eps * math.sqrt(n) * len(pairs) * (1.0 + _max(sent, tp, r.target, r.h, r.x))
        gap = _max(sent - tp)
        if not gap <= tol:
            failures.append(f"layer {name!r}: the target it sends down differs from TP's g(ĥ) by up to {gap:.3g} "
                            f"(tolerance {tol:.2g})")
        gap = _max(forward - _rows(r.target))
        if not gap <= tol:
            failures.append(f"layer {name!r}: f(ĥ_below) differs from its own target ĥ by up to {gap:.3g} "
                            f"(tolerance {tol:.2g}): the inverse is not two-sided for these targets")
    _fail(f"exact inverses do not make rule {_rule(net)!r} equal TP", failures)


def check_difference_identity(net, x, y):
    """The difference correction identity: for every layer i that owns g and sends a target down,
    g_i(ĥ_i) − ĥ_{i-1} = g_i(h_i) − h_{i-1}, where h_{i-1} is the input layer i received and ĥ_{i-1} the target
    it sent. (DTP's ĥ_{i-1} = h_{i-1} + g_i(ĥ_i) − g_i(h_i) rearranged; it holds for any g.) TP fails it whenever
    g does not reconstruct exactly; a rule without feedback maps fails it as vacuous."""
    x, y = _batch(x, y)
    net = clone(net)  # its layers keep the recorded step's state, which their references read (e.g. pooling)
    records = record_step(net, x, y)
    pairs = _feedback_pairs(net, records)
    if not pairs:
        _nothing(net, "no layer sends a target down through a feedback map")
    eps, failures = _eps(net), []
    for name, layer, r in pairs:
        lower = _rows(_sent(layer, r))
        g_t, g_h = _g(layer, r.target), _g(layer, r.h)
        width = math.prod(layer.out_shape)
        tol = 32 * eps * math.sqrt(width) * (1.0 + _max(g_t, g_h, lower, r.x))
        gap = _max((g_t - lower) - (g_h - _rows(r.x)))
        if not gap <= tol:
            failures.append(f"layer {name!r}: g(ĥ) − ĥ_below and g(h) − h_below differ by up to {gap:.3g} "
                            f"(tolerance {tol:.2g})")
    _fail(f"the difference identity fails for rule {_rule(net)!r}", failures)


def _layer_loss(layer, record):
    """The loss a layer's update descends, as a function of its flat forward parameters, with its input and message
    fixed: ‖f(x; p) − ĥ‖² (summed over units, averaged over the batch) for a target ĥ, or Σ⟨δ, f(x; p)⟩ for a
    gradient δ (ℒ to first order; its gradient is exactly backprop's). f through the layer's float64 reference,
    `pool(s(pre(x, p)))`, pooling fixed by the recorded step."""
    ref = layer.reference()
    x = np.asarray(record.x, np.float64)
    keys = layer.forward_keys
    shapes = [layer.parameters()[k].shape for k in keys]
    # what the message means is the rule's to say (`Rule.error`): the target the layer descends (what it received,
    # or the one it formed from a direct message, DDTP), or the gradient δ at its output (DFA's e B, say)
    kind = record.received
    message = combined(record.inbox("backward"), kind, record.h)
    if getattr(layer, "rule", None) is None:  # a family without parameters (flatten, add) takes messages as they come
        delta, target = (None, record.target) if kind == "target" else (message, None)
    else:
        delta, target = layer.rule.error(layer, Step(record.x, record.a, record.h, kind, message))
    kind = "target" if target is not None else "gradient"
    message = np.asarray(record.target if target is not None else delta, np.float64)

    def unflat(theta):
        out, at = {}, 0
        for k, shape in zip(keys, shapes):
            size = int(np.prod(shape))
            out[k] = theta[at:at + size].reshape(shape)
            at += size
        return out

    def loss(theta):
        h = ref.f(x, unflat(theta))
        if kind == "target":
            return float(np.sum((h - message) ** 2) / len(x))
        return float(np.sum(message * h))

    def scale(theta):
        """The magnitude of the terms the gradient sums (so rounding in the layer's own dtype can be bounded)."""
        a = ref.pre(x, unflat(theta))
        s = reference.activation(ref.activation, a)
        h = ref.pool(s)
        if kind == "target":  # h − ĥ cancels terms of size |h| + |ĥ|
            dh, dh_terms = 2 * np.abs(h - message) / len(x), 2 * (np.abs(h) + np.abs(message)) / len(x)
        else:
            dh = dh_terms = np.abs(message)
        # s' itself may be computed from s with cancellation (1 − s² for a saturated tanh): terms of size
        derivative_terms = {"tanh": 1 + s * s, "sigmoid": np.abs(s) + s * s}.get(ref.activation, 0.0)
        e = (ref.pool_vjp(dh_terms) * np.abs(reference.derivative(ref.activation, a))
             + ref.pool_vjp(dh) * derivative_terms)
        return float(sum(np.linalg.norm(v) for v in ref.param_vjp(np.abs(x), e).values()))

    def room(theta, u, eps):
        """How far along the unit direction u the loss stays smooth: for relu units, the step at which the
        nearest pre-activation would cross 0 (a kink), counting as already crossed a pre-activation within
        rounding (`eps`) of 0 in the layer's own dtype; math.inf for smooth units."""
        if ref.activation != "relu":
            return math.inf
        p, d = unflat(theta), unflat(u)
        a = ref.pre(x, p)
        rate = ref.pre(np.abs(x), {k: np.abs(v) for k, v in d.items()})
        noise = 64 * eps * ref.pre(np.abs(x), {k: np.abs(v) for k, v in p.items()})
        moving = rate > 0
        if not moving.any():
            return math.inf
        if (np.abs(a) <= noise)[moving].any():
            return 0.0
        with np.errstate(over="ignore"):
            return float(np.min(np.abs(a)[moving] / rate[moving]))

    return loss, scale, reference.flat([ref.params[k] for k in keys]), keys, room


def check_first_order_descent(net, x, y, directions=3, step=1e-5):
    """Each layer's update descends, to first order, the loss it is trained on, with its input and its message held
    fixed: its local loss ‖f_i(h_{i-1}) − ĥ_i‖² when it received a target, ⟨δ, f_i(h_{i-1})⟩ (ℒ linearised) when it
    received a gradient δ. Precisely: the gradient g its update uses is the gradient of that loss — the loss's
    derivative along the update −g is −‖g‖² (the first-order decrease), and along `directions` random directions u
    it is ⟨g, u⟩; derivatives by central differences of the loss computed here (step `step`, float64).

    What is *not* exactly true, and so not checked: that a layer's update lowers the local loss of the layer above,
    ‖f_{i+1}(h_i) − ĥ_{i+1}‖². Moving h_i toward ĥ_i does that only when J_f J_g ≈ I (Lee et al.'s condition);
    with an exact two-sided inverse f_{i+1}(ĥ_i) = ĥ_{i+1}, which check_exact_inverse_dtp_equals_tp checks.

    Needs differentiable units: step and stochastic_binary layers learn through a surrogate derivative, which is
    not the derivative of their loss (ValueError). A direction along which a relu unit would cross its kink within
    the difference step is checked with a smaller step, or left out where the unit sits on the kink."""
    x, y = _batch(x, y)
    rough = {name: layer.reference().activation for name, layer in net.layers.items()
             if layer.reference().activation not in reference.SMOOTH}
    if rough:
        raise ValueError(f"check_first_order_descent needs differentiable units; {rough} learn through a "
                         "surrogate derivative, which is not the derivative of their loss")
    net = clone(net)  # its layers keep the recorded step's state, which their references read (e.g. pooling)
    records = record_step(net, x, y)
    rng = np.random.default_rng(12345)
    rtol = max(1e-6, 256 * _eps(net))
    failures = []
    for name, layer in net.layers.items():
        r = records[name]
        if r.received is None:
            failures.append(f"layer {name!r} received no target or gradient")
            continue
        loss, scale, theta, keys, room = _layer_loss(layer, r)
        g = reference.flat([r.grads[k] for k in keys])
        base = loss(theta)
        tol_scale = scale(theta) + np.linalg.norm(g)
        units = []
        if np.linalg.norm(g) > 0:
            units.append(("the update direction −g", -g / np.linalg.norm(g)))
        for i in range(directions):
            u = rng.standard_normal(theta.size)
            units.append((f"random direction {i + 1}", u / np.linalg.norm(u)))
        for what, u in units:
            h = min(step, 0.5 * room(theta, u, _eps(net)))
            if h < 1e-8:
                continue  # a relu unit sits on its kink: no derivative along u to compare with
            slope = (loss(theta + h * u) - loss(theta - h * u)) / (2 * h)
            want = float(g @ u)
            tol = rtol * tol_scale + 1e-9 * (1.0 + abs(base))
            if not abs(slope - want) <= tol:
                failures.append(f"layer {name!r} ({r.received}): along {what} its loss changes at rate {slope:.6g}, "
                                f"its update says {want:.6g} (tolerance {tol:.2g})")
    _fail(f"rule {_rule(net)!r}: updates are not the gradients of the losses the layers are trained on", failures)


def _differences(a, b):
    """Keys whose arrays differ in dtype, shape or any bit between two {key: array} dicts."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or np.asarray(a[k]).dtype != np.asarray(b[k]).dtype
            or np.shape(a[k]) != np.shape(b[k]) or np.asarray(a[k]).tobytes() != np.asarray(b[k]).tobytes()]


def check_locality(net, x, y, seed=0):
    """Locality: a layer's update depends only on its own state and the messages it received. For each layer, its
    inbox is recorded in a dry step; then, in two clones of the network, one as it was and one with every *other*
    layer's parameters replaced by random values (and their generators moved on), the layer's phase methods are
    called directly with that recorded inbox and its own generator state: what it sends, its gradients and its
    parameters and optimiser state after its update must be identical, bit for bit."""
    x, y = _batch(x, y)
    records = record_step(clone(net), x, y)
    rng = np.random.default_rng(seed)
    failures = []
    for name in net.layers:
        r = records[name]
        results = []
        for perturb in (False, True):
            other = clone(net)
            if perturb:
                for other_name, layer in other.layers.items():
                    if other_name == name:
                        continue
                    for value in layer.parameters().values():
                        value[...] = rng.standard_normal(value.shape) + 1.5
                    layer.rng.random(17)
            layer = other.layers[name]
            layer.rng.bit_generator.state = r.rng_state
            sent_up = layer.forward(r.inbox("forward"), True)
            sent_down = layer.backward(r.inbox("backward"))
            grads = {k: np.array(v, copy=True) for k, v in (layer.grads or {}).items()}
            layer.apply_update()
            results.append(({k: np.array(v) for k, v in sent_up.items()},
                            {k: np.array(v) for k, v in sent_down.items()}, grads, layer.state()))
        (up_a, down_a, grads_a, state_a), (up_b, down_b, grads_b, state_b) = results
        for what, a, b in (("what it sends up", up_a, up_b), ("what it sends down", down_a, down_b),
                           ("its gradients", grads_a, grads_b), ("its state after the update", state_a, state_b)):
            diff = _differences(a, b)
            if diff:
                failures.append(f"layer {name!r}: {what} ({', '.join(diff)}) changed when only other layers' "
                                "parameters changed, with its inbox held fixed")
    _fail(f"rule {_rule(net)!r} is not local", failures)


def check_determinism(net, x, y, steps=3):
    """Same seed, same numbers: two networks built from `net`'s spec and seed start bit-identical; loaded with
    `net`'s parameters and trained `steps` train_steps on the batch (feedback noise, sampling and all), they end
    with bit-identical parameters, optimiser states and generator states, and report identical metrics (a step
    that overflows must overflow the same way: NaN and Inf bits are compared like any others)."""
    x, y = _batch(x, y)
    a, b = (Network(net.spec, net.seed, net.input_shape, net.n_classes) for _ in range(2))
    failures = []
    sa, sb = a.state(), b.state()
    for name in sa:
        diff = _differences(sa[name], sb[name])
        if diff:
            failures.append(f"layer {name!r}: freshly built from the same seed, {', '.join(diff)} differ")
    params = net.parameters()
    metrics = []
    for n in (a, b):
        n.load_parameters(params)
        with np.errstate(all="ignore"):  # a run that diverges must diverge identically: NaNs are compared too
            metrics.append([n.train_step(x, y) for _ in range(steps)])
    if repr(metrics[0]) != repr(metrics[1]):
        failures.append(f"the metrics of {steps} train_steps differ: {metrics[0]} and {metrics[1]}")
    sa, sb = a.state(), b.state()
    for name in sa:
        diff = _differences(sa[name], sb[name])
        if diff:
            failures.append(f"layer {name!r}: after {steps} train_steps, {', '.join(diff)} differ")
    if hasattr(a, "channel_state"):
        diff = _differences(a.channel_state(), b.channel_state())
        if diff:
            failures.append(f"after {steps} train_steps, the channels' state differs: {', '.join(diff)}")
    _fail(f"rule {_rule(net)!r}: the same seed does not give the same numbers", failures)


CHECKS = {
    "no_error_no_change": check_no_error_no_change,
    "exact_inverse": check_exact_inverse_dtp_equals_tp,
    "difference_identity": check_difference_identity,
    "first_order_descent": check_first_order_descent,
    "locality": check_locality,
    "determinism": check_determinism,
}


def check_invariants(net, x, y, skip=(), only=None):
    """Run the checks of DESIGN §4 that the network's rule declares (`Rule.invariants`), or exactly those named in
    `only` (declared or not: a check a rule does not declare can be run to show that it fails), minus those in
    `skip`; names as in CHECKS. One AssertionError lists every check that failed, each with its own message.
    Returns the names of the checks that ran, in CHECKS' order."""
    named = set(skip) | set(only or ())
    unknown = named - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; the checks are {', '.join(CHECKS)}")
    chosen = set(only) if only is not None else set(get_rule(_rule(net)).invariants)
    failures, ran = [], []
    for name, check in CHECKS.items():
        if name not in chosen or name in skip:
            continue
        ran.append(name)
        try:
            check(net, x, y)
        except AssertionError as exc:
            failures.append(f"[{name}] {exc}")
    if failures:
        raise AssertionError(f"{len(failures)} of {len(ran)} invariants fail:\n" + "\n".join(failures))
    return ran
