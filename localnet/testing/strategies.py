"""Hypothesis strategies for localnet: specs, networks, parameter sets, batches, and whole cases (a network with
drawn parameters and a batch) to hand to the checks in `localnet.testing.invariants`::

    from hypothesis import given
    from localnet.testing import cases, check_invariants

    @given(cases("dtp"))
    def test_dtp(case):
        check_invariants(*case)

Every option takes a fixed value, a sequence to sample from, a (low, high) pair of numbers for a range, or a
hypothesis strategy.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.strategies import SearchStrategy

from ..diagnostics.reference import SMOOTH
from ..layers.conv import ACTIVATIONS as CONV_ACTIVATIONS
from ..network import Network
from ..rules import RULES
from ..spec import load_spec

__all__ = ["specs", "conv_layers", "networks", "parameter_sets", "batches", "cases", "Case", "SMOOTH", "ARCHITECTURES"]


def _option(value):
    """A strategy from a fixed value, a sequence (sampled), a (low, high) numeric pair (a range) or a strategy."""
    if isinstance(value, SearchStrategy):
        return value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value):
        lo, hi = value
        if isinstance(lo, int) and isinstance(hi, int):
            return st.integers(lo, hi)
        return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
    if isinstance(value, (list, tuple)):
        return st.sampled_from(list(value))
    return st.just(value)


#: what `specs(architecture=...)` draws: a chain of dense layers; a DAG of dense layers (several inputs, several
#: consumers, identity skips through `add` layers); conv2d blocks on the 1×8×8 digits, then flatten and dense
ARCHITECTURES = ("chain", "graph", "conv")
CONV_INPUT = (1, 8, 8)  # the sample shape conv specs are drawn for (the digits data set's)


def specs(rule="dtp", *, architecture="chain", depth=(2, 4), width=(1, 6), n_classes=(2, 5), activations=SMOOTH,
          output_activation="linear", first_target=("output", "last_hidden"),
          feedback_activations=("tanh", "linear", "sigmoid"), feedback_bias=(True, False), bias=(True, False),
          target_step=(0.01, 2.0), loss=("softmax_cross_entropy", "mse"), optimizer=("sgd", "adam", "rmsprop"),
          feedback_noise=(0.0, 0.3), dtype="float64", backend="numpy", seed=(0, 2**32 - 1)):
    """A spec (a dict for `localnet.load_spec`) for `rule`: drawn depth, widths, hidden activations (the output
    layer's is `output_activation`, its width the number of classes), first-target placement, feedback maps, η̂,
    loss, optimiser, noise and seed. `architecture` (one of ARCHITECTURES, or several to draw from): a chain of
    dense layers; a graph, in which each layer takes the one before it and a drawn subset of the earlier ones, and
    `add` layers join equal-width layers (identity skips); or conv2d blocks (drawn kernels, strides, paddings, max,
    avg or no pooling) on a CONV_INPUT image, then flatten and dense layers. For a rule with feedback maps,
    `last_hidden` networks get at least three layers, so that some layer owns a feedback map."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; registered rules: {', '.join(RULES)}")
    kinds = [architecture] if isinstance(architecture, str) else list(architecture)
    for kind in kinds:
        if kind not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {kind!r}; one of {', '.join(ARCHITECTURES)}")
        if kind == "graph" and not (RULES[rule].graphs and RULES[rule].displaced_targets):
            raise ValueError(f"rule {rule!r} does not run on graphs whose layers have several consumers")
    return _specs(rule, architecture, depth, width, n_classes, activations, output_activation, first_target,
                  feedback_activations, feedback_bias, bias, target_step, loss, optimizer, feedback_noise, dtype,
                  backend, seed)


def _dense(draw, name, width, activations, bias, **extra):
    return {"name": name, "size": draw(_option(width)), "activation": draw(_option(activations)),
            "bias": draw(_option(bias)), **extra}


def _graph(draw, layers):
    """Rewire dense `layers` (the last the output) into a DAG: each takes the one before it and a drawn subset of
    the earlier ones (and perhaps the data); an `add` layer may join a layer with an earlier one of its width."""
    out, widths = [], {}
    for i, layer in enumerate(layers):
        earlier = [x["name"] for x in out]
        if earlier:
            extra = draw(st.lists(st.sampled_from(["input", *earlier[:-1]]), unique=True, max_size=2))
            layer = {**layer, "inputs": [earlier[-1], *extra]}
        out.append(layer)
        widths[layer["name"]] = layer["size"]
        same = [n for n in earlier if widths[n] == layer["size"]]
        if i < len(layers) - 1 and same and draw(st.booleans()):
            out.append({"name": f"add{i + 1}", "type": "add", "inputs": [layer["name"], draw(st.sampled_from(same))]})
            widths[out[-1]["name"]] = layer["size"]
    return out


@st.composite
def conv_layers(draw, image=CONV_INPUT, activations=("tanh", "linear", "sigmoid")):
    """Layer dicts for a spec: one or two conv2d blocks whose drawn kernels, strides, paddings and pooling (max,
    avg or none) fit a C×H×W `image`, then a flatten layer."""
    layers, size = [], tuple(image[1:])
    for i in range(draw(st.integers(1, 2))):
        k = draw(st.integers(1, min(3, *size)))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        conv = [(n + 2 * pad - k) // stride + 1 for n in size]
        pool = draw(st.sampled_from([None, "max", "avg"])) if min(conv) >= 2 else None
        layers.append({"name": f"c{i + 1}", "type": "conv2d", "channels": draw(st.integers(1, 3)), "kernel": k,
                       "stride": stride, "padding": pad, "pool": pool, "pool_size": 2,
                       "activation": draw(_option(_conv_activations(activations)))})
        size = [n // 2 for n in conv] if pool else conv
    return [*layers, {"name": "flat", "type": "flatten"}]


def _conv_activations(option):
    """Those of `option` (a name or a sequence) a conv block supports; a strategy is taken as it is."""
    if isinstance(option, SearchStrategy):
        return option
    names = [option] if isinstance(option, str) else list(option)
    return [a for a in names if a in CONV_ACTIVATIONS] or ["tanh"]


@st.composite
def _specs(draw, rule, architecture, depth, width, n_classes, activations, output_activation, first_target,
           feedback_activations, feedback_bias, bias, target_step, loss, optimizer, feedback_noise, dtype, backend,
           seed):
    kind = draw(_option(architecture))
    placement = draw(_option(first_target))
    if placement not in RULES[rule].first_targets:
        placement = RULES[rule].first_targets[0]
    n_layers = draw(_option(depth))
    if RULES[rule].uses_feedback and placement == "last_hidden":
        n_layers = max(n_layers, 3)
    classes = draw(_option(n_classes))
    layers = [_dense(draw, f"l{i + 1}", width, activations, bias) for i in range(n_layers - 1)]
    layers.append({"name": "out", "size": classes, "activation": draw(_option(output_activation)),
                   "bias": draw(_option(bias))})
    if kind == "graph":
        layers = _graph(draw, layers)
    elif kind == "conv":
        layers = [*draw(conv_layers(CONV_INPUT, activations)), *layers[-2:]]
    # a conv block's feedback map has deterministic activations only
    fb_activations = _conv_activations(feedback_activations) if kind == "conv" else feedback_activations
    if RULES[rule].linear_feedback:  # the rule's feedback maps are linear (DDTP's Q, feedback alignment's B)
        fb_activations, feedback_bias = "linear", False
    opt = draw(_option(optimizer))
    noise = draw(_option(feedback_noise))
    if RULES[rule].feedback_service is not None and not noise:  # its feedback loss divides by σ²
        noise = 0.1
    return {
        "name": f"hypothesis-{rule}", "seed": draw(_option(seed)), "dtype": draw(_option(dtype)),
        "backend": draw(_option(backend)), "data": {"name": "digits"},
        "network": {"layers": layers, "loss": draw(_option(loss)),
                    "feedback": {"activation": draw(_option(fb_activations)),
                                 "bias": draw(_option(feedback_bias))}},
        "rule": {"name": rule, "target_step": draw(_option(target_step)), "first_target": placement,
                 "feedback_noise": noise, "feedback_iterations": 1},
        "optimizer": {"forward": {"type": opt, "lr": 0.05}, "feedback": {"type": opt, "lr": 0.02}},
    }


def _shapes(target):
    if isinstance(target, Network):
        return {name: {k: v.shape for k, v in p.items()} for name, p in target.parameters().items()}
    return {name: {k: tuple(np.shape(v)) for k, v in p.items()} for name, p in target.items()}


@st.composite
def parameter_sets(draw, target, scale=(0.2, 1.0)):
    """A dict shaped like `target.parameters()` (target: a Network, or such a dict), for `load_parameters`: every
    array Gaussian with a drawn standard deviation, from a drawn seed (so nonzero biases and feedback biases, which
    a fresh network's zeros would hide)."""
    shapes = _shapes(target)
    sigma = draw(_option(scale))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {name: {k: sigma * rng.standard_normal(shape) for k, shape in p.items()} for name, p in shapes.items()}


@st.composite
def batches(draw, n_features, n_classes, size=(1, 8), elements=(-2.0, 2.0), dtype="float64"):
    """(x, y): x of shape (size, n_features) with entries drawn from `elements`, y labels below n_classes."""
    n = draw(_option(size))
    lo, hi = elements
    x = draw(hnp.arrays(np.float64, (n, n_features),
                        elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False)))
    y = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)), dtype=np.int64)
    return x.astype(dtype), y


class Case:
    """A network with drawn parameters and a batch; unpacks as (net, x, y), so `check(*case)` works."""

    def __init__(self, net, x, y, spec=None):
        self.net, self.x, self.y, self.spec = net, x, y, spec

    def __iter__(self):
        return iter((self.net, self.x, self.y))

    def __repr__(self):
        s = self.net.spec
        layers = ", ".join(f"{layer.name}: {layer.type} {layer.size or layer.channels or ''} {layer.activation}"
                           + (f" <- {'+'.join(layer.inputs)}" if layer.inputs else "") for layer in s.network.layers)
        fb = s.network.feedback
        return (f"Case(rule={s.rule.name}, first_target={s.rule.first_target}, target_step={s.rule.target_step!r}, "
                f"layers=[{layers}], feedback={fb.activation} bias={fb.bias}, loss={s.network.loss}, "
                f"seed={self.net.seed}, n_features={self.net.n_features}, x={self.x.tolist()!r}, "
                f"y={self.y.tolist()!r}, spec={self.spec!r})")


@st.composite
def _network(draw, rule, n_features, scale, spec_options):
    spec = draw(specs(rule, **spec_options))
    conv = any(layer.get("type") == "conv2d" for layer in spec["network"]["layers"])
    features = CONV_INPUT if conv else draw(_option(n_features))
    net = Network(load_spec(spec), spec["seed"], features, spec["network"]["layers"][-1]["size"])
    net.load_parameters(draw(parameter_sets(net, scale)))
    return net, spec


def networks(rule="dtp", *, n_features=(1, 6), scale=(0.2, 1.0), **spec_options):
    """A Network for `rule` built from `specs(rule, **spec_options)`, with parameters from `parameter_sets`."""
    specs(rule, **spec_options)  # unknown rules and options fail here, not at the first draw
    return _network(rule, n_features, scale, spec_options).map(lambda pair: pair[0])


def cases(rule="dtp", *, batch_size=(1, 8), elements=(-2.0, 2.0), n_features=(1, 6), scale=(0.2, 1.0),
          **spec_options):
    """A Case: a network as `networks(rule, ...)` draws it and a batch from `batches` that fits it."""
    specs(rule, **spec_options)
    return _cases(rule, batch_size, elements, n_features, scale, spec_options)


@st.composite
def _cases(draw, rule, batch_size, elements, n_features, scale, spec_options):
    net, spec = draw(_network(rule, n_features, scale, spec_options))
    x, y = draw(batches(net.n_features, net.n_classes, batch_size, elements, str(net.dtype)))
    return Case(net, x, y, spec)
