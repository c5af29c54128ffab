"""Plausibility constraints: each one changes what crosses a channel (or what a layer does to its own weights) in
the way it says, keeps runs deterministic, and survives a checkpoint and resume bit for bit."""

import math
from pathlib import Path

import numpy as np
import pytest

import localnet
from helpers import stop_at
from localnet.channels import Channel
from localnet.errors import LocalnetWarning, RunError, SpecError
from localnet.runs import RunDir
from localnet.spec.schema import ConstraintSpec
from localnet.training import StopRequest, resume, train
from localnet.errors import Interrupted

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "network.layers.h1.size=16", "network.layers.h2.size=12"]


def spec(*overrides):
    return localnet.load_spec(QUICKSTART, SMALL + list(overrides))


def net_of(*overrides, seed=None):
    return localnet.build(spec(*overrides), seed=seed, n_features=64, n_classes=10)


def batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 64)), rng.integers(0, 10, n)


def channel(*constraints, kind="activation", width=50, seed=0, sender="a", receiver="b", dtype="float64"):
    c = Channel(sender, receiver, kind, (width,), dtype, tuple(ConstraintSpec(**k) for k in constraints))
    c.bind(seed)
    return c


def payload(rows=2000, width=50, seed=1, dtype="float64"):
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(dtype)


# --------------------------------------------------------------------------------------------------------------
# What crosses the channel
# --------------------------------------------------------------------------------------------------------------
def test_without_constraints_the_payload_crosses_unchanged():
    v = payload()
    got = channel().deliver(v).payload
    assert np.shares_memory(got, v) and not got.flags.writeable  # a read-only view, bit for bit


@pytest.mark.parametrize("std", [0.05, 0.5])
def test_noise_adds_gaussian_noise_of_the_given_std(std):
    v = payload()
    got = channel({"type": "noise", "std": std}).deliver(v).payload
    noise = (got - v).ravel()
    n = noise.size  # 100 000 draws: the sample std is within 1 % of std with overwhelming probability
    assert abs(noise.mean()) < 5 * std / math.sqrt(n)
    assert abs(noise.std() / std - 1) < 0.01
    assert abs(np.mean(noise ** 4) / noise.var() ** 2 - 3) < 0.1  # Gaussian kurtosis
    assert np.array_equal(channel({"type": "noise", "std": std}).deliver(v, train=False).payload, v)  # evaluation


def test_relative_noise_scales_with_each_samples_rms():
    relative = {"type": "noise", "std": 0.1, "relative": True}
    v = payload()
    v[:1000] *= 1e-3  # half the samples a thousand times smaller, as a target's displacement at a larger batch
    noise = channel(relative).deliver(v).payload - v
    for rows in (slice(0, 1000), slice(1000, None)):
        rms = np.sqrt(np.mean(v[rows] ** 2))
        assert abs(noise[rows].std() / (0.1 * rms) - 1) < 0.02
    # the same draws, each scaled by its sample's RMS: ten times the message, ten times the noise
    louder = channel(relative).deliver(10 * v).payload - 10 * v
    np.testing.assert_allclose(louder, 10 * noise, rtol=1e-9, atol=1e-15)
    assert np.array_equal(channel(relative).deliver(v, train=False).payload, v)  # evaluation


def test_an_absolute_noise_that_drowns_its_messages_is_warned_about_once_naming_the_channel(recwarn):
    quiet = np.full((50, 50), 0.01)
    c = channel({"type": "noise", "std": 1.0}, sender="h2", receiver="h1", kind="target")
    c.deliver(quiet, train=False)  # evaluation adds no noise: nothing to say
    assert not recwarn.list
    with pytest.warns(LocalnetWarning, match=r"channel h2>h1\.target: noise std 1 is 100× the RMS of its targets' "
                                             r"displacements ĥ − h \(0\.01\) at the first training step"):
        c.deliver(quiet)
    c.deliver(quiet / 100)  # once per channel: the first training step is the one that tells
    channel({"type": "noise", "std": 0.05}).deliver(quiet)  # 5× the RMS: noisy, not drowned
    channel({"type": "noise", "std": 1.0, "relative": True}).deliver(quiet)  # scaled to what crosses
    assert not recwarn.list


def test_a_channel_restored_from_a_checkpoint_does_not_warn_again(recwarn):
    """A resumed run's first step is not the run's first training step: the warning was given when that ran."""
    quiet = np.full((50, 50), 0.01)
    c = channel({"type": "noise", "std": 1.0})
    with pytest.warns(LocalnetWarning, match="noise std 1 is 100×"):
        c.deliver(quiet)
    resumed = channel({"type": "noise", "std": 1.0})
    resumed.load_state(c.state())
    resumed.deliver(quiet)
    assert not recwarn.list


def test_the_cli_prints_the_noise_warning_as_one_line(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "localnet", "run", str(QUICKSTART), "--runs-dir", str(tmp_path),
                           *(a for o in SMALL + ["train.epochs=1", "train.batch_size=128",
                                                 "network.constraints=[{kind: target, type: noise, std: 0.1}]"]
                             for a in ("--set", o))], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "noise std" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: channel loss>out.target: noise std 0.1 is "), \
        done.stderr


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_leaves_at_most_2_to_the_bits_minus_1_levels_per_sample(bits):
    v = payload(rows=200)
    got = channel({"type": "quantize", "bits": bits}).deliver(v).payload
    levels = 2 ** bits - 1
    scale = np.abs(v).max(axis=1, keepdims=True)
    step = scale / (2 ** (bits - 1) - 1)
    assert all(len(np.unique(row)) <= levels for row in got)
    assert max(len(np.unique(row)) for row in got) >= min(levels, 40)  # ... and uses them (50 values a row)
    np.testing.assert_allclose(got / step, np.rint(got / step), atol=1e-9)  # on the grid
    assert np.all(np.abs(got - v) <= step / 2 + 1e-12)  # the nearest grid point
    assert not np.array_equal(got, v)


def test_quantize_with_a_fixed_range_clips():
    v = payload(rows=100) * 2
    got = channel({"type": "quantize", "bits": 3, "range": 1.0}).deliver(v).payload
    assert set(np.unique(got)) <= {k / 3 for k in range(-3, 4)}
    assert got.max() == 1.0 and got.min() == -1.0


def test_sign_sends_one_bit_per_value_scaled_by_the_mean_magnitude():
    v = payload(rows=100)
    got = channel({"type": "sign"}).deliver(v).payload
    m = np.abs(v).mean(axis=1, keepdims=True)
    np.testing.assert_array_equal(got, np.sign(v) * m)
    assert all(len(np.unique(np.abs(row))) == 1 for row in got)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_loses_each_samples_message_with_probability_p(p):
    rows = 20_000
    v = payload(rows=rows, width=5) + 10  # no value is 0, so a dropped row is all zeros
    got = channel({"type": "drop", "p": p}, width=5).deliver(v).payload
    dropped = np.all(got == 0, axis=1)
    kept = np.all(got == v, axis=1)
    assert np.all(dropped | kept)  # whole samples, nothing else changed
    sd = math.sqrt(rows * p * (1 - p))
    assert abs(dropped.sum() - rows * p) < 5 * sd  # binomial bounds (5 standard deviations)
    assert np.array_equal(channel({"type": "drop", "p": p}, width=5).deliver(v, train=False).payload, v)


def test_a_dropped_target_leaves_the_receiver_where_it_is():
    """Targets cross as displacements: a lost one is 'no change', i.e. the receiver's own activation."""
    c = channel({"type": "drop", "p": 0.5}, kind="target", width=4)
    h = payload(rows=1000, width=4)
    target = h + 0.01
    got = c.deliver(target, reference=(h, h)).payload
    dropped = np.all(got == h, axis=1)
    assert 400 < dropped.sum() < 600
    np.testing.assert_allclose(got[~dropped], target[~dropped], rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_delay_delivers_the_payload_from_d_steps_ago_with_its_age(steps):
    c = channel({"type": "delay", "steps": steps}, kind="target", width=3)
    sent = [payload(rows=4, width=3, seed=s) for s in range(8)]
    for t, v in enumerate(sent):
        message = c.deliver(v, lag=1)
        expected = max(t - steps, 0)  # before d steps exist: the oldest kept
        np.testing.assert_array_equal(message.payload, sent[expected])
        assert message.lag == 1 + t - expected
        assert not message.payload.flags.writeable
    sent[5][...] = 0  # the sender reusing its buffer does not reach what is queued
    assert np.any(c.deliver(sent[7]).payload != 0)


def test_constraints_act_in_order_and_delay_last():
    c = channel({"type": "delay", "steps": 1}, {"type": "quantize", "bits": 2}, width=3)
    a, b = payload(rows=2, width=3, seed=3), payload(rows=2, width=3, seed=4)
    c.deliver(a)
    got = c.deliver(b).payload
    np.testing.assert_array_equal(got, channel({"type": "quantize", "bits": 2}, width=3).deliver(a).payload)


def test_a_channels_noise_depends_on_the_seed_and_the_channels_identity_only():
    v = payload(rows=10)
    noise = {"type": "noise", "std": 1.0}
    same = [channel(noise, seed=7).deliver(v).payload for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], channel(noise, seed=8).deliver(v).payload)
    assert not np.array_equal(same[0], channel(noise, seed=7, receiver="c").deliver(v).payload)


# --------------------------------------------------------------------------------------------------------------
# In a network
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("constraint", ["{type: noise, std: 0.1}", "{type: quantize, bits: 3}", "{type: sign}",
                                        "{type: drop, p: 0.5}"])
def test_a_constraint_on_a_layer_changes_what_its_receivers_get(constraint):
    x, y = batch()
    plain = net_of()
    plain.train_step(x, y)
    assert plain.layers["h2"].x.base is plain.layers["h1"].h  # unconstrained: a view of what was sent
    net = net_of(f"network.layers.h1.constraints=[{constraint}]")
    net.train_step(x, y)
    got, sent = net.layers["h2"].x, net.layers["h1"].h
    assert got.shape == sent.shape and got.dtype == sent.dtype
    assert not np.array_equal(got, sent)
    np.testing.assert_array_equal(net.layers["out"].x, net.layers["h2"].h)  # other channels are untouched
    np.testing.assert_array_equal(net.layers["h1"].x, np.asarray(x, np.float32))


def test_evaluation_passes_messages_without_noise_or_drops_but_quantised():
    noisy = net_of("network.constraints=[{type: noise, std: 1.0}, {kind: activation, type: drop, p: 0.5}]")
    plain = net_of()
    x = batch()[0]
    for a, b in zip(noisy.forward(x), plain.forward(x)):
        np.testing.assert_array_equal(a, b)
    quantised = net_of("network.layers.h1.constraints=[{kind: activation, type: quantize, bits: 2}]")
    assert not np.array_equal(quantised.forward(x)[1], plain.forward(x)[1])


def test_targets_cross_as_displacements_so_activation_noise_stays_out_of_them():
    """With noise on h1's activation, h2's DTP target for h1 is h1 + (g(ĥ2) − g(h2)): the noise h2 saw is not
    sent back down inside the target."""
    net = net_of("network.layers.h1.constraints=[{kind: activation, type: noise, std: 0.5}]")
    net.engine.forward(*net._batch(*batch()), train=True)
    net.engine.backward()
    h1, h2 = net.layers["h1"], net.layers["h2"]
    V, c = h2.feedback_params["V"], h2.feedback_params["c"]
    g = lambda z: np.tanh(z @ V + c)  # noqa: E731
    np.testing.assert_allclose(h1.target, h1.h + (g(h2.target) - g(h2.h)), atol=2e-6)


def test_a_delayed_target_is_learned_against_the_receivers_state_of_its_step():
    net = net_of("network.channels=[{from: input, to: h1, kind: activation}, {from: h1, to: h2, kind: activation},"
                 " {from: h2, to: out, kind: activation}, {from: out, to: loss, kind: activation},"
                 " {from: input, to: loss, kind: label}, {from: loss, to: out, kind: target,"
                 " constraints: [{type: delay, steps: 2}]}, {from: out, to: h2, kind: target},"
                 " {from: h2, to: h1, kind: target}]")
    out, k = net.layers["out"], net.backend.dense
    assert out.history.maxlen == 3 and net.layers["h1"].history.maxlen == 3
    sent, states = [], []
    for t in range(6):
        net.engine.forward(*net._batch(*batch(seed=t)), train=True)
        states.append(tuple(np.array(v) for v in (out.x, out.a, out.h)))
        net.engine.backward()
        sent.append(np.array(net.engine._sent["backward"]["loss"]["target"]))
        old = max(t - 2, 0)
        assert net.engine.inboxes["backward"]["out"].lag("target") == t - old
        np.testing.assert_allclose(out.target, sent[old], atol=1e-6)  # the first target of step t − 2 ...
        x, a, h = states[old]  # ... learned against out's own input, pre-activation and output of that step
        dW, db = k.weight_grads(x, k.pre_activation_error(a, h, k.local_delta(h, out.target), "linear"))
        np.testing.assert_allclose(out.grads["W"], dW, rtol=1e-5, atol=1e-7)
        assert net.engine.inboxes["backward"]["h2"].lag("target") == t - old  # the lag travels down
        net.engine.update()


def test_fixed_feedback_is_never_trained():
    net = net_of("network.layers.out.constraints=[{type: fixed_feedback}]")
    before = net.parameters()
    for s in range(5):
        net.train_step(*batch(seed=s))
    after = net.parameters()
    for key in ("V", "c"):
        np.testing.assert_array_equal(after["out"][key], before["out"][key])
        assert not np.array_equal(after["h2"][key], before["h2"][key])  # h2's g is trained as usual
    assert not np.array_equal(after["out"]["W"], before["out"]["W"])
    scaled = net_of("network.layers.out.constraints=[{type: fixed_feedback, scale: 0.001}]").parameters()["out"]
    assert np.abs(scaled["V"]).max() <= 1e-3 and np.abs(scaled["c"]).max() > 0
    assert np.array_equal(scaled["W"], before["out"]["W"])  # the forward draw is unchanged


def test_sign_constrained_weights_keep_one_sign_per_input():
    net = net_of("network.layers.h2.constraints=[{type: sign_constrained}]", "optimizer.forward.lr=0.05")
    layer = net.layers["h2"]
    signs = layer.weight_signs.ravel()
    assert set(signs) == {-1.0, 1.0}

    def check(W):
        assert np.all(W * signs[:, None] >= 0)  # every row (one input's outgoing weights) keeps its sign
    check(layer.forward_params["W"])
    for s in range(30):
        net.train_step(*batch(seed=s))
    W = layer.forward_params["W"]
    check(W)
    assert (W == 0).any()  # some weights were pushed across zero and stopped there
    free = net_of("optimizer.forward.lr=0.05")
    for s in range(30):
        free.train_step(*batch(seed=s))
    Wf = free.layers["h2"].forward_params["W"]
    assert np.any(np.any(Wf > 0, axis=1) & np.any(Wf < 0, axis=1))  # unconstrained rows have both signs


CONSTRAINED = ["network.constraints=[{kind: target, type: noise, std: 0.01}, {kind: target, type: delay, steps: 2},"
               " {kind: activation, type: drop, p: 0.1}]", "network.layers.h1.constraints=[{kind: activation, "
               "type: quantize, bits: 4}]", "network.layers.out.constraints=[{type: fixed_feedback}]",
               "network.layers.h2.constraints=[{type: sign_constrained}]"]


def test_same_spec_and_seed_give_the_same_numbers():
    def trained(seed):
        net = net_of(*CONSTRAINED, seed=seed)
        for s in range(6):
            net.train_step(*batch(seed=s))
        return net.parameters(), net.channel_state()
    (p1, c1), (p2, c2), (p3, _) = trained(3), trained(3), trained(4)
    assert all(np.array_equal(p1[n][k], p2[n][k]) for n in p1 for k in p1[n])
    assert c1.keys() == c2.keys() and all(np.array_equal(c1[k], c2[k]) for k in c1)
    assert not all(np.array_equal(p1[n][k], p3[n][k]) for n in p1 for k in p1[n])


def test_looking_at_targets_does_not_move_the_channels():
    a, b = net_of(*CONSTRAINED), net_of(*CONSTRAINED)
    for s in range(4):
        a.train_step(*batch(seed=s))
        b.targets(*batch(seed=10 + s))  # a look: no noise drawn, no delay queue or kept step advanced
        b.targets(*batch(seed=20 + s))
        b.train_step(*batch(seed=s))
    pa, pb = a.parameters(), b.parameters()
    assert all(np.array_equal(pa[n][k], pb[n][k]) for n in pa for k in pa[n])


# --------------------------------------------------------------------------------------------------------------
# Specs: validation, and the shipped ones run
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,where,what", [
    ("network.constraints=[{type: noise}]", "network.constraints.0.std", "a noise constraint needs `std`"),
    ("network.constraints=[{type: noise, std: 0.1, bits: 3}]", "network.constraints.0.bits",
     "`bits` does not apply to a noise constraint"),
    ("network.constraints=[{type: quantize, bits: 3, relative: true}]", "network.constraints.0.relative",
     "`relative` does not apply to a quantize constraint"),
    ("network.constraints=[{type: delay, steps: 1, kind: activation}]", "network.constraints.0.kind",
     "a delay constraint cannot act on activation messages"),
    ("network.constraints=[{type: fixed_feedback}]", "network.constraints.0.type",
     "fixed_feedback constrains a layer's own weights"),
    ("network.layers.h1.constraints=[{type: sign_constrained, kind: target}]",
     "network.layers.0.constraints.0.kind", "`kind` does not apply"),
    ("network.constraints=[{type: quantize, bits: 1}]", "network.constraints.0.bits", "out of range"),
    ("network.constraints=[{type: drop, p: 1.5}]", "network.constraints.0.p", "out of range"),
    ("network.constraints=[{type: teleport}]", "network.constraints.0.type", "unknown name"),
])
def test_constraint_spec_errors_name_the_key(override, where, what):
    with pytest.raises(SpecError) as info:
        spec(override)
    assert f"{where}: {what}" in str(info.value)


def test_a_channel_constraint_must_fit_its_channel(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: c\ndata: {name: digits}\nnetwork:\n  layers:\n    - {name: out, size: 10}\n"
                    "  channels:\n    - {from: input, to: out, kind: activation}\n"
                    "    - {from: out, to: loss, kind: activation, constraints: [{type: delay, steps: 1}]}\n"
                    "    - {from: input, to: loss, kind: label}\n    - {from: loss, to: out, kind: target}\n")
    with pytest.raises(SpecError, match=r"s\.yaml:8: network\.channels\.1\.constraints\.0\.type: a delay constraint "
                                        r"cannot act on a activation channel"):
        localnet.load_spec(path)


def test_a_constraint_that_acts_on_no_channel_is_an_error():
    with pytest.raises(SpecError, match=r"network\.layers\.0\.constraints\.0: this noise constraint acts on no "
                                        r"channel: layer 'h1' sends no gradient message"):
        net_of("network.layers.h1.constraints=[{kind: gradient, type: noise, std: 0.1}]")
    with pytest.raises(SpecError, match=r"network\.constraints\.0: this delay constraint acts on no channel"):
        net_of("rule.name=bp", "network.constraints=[{kind: target, type: delay, steps: 1}]")


def test_fixed_feedback_needs_a_feedback_map():
    with pytest.raises(SpecError, match=r"network\.layers\.0\.constraints\.0: layer 'h1' owns no feedback map"):
        net_of("network.layers.h1.constraints=[{type: fixed_feedback}]")
    with pytest.raises(SpecError, match=r"owns no feedback map under rule 'bp'"):
        net_of("rule.name=bp", "network.layers.out.constraints=[{type: fixed_feedback}]")


SHIPPED = ["constraints-noise", "constraints-quantize", "constraints-drop", "constraints-delay", "fixed-feedback",
           "sign-constrained"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_constraint_specs_run(tmp_path, name):
    s = localnet.load_spec(ROOT / "specs" / f"{name}.yaml", ["backend=numpy", "train.epochs=2"])
    assert any(layer.constraints for layer in s.network.layers) or s.network.constraints or \
        any(c.constraints for c in s.network.channels or ())
    summary, _ = train(s, runs_root=tmp_path)
    assert summary["status"] == "completed" and summary["test_accuracy"] > 0.5


# --------------------------------------------------------------------------------------------------------------
# Checkpoints: the channels' state is saved, and resume stays bit-identical
# --------------------------------------------------------------------------------------------------------------
RESUMABLE = ["train.epochs=3", "network.constraints=[{kind: target, type: noise, std: 0.01}, "
             "{kind: target, type: delay, steps: 2}, {kind: activation, type: drop, p: 0.1}]"]


def full_state(path):
    run = RunDir(path)
    checkpoint = run.checkpoint_path()
    trainer = run.load_trainer_state(checkpoint)
    layers = run.load_layer_states(checkpoint, trainer["layers"])
    return layers, run.load_channel_state(checkpoint, trainer)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    summary, run = train(spec(*RESUMABLE), runs_root=tmp_path_factory.mktemp("reference"))
    assert summary["status"] == "completed"
    return run.path


@pytest.mark.parametrize("epoch,done", [(1, 1), (2, 17), (2, 39)])
def test_resume_with_stateful_constraints_is_bit_identical(tmp_path, reference, epoch, done):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec(*RESUMABLE), runs_root=tmp_path, stop=stop, **stop_at(stop, epoch, done))
    (path,) = tmp_path.iterdir()
    checkpoint = RunDir(path).checkpoint_path()
    assert (checkpoint / "network.channels.npz").is_file()
    assert any(".delay.queue." in k for k in full_state(path)[1])
    assert any("history." in k for k in full_state(path)[0]["h1"])  # the steps h1 keeps for its late targets
    resume(path)
    (la, ca), (lb, cb) = full_state(reference), full_state(path)
    assert ca.keys() == cb.keys() and la.keys() == lb.keys()
    for key in ca:
        assert ca[key].tobytes() == cb[key].tobytes(), key
    for layer in la:
        assert la[layer].keys() == lb[layer].keys()
        for key in la[layer]:
            assert la[layer][key].tobytes() == lb[layer][key].tobytes(), (layer, key)
    assert RunDir(path).summary()["test_accuracy"] == RunDir(reference).summary()["test_accuracy"]


def test_no_channel_file_without_stateful_constraints(tmp_path):
    train(spec("train.epochs=1", "network.constraints=[{type: quantize, bits: 8}]"), runs_root=tmp_path)
    (path,) = tmp_path.iterdir()
    assert not (RunDir(path).checkpoint_path() / "network.channels.npz").exists()


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b"garbage"), "SHA-256"),
    (lambda p: p.unlink(), "network.channels.npz is missing"),
])
def test_a_damaged_channel_file_is_refused_naming_it(tmp_path, damage, message):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec(*RESUMABLE), runs_root=tmp_path, stop=stop, **stop_at(stop, 1, 5))
    (path,) = tmp_path.iterdir()
    damage(RunDir(path).checkpoint_path() / "network.channels.npz")
    with pytest.raises(RunError, match=message):
        resume(path)
