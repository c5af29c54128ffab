"""Graph construction: the channels a spec implies, the build-time checks, and a deterministic schedule."""

import copy
import random

import numpy as np
import pytest

import localnet
from localnet.errors import SpecError
from localnet.spec import load_spec

BASE = {
    "name": "g", "data": {"name": "digits"},
    "network": {"layers": [{"name": "h1", "size": 6}, {"name": "h2", "size": 5},
                           {"name": "out", "size": 10, "activation": "linear"}]},
}


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = data
        *head, last = path.split("__")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return load_spec(data)


def build(spec):
    return localnet.build(spec, n_features=64, n_classes=10)


def edges(net):
    return {(c.sender, c.receiver, c.kind) for c in net.graph.channels}


FORWARD = {("input", "h1", "activation"), ("h1", "h2", "activation"), ("h2", "out", "activation"),
           ("out", "loss", "activation"), ("input", "loss", "label")}


@pytest.mark.parametrize("rule,first,top,down,feedback", [
    ("dtp", "output", "target", "target", ("h2", "out")),
    ("dtp", "last_hidden", "gradient", "target", ("h2",)),
    ("tp", "output", "target", "target", ("h2", "out")),
    ("bp", "output", "gradient", "gradient", ()),
])
def test_chain_implies_the_rules_channels(rule, first, top, down, feedback):
    net = build(spec_with(rule__name=rule, rule__first_target=first))
    assert edges(net) == FORWARD | {("loss", "out", top), ("out", "h2", down), ("h2", "h1", down)}
    assert net.graph.feedback_layers == feedback
    assert [name for name, layer in net.layers.items() if layer.has_feedback] == list(feedback)
    assert net.graph.forward_order == ("input", "h1", "h2", "out", "loss")
    assert [n for n in net.graph.backward_order if n != "input"] == ["loss", "out", "h2", "h1"]


def test_channels_carry_shape_and_dtype():
    net = build(spec_with(dtype="float64"))
    by_edge = {(c.sender, c.receiver): c for c in net.graph.channels}
    assert by_edge["input", "h1"].shape == (64,) and by_edge["input", "h1"].dtype == "float64"
    assert by_edge["out", "h2"].shape == (5,)  # a target lives in its receiver's output space
    assert by_edge["h2", "h1"].shape == (6,)
    assert by_edge["input", "loss"].shape == () and by_edge["input", "loss"].dtype == "int64"


def explicit(channels, **changes):
    data = copy.deepcopy(BASE)
    data["network"]["channels"] = [{"from": a, "to": b, "kind": k} for a, b, k in channels]
    for key, value in changes.items():
        data.setdefault("rule", {})[key] = value
    return load_spec(data)


DTP_CHANNELS = [("input", "h1", "activation"), ("h1", "h2", "activation"), ("h2", "out", "activation"),
                ("out", "loss", "activation"), ("input", "loss", "label"), ("loss", "out", "target"),
                ("out", "h2", "target"), ("h2", "h1", "target")]


def test_explicit_channels_equal_to_the_chain_build_the_same_graph():
    assert edges(build(explicit(DTP_CHANNELS))) == edges(build(spec_with()))


def test_schedule_does_not_depend_on_declaration_order():
    reference = build(explicit(DTP_CHANNELS)).graph
    for seed in range(5):
        shuffled = DTP_CHANNELS[:]
        random.Random(seed).shuffle(shuffled)
        graph = build(explicit(shuffled)).graph
        assert graph.forward_order == reference.forward_order
        assert graph.backward_order == reference.backward_order


def graph_error(spec_or_channels, **rule):
    spec = spec_or_channels if not isinstance(spec_or_channels, list) else explicit(spec_or_channels, **rule)
    with pytest.raises(SpecError) as info:
        build(spec)
    return str(info.value)


def replace(channels, old, new):
    return [new if c == old else c for c in channels] if new else [c for c in channels if c != old]


def test_unknown_node():
    msg = graph_error(replace(DTP_CHANNELS, ("h2", "h1", "target"), ("h2", "h0", "target")))
    assert "unknown node 'h0'" in msg and "network.channels.7" in msg


def test_two_producers_for_the_loss():
    msg = graph_error(DTP_CHANNELS + [("h1", "loss", "activation")])
    assert "'loss' would get its activation from two senders" in msg and "one producer per input port" in msg


def test_a_layer_without_a_target_would_never_learn():
    msg = graph_error(replace(DTP_CHANNELS, ("h2", "h1", "target"), None))
    assert "'h1' receives no target or gradient" in msg


def test_kind_must_fit_the_rule():
    assert "rule 'bp' cannot send a target" in graph_error(DTP_CHANNELS, name="bp")
    msg = graph_error(replace(DTP_CHANNELS, ("out", "h2", "target"), ("out", "h2", "gradient")))
    assert "rule 'dtp' cannot send a gradient from 'out'" in msg


def test_backward_channels_run_against_an_activation_channel():
    msg = graph_error(replace(DTP_CHANNELS, ("h2", "h1", "target"), ("out", "h1", "target")))
    assert "runs against an activation channel" in msg


def test_forward_cycle_is_reported_with_its_path():
    channels = [("h2", "h1", "activation"), ("h1", "h2", "activation"), ("h2", "out", "activation"),
                ("out", "loss", "activation"), ("input", "loss", "label"), ("loss", "out", "target"),
                ("out", "h2", "target"), ("h2", "h1", "target")]
    msg = graph_error(channels)
    assert "activation phase has a cycle" in msg
    assert "h1 -> h2 -> h1" in msg or "h2 -> h1 -> h2" in msg


def test_output_size_must_match_the_classes():
    data = copy.deepcopy(BASE)
    data["network"]["layers"][-1]["size"] = 7
    msg = graph_error(load_spec(data))
    assert "wrong size for digits" in msg and "10 units" in msg and "found 7" in msg


def test_graph_errors_name_the_spec_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: g\ndata: {name: digits}\nnetwork:\n  layers:\n    - {name: h1, size: 6}\n"
                    "    - {name: out, size: 10}\n  channels:\n    - {from: input, to: h1, kind: activation}\n"
                    "    - {from: h1, to: outt, kind: activation}\n")
    msg = graph_error(load_spec(path))
    assert msg.startswith(f"{path}:9: network.channels.1:")


def test_delivered_messages_are_read_only():
    net = build(spec_with())
    x = np.random.default_rng(0).random((4, 64))
    net.targets(x, np.arange(4))
    for name in ("h1", "h2", "out"):
        layer = net.layers[name]
        for received in (layer.x, layer.target if name != "out" else None):
            if received is not None:
                assert not received.flags.writeable
                with pytest.raises(ValueError):
                    received[...] = 0


def test_a_network_too_large_for_the_machine_is_refused_before_anything_is_allocated(tmp_path):
    """784-1048576-... passes every per-key bound; its parameters alone would take more memory than the machine has:
    the build refuses it, naming the layers' line, and no run directory is made."""
    from pathlib import Path

    from localnet.training import train
    quickstart = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"
    spec = localnet.load_spec(quickstart, ["network.layers.h1.size=1048576"])
    with pytest.raises(SpecError, match=r"network\.layers: the network needs about .* GiB .* more than 80 % of this"):
        train(spec, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
