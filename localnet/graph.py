"""The network graph: which channels exist, checked once at build time, and a deterministic schedule.

Nodes are `input` (the data source), the layers and `loss`; edges are channels with a kind, a per-sample shape
and a dtype. Every check failure names the spec line that declared the offending channel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import networkx as nx

from .channels import Channel
from .constraints import constraints_for
from .messages import BACKWARD_KINDS, FORWARD_KINDS
from .rules import get_rule
from .spec import Spec
from .spec.names import INPUT_TARGET_LOSSES

INPUT, LOSS = "input", "loss"


@dataclass(frozen=True)
class NetworkGraph:
    graph: nx.MultiDiGraph
    layers: tuple  # layer names, in spec order
    n_in: dict  # layer name (and `loss`) -> per-sample shape of its input x (several inputs: as its family joins them)
    shapes: dict  # node -> per-sample shape of its output (`input`: the data's sample shape)
    forward_order: tuple  # nodes in the order the forward phase runs them
    backward_order: tuple  # nodes in the order the backward phase runs them
    feedback_layers: tuple  # layers that own a feedback map g
    direct_in: dict = None  # layer -> size of the output it gets direct targets from (DDTP), where one does
    inputs: dict = None  # layer -> ((sender, per-sample shape), ...): its inputs, in order

    @property
    def is_chain(self):
        """Whether every layer has one input and one consumer."""
        return all(len(self.inbound(n, ("activation",))) == 1 and len(self.outbound(n, ("activation",))) == 1
                   for n in self.layers)

    @property
    def channels(self):
        return [d["channel"] for _, _, d in sorted(self.graph.edges(data=True), key=lambda e: e[2]["index"])]

    def inbound(self, node, kinds):
        return [d["channel"] for _, _, d in self.graph.in_edges(node, data=True) if d["channel"].kind in kinds]

    def outbound(self, node, kinds):
        return [d["channel"] for _, _, d in self.graph.out_edges(node, data=True) if d["channel"].kind in kinds]


def _declared_edges(spec):
    """(sender, receiver, kind, key path of the declaration) for each channel, from `channels`, the layers'
    `inputs` or `chain`."""
    net = spec.network
    if net.channels is not None:
        return [(c.from_, c.to, c.kind, ("network", "channels", i)) for i, c in enumerate(net.channels)]
    if not _is_plain_chain(net.layers):
        return _edges_of_inputs(spec)
    chain = net.chain or (INPUT, *(layer.name for layer in net.layers), LOSS)
    where = ("network", "chain")
    if len(chain) < 3 or chain[0] != INPUT or chain[-1] != LOSS:
        raise spec_error(spec, where, "a chain runs from `input` through the layers to `loss`",
                         expected="[input, <layer>, ..., loss]", found=list(chain))
    rule = get_rule(spec.rule.name)
    top_kind, down_kind = rule.chain_kinds(spec.rule.first_target)
    edges = [(a, b, "activation", where) for a, b in zip(chain, chain[1:])]
    edges.append((INPUT, LOSS, "label", where))
    custom = rule.chain_backward(tuple(chain[1:-1])) if spec.rule.first_target == "output" else None
    if custom is not None:  # e.g. DDTP: the output layer straight to every hidden layer, but to none that only
        from .layers.base import family  # passes messages on (flatten: a direct message has nothing to pass)
        types = {layer.name: layer.type for layer in net.layers}
        return edges + [(a, b, kind, where) for a, b, kind in custom
                        if (a, b) == (LOSS, chain[-2]) or family(types[b]).offers is not None]
    edges.append((LOSS, chain[-2], top_kind, where))
    edges += [(b, a, down_kind, where) for a, b in reversed(list(zip(chain[1:-2], chain[2:-1])))]
    return edges


def _inputs_of(layers, i):
    layer = layers[i]
    return tuple(layer.inputs) if layer.inputs is not None else ((layers[i - 1].name,) if i else (INPUT,))


def _is_plain_chain(layers):
    """Whether the layers' `inputs` (given or implied) make the chain of the layers in spec order."""
    return all(_inputs_of(layers, i) == ((layers[i - 1].name,) if i else (INPUT,)) for i in range(len(layers)))


def _edges_of_inputs(spec):
    """The channels of a graph the layers' `inputs` declare: an activation along each input edge and the last
    layer's to the loss; backward, the rule's kinds against each of them (DESIGN §8: a layer feeding several
    consumers gets a message from each)."""
    rule = get_rule(spec.rule.name)
    layers = spec.network.layers
    if not rule.graphs:
        i = next(i for i, layer in enumerate(layers) if layer.inputs is not None)
        raise spec_error(spec, ("network", "layers", i, "inputs"), f"rule {rule.name!r} runs on chains of layers "
                         "only (each layer one input, one consumer)", found=f"inputs: {list(layers[i].inputs)}")
    top_kind, down_kind = rule.chain_kinds(spec.rule.first_target)
    forward, fed = [], set()
    for i, layer in enumerate(layers):
        where = ("network", "layers", i, *(("inputs",) if layer.inputs is not None else ()))
        for sender in _inputs_of(layers, i):
            forward.append((sender, layer.name, "activation", where))
            fed.add(sender)
    last = layers[-1].name
    for i, layer in enumerate(layers[:-1]):
        if layer.name not in fed:
            raise spec_error(spec, ("network", "layers", i), f"layer {layer.name!r} feeds no other layer, and only "
                             f"the last one listed ({last!r}) feeds the loss", expected=f"{layer.name!r} among the "
                             "inputs of a later layer, or listed last")
    top = ("network", "layers", len(layers) - 1)
    edges = [*forward, (last, LOSS, "activation", top), (INPUT, LOSS, "label", top), (LOSS, last, top_kind, top)]
    edges += [(b, a, down_kind, where) for a, b, _, where in reversed(forward) if a != INPUT]
    return edges


def spec_error(spec, path, message, expected=None, found=None):
    from .spec.validate import Context
    ctx = spec.origin or Context()
    return ctx.error(path, message, expected=expected, found=found)


def build_graph(spec: Spec, input_shape, n_classes: int) -> NetworkGraph:
    """`input_shape`: the data's per-sample shape (an int is a vector of that many features)."""
    from .layers.base import family
    rule = get_rule(spec.rule.name)
    input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    n_features = math.prod(input_shape)
    order = [INPUT, *(layer.name for layer in spec.network.layers), LOSS]
    rank = {name: i for i, name in enumerate(order)}
    layer_specs = {layer.name: (i, layer) for i, layer in enumerate(spec.network.layers)}
    edges = _declared_edges(spec)

    g = nx.MultiDiGraph()
    g.add_nodes_from(order)
    for sender, receiver, kind, where in edges:
        for end in (sender, receiver):
            if end not in rank:
                raise spec_error(spec, where, f"channel names an unknown node {end!r}",
                                 expected="one of " + ", ".join(order))
        if sender == receiver:
            raise spec_error(spec, where, f"channel from {sender!r} to itself")

    # the forward phase first: it fixes each layer's input size
    producers = {}
    for sender, receiver, kind, where in edges:
        if kind not in FORWARD_KINDS:
            continue
        if kind == "label" and (sender, receiver) != (INPUT, LOSS):
            raise spec_error(spec, where, "labels go from `input` to `loss` only", found=f"{sender} -> {receiver}")
        if kind == "activation" and (receiver == INPUT or sender == LOSS):
            raise spec_error(spec, where, "activations flow from `input` or a layer into a layer or `loss`",
                             found=f"{sender} -> {receiver}")
        if (receiver, kind) in producers and (receiver == LOSS or kind == "label"):
            raise spec_error(spec, where, f"{receiver!r} would get its {kind} from two senders",
                             expected="one producer per input port",
                             found=f"{producers[receiver, kind][0]!r} and {sender!r}")
        if sender in producers.get((receiver, kind), ()):
            raise spec_error(spec, where, f"two {kind} channels from {sender!r} to {receiver!r}")
        producers.setdefault((receiver, kind), []).append(sender)
    for name in order[1:]:
        for kind in ("activation", "label") if name == LOSS else ("activation",):
            if (name, kind) not in producers:
                raise spec_error(spec, ("network",), f"{name!r} receives no {kind}",
                                 expected=f"a channel of kind {kind} into {name!r}")
    schedules = [_schedule(spec, g, order, rank, edges, kinds) for kinds in (FORWARD_KINDS, BACKWARD_KINDS)]
    # each layer's shapes, from its input's, in the forward schedule (a family says what it makes of an input)
    sizes, n_in, inputs = {INPUT: input_shape}, {}, {}
    for name in schedules[0][1:]:
        if name == LOSS:
            n_in[name] = sizes[producers[name, "activation"][0]]
            continue
        i, layer = layer_specs[name]
        inputs[name] = tuple((sender, sizes[sender]) for sender in producers[name, "activation"])
        shapes = [shape for _, shape in inputs[name]]
        cls = family(layer.type)
        try:
            n_in[name] = tuple(cls.input_shape(layer, shapes))
            sizes[name] = tuple(cls.output_shape(layer, n_in[name]))
        except ValueError as exc:
            what = (f"input of shape {'x'.join(map(str, shapes[0]))}" if len(shapes) == 1 else
                    "inputs " + ", ".join(f"{s} ({'x'.join(map(str, shape))})" for s, shape in inputs[name]))
            raise spec_error(spec, ("network", "layers", i, *(("inputs",) if layer.inputs is not None else ())),
                             f"layer {name!r} ({layer.type}) cannot take its {what}: {exc}") from None
    reconstructs = spec.network.loss in INPUT_TARGET_LOSSES  # an auto-encoder: the label is the input itself
    top = n_in[LOSS]
    if reconstructs and top != (n_features,):
        raise spec_error(spec, ("network", "layers"), f"the layer feeding `loss` has the wrong size for "
                         f"loss {spec.network.loss!r} on {spec.data.name}",
                         expected=f"{n_features} units (one per input feature)", found=_shape(top))
    if not reconstructs and top != (n_classes,):
        raise spec_error(spec, ("network", "layers"), f"the layer feeding `loss` has the wrong size for "
                         f"{spec.data.name}", expected=f"{n_classes} units (one per class)", found=_shape(top))

    backward_in, direct_in = {}, {}
    for index, (sender, receiver, kind, where) in enumerate(edges):
        if kind in BACKWARD_KINDS:
            allowed = rule.backward_kinds(sender == LOSS)
            if kind not in allowed:
                raise spec_error(spec, where, f"rule {rule.name!r} cannot send a {kind} from {sender!r}",
                                 expected=" or ".join(allowed), found=kind)
            below = receiver in producers.get((sender, "activation"), ())
            top = producers[LOSS, "activation"][0]
            if receiver in (INPUT, LOSS) or not rule.allows_backward(sender, receiver, below, top):
                if rule.direct:
                    raise spec_error(spec, where, f"rule {rule.name!r} sends its messages {rule.direct_channels}",
                                     expected="the channels its `chain` makes (network.chain)",
                                     found=f"{sender} -> {receiver}")
                from .rules import RULES
                direct = ", ".join(sorted(r.name for r in RULES.values() if r.direct))
                raise spec_error(spec, where, f"a {kind} channel runs against an activation channel, from a "
                                 "node back to the layer it receives its activation from; a channel that skips "
                                 f"layers needs a rule with direct channels ({direct})",
                                 expected=f"{receiver} -> {sender} to carry activations, or a {kind} channel from "
                                 f"the layer {receiver!r} sends its activation to", found=f"{sender} -> {receiver}")
            if receiver in backward_in:  # a layer with several consumers (DESIGN §8)
                first, first_kind = backward_in[receiver][0]
                if kind != first_kind:
                    raise spec_error(spec, where, f"{receiver!r} would learn from a {first_kind} (from {first!r}) "
                                     f"and a {kind} (from {sender!r})", expected="one kind from all its consumers")
                if kind == "target" and not rule.displaced_targets:
                    raise spec_error(spec, where, f"rule {rule.name!r} has no way to combine the targets of several "
                                     f"consumers: layer {receiver!r} gets targets from {first!r} and {sender!r}",
                                     expected="one consumer per layer, or a rule with difference targets (dtp, ...)")
            backward_in.setdefault(receiver, []).append((sender, kind))
            # a direct channel skips layers: out of the top layer (DDTP's displacement ĥ_L − h_L, DFA's error), or
            # out of the loss to a layer under the top one (DRTP's label); it carries a value of the top's space
            if rule.direct and (sender != LOSS or receiver != top):
                shape = n_in[LOSS] if sender == LOSS else sizes[sender]
                direct_in[receiver] = math.prod(shape)
            else:
                shape = sizes[receiver]
        elif kind == "label":
            shape = (n_features,) if reconstructs else ()
        else:
            shape = sizes[sender]
        dtype = "int64" if kind == "label" and not reconstructs else spec.dtype
        constraints = constraints_for(spec, sender, receiver, kind, where[2] if where[1] == "channels" else None)
        g.add_edge(sender, receiver, key=kind, index=index,
                   channel=Channel(sender, receiver, kind, shape, dtype, constraints))
    for name in order[1:-1]:
        if name not in backward_in and not (rule.direct and family(layer_specs[name][1].type).offers is None):
            raise spec_error(spec, ("network",), f"layer {name!r} receives no target or gradient, so it could "
                             "never learn", expected=f"a target or gradient channel into {name!r}")

    feedback = ()
    if rule.direct:  # each layer a direct target reaches owns g_i from the output's space to its own
        feedback = tuple(name for name in order[1:-1] if name in direct_in)
        constrained = [c for _, _, c in g.edges(data="channel") if c.constraints]
        if constrained:
            raise spec_error(spec, ("network",), f"rule {rule.name!r} does not support channel constraints yet",
                             found=", ".join(c.identity for c in constrained))
    elif rule.uses_feedback:
        # which layers need g, the rule says (DTP: those that pass a target they received down); a family whose
        # f is exactly invertible, as flatten's reshape, needs none
        feedback = tuple(name for name in order[1:-1]
                         if rule.owns_feedback(frozenset(c.kind for c in _out(g, name)), backward_in_kind(g, name))
                         and family(layer_specs[name][1].type).needs_feedback)
    for _, _, d in g.edges(data=True):
        d["channel"].bind(spec.seed)  # the network binds them again to its own seed
    graph = NetworkGraph(g, tuple(order[1:-1]), n_in, sizes, schedules[0], schedules[1], feedback, direct_in,
                         inputs)
    _check_memory(spec, graph, layer_specs)
    if not graph.is_chain:
        delayed = [c.identity for c in graph.channels if any(k.type == "delay" for k in c.constraints)]
        if delayed:
            raise spec_error(spec, ("network",), "delayed messages need a chain of layers (one input and one "
                             "consumer each) for now", found="delays on " + ", ".join(delayed))
    return graph


def _physical_memory():
    """The machine's memory in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(spec, graph, layer_specs):
    """Refuse, before anything is allocated, a network whose parameters (with their gradients and optimiser
    moments) and a batch's per-layer arrays would not fit in 80 % of the machine's memory."""
    from .layers.base import family
    itemsize = 8 if spec.dtype == "float64" else 4
    params = sum(family(layer.type).parameter_count(layer, graph.n_in[name], graph.shapes[name],
                                                    name in graph.feedback_layers)
                 for name, (_, layer) in layer_specs.items())
    units = sum(math.prod(graph.n_in[name]) + math.prod(graph.shapes[name]) for name in layer_specs)
    need = itemsize * (4 * params + 6 * max(spec.train.batch_size, spec.train.eval_batch_size) * units)
    have = _physical_memory()
    if have and need > 0.8 * have:
        raise spec_error(spec, ("network", "layers"), f"the network needs about {need / 2**30:.1f} GiB ({params:,} "
                         "parameters with their gradients and optimiser state, and a batch's arrays), more than "
                         f"80 % of this machine's {have / 2**30:.1f} GiB", expected="smaller layers or batches")


def _shape(shape):
    return shape[0] if len(shape) == 1 else "x".join(map(str, shape))


def _schedule(spec, g, order, rank, edges, kinds):
    """The deterministic order of one phase over the declared channels of `kinds`, or the spec error naming a
    cycle."""
    phase = nx.DiGraph()
    phase.add_nodes_from(order)
    phase.add_edges_from((a, b) for a, b, kind, _ in edges if kind in kinds)
    try:
        cycle = nx.find_cycle(phase)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise spec_error(spec, ("network",), f"the {kinds[0]} phase has a cycle: {path}",
                         expected="an acyclic graph in each phase")
    return tuple(nx.lexicographical_topological_sort(phase, key=rank.__getitem__))


def _out(g, name):
    return [d["channel"] for _, _, d in g.out_edges(name, data=True)]


def backward_in_kind(g, name):
    kinds = [d["channel"].kind for _, _, d in g.in_edges(name, data=True) if d["channel"].kind in BACKWARD_KINDS]
    return kinds[0] if kinds else None
