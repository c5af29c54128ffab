"""The diagnostics probe against independent computations (DESIGN §7: angle computations are where TP codebases
hid silent bugs), the probe's non-interference with training and resume, `localnet report` and `localnet plot`.

Reference values here come from the tests' own numpy (tests/oracle.py, arccos in the well-conditioned range,
finite differences of ℒ), never from localnet.diagnostics.reference, which is what is being checked.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import localnet
from localnet.cli import main
from localnet.diagnostics import FIELDS, Probe, angle, backprop_gradients, diagnose, measure
from localnet.errors import Interrupted, SpecError
from localnet.runs import RunDir
from localnet.training import StopRequest, resume, train
from oracle import act

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "train.epochs=3", "network.layers.h1.size=16", "network.layers.h2.size=16"]
BATCHES = 39  # digits: 1237 training samples in batches of 32
SETTINGS = settings(deadline=None, max_examples=25)


def spec_dict(widths, acts, *, rule="dtp", eta=0.5, fb_act="linear", bias=True, fb_bias=True,
              loss="softmax_cross_entropy", first_target="output", dtype="float64"):
    layers = [{"name": f"l{i + 1}", "size": w, "activation": a, "bias": bias}
              for i, (w, a) in enumerate(zip(widths, acts))]
    return {"name": "probe", "data": {"name": "digits"}, "dtype": dtype, "backend": "numpy",
            "network": {"layers": layers, "feedback": {"activation": fb_act, "bias": fb_bias}, "loss": loss},
            "rule": {"name": rule, "target_step": eta, "first_target": first_target, "feedback_noise": 0.0},
            "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.1}}}


def build(d, n_features, seed=0):
    return localnet.build(localnet.load_spec(d), seed=seed, n_features=n_features,
                          n_classes=d["network"]["layers"][-1]["size"])


def randomize(net, seed, scale=0.7):
    rng = np.random.default_rng(seed)
    net.load_parameters({name: {k: scale * rng.standard_normal(v.shape) for k, v in p.items()}
                         for name, p in net.parameters().items()})
    return net.parameters()


# --------------------------------------------------------------------------------------------------------------
# The angle itself
# --------------------------------------------------------------------------------------------------------------
def test_angle_of_hand_computed_vectors():
    assert angle(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(90.0, abs=1e-12)
    assert angle(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(45.0, abs=1e-12)
    assert angle(np.array([1.0, 2.0]), np.array([-2.0, -4.0])) == pytest.approx(180.0, abs=1e-12)
    assert angle(np.array([[3.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 5.0]])) == pytest.approx(90.0)
    assert angle(np.array([1e-9, 0.0]), np.array([1e9, 1e-9 * 1e9 * 1e-9])) == pytest.approx(0.0, abs=1e-12)
    # a zero vector has no direction; neither has a non-finite one
    assert math.isnan(angle(np.zeros(3), np.ones(3)))
    assert math.isnan(angle(np.ones(3), np.zeros(3)))
    assert math.isnan(angle(np.array([np.nan, 1.0]), np.ones(2)))
    with pytest.raises(ValueError):
        angle(np.ones(2), np.ones(3))


@SETTINGS
@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_angle_is_symmetric_scale_invariant_and_matches_arccos(n, seed, a, b):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(n), rng.standard_normal(n)
    theta = angle(u, v)
    assert 0.0 <= theta <= 180.0
    assert angle(v, u) == theta
    assert angle(a * u, b * v) == pytest.approx(theta, abs=1e-9)
    assert angle(u, -v) == pytest.approx(180.0 - theta, abs=1e-9)
    assert angle(u, u) == pytest.approx(0.0, abs=1e-6)
    cos = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    if abs(cos) < 0.99:  # where arccos is well conditioned
        assert theta == pytest.approx(math.degrees(math.acos(cos)), abs=1e-8)


# --------------------------------------------------------------------------------------------------------------
# Backprop's gradient, as the probe computes it
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_probe_backprop_matches_finite_differences_of_the_loss(loss):
    widths, acts = [4, 3, 3], ["tanh", "sigmoid", "linear"]
    net = build(spec_dict(widths, acts, loss=loss), 5)
    params = randomize(net, 1)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    net.forward(x, train=True)
    grads = backprop_gradients(net, y)

    def loss_of(p):
        h = x
        for name, a in zip(p, acts):
            h = act(a, h @ p[name]["W"] + p[name]["b"])
        if loss == "mse":
            return np.sum((h - np.eye(3)[y]) ** 2) / len(x)
        z = h - h.max(axis=1, keepdims=True)
        return -np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))

    step = 1e-6
    for name in params:
        for k in ("W", "b"):
            fd = np.zeros_like(params[name][k])
            for idx in np.ndindex(fd.shape):
                up = {n: {kk: vv.copy() for kk, vv in p.items()} for n, p in params.items()}
                down = {n: {kk: vv.copy() for kk, vv in p.items()} for n, p in params.items()}
                up[name][k][idx] += step
                down[name][k][idx] -= step
                fd[idx] = (loss_of(up) - loss_of(down)) / (2 * step)
            np.testing.assert_allclose(grads[name][k], fd, rtol=1e-6, atol=1e-8, err_msg=f"d{k} of {name}")


def test_backprop_rule_has_angle_zero_with_itself():
    """BP's own update is backprop's gradient: the probe's independent backprop agrees with the bp rule's."""
    net = build(spec_dict([6, 5, 4], ["tanh", "relu", "linear"], rule="bp"), 5)
    randomize(net, 3)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((9, 5)), rng.integers(0, 4, 9)
    result = diagnose(net, x, y)
    for name, fields in result.items():
        assert set(fields) == set(FIELDS)
        assert fields["angle_bp"] < 1e-6, name
        assert fields["update_norm"] == pytest.approx(fields["bp_norm"], rel=1e-12)
        assert fields["reconstruction_loss"] is None and fields["reconstruction_error"] is None


@SETTINGS
@given(depth=st.integers(2, 4), width=st.integers(1, 6), n_features=st.integers(1, 6), n=st.integers(1, 8),
       eta=st.floats(0.01, 3.0), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_transposed_feedback_makes_dtp_parallel_to_backprop(depth, width, n_features, n, eta, bias, seed):
    """Linear layers, linear g with V_i = W_iᵀ (any c: it cancels in the difference), first target on the output:
    every DTP target displacement is −η̂ times backprop's delta, so every layer's update has angle 0 with BP's
    gradient (DESIGN §4)."""
    widths = [width] * (depth - 1) + [3]
    d = spec_dict(widths, ["linear"] * depth, bias=bias, fb_bias=bias, eta=eta)
    net = build(d, n_features)
    params = randomize(net, seed)
    for p in params.values():
        if "V" in p:
            p["V"] = p["W"].T.copy()
    net.load_parameters(params)
    rng = np.random.default_rng(seed + 1)
    x, y = rng.standard_normal((n, n_features)), rng.integers(0, 3, n)
    result = diagnose(net, x, y)
    for name, fields in result.items():
        assert fields["angle_bp"] is not None and fields["angle_bp"] < 1e-5, (name, fields)


@pytest.mark.parametrize("theta", [30.0, 90.0, 150.0])
def test_hand_computed_angle_of_a_rotated_feedback_map(theta):
    """x = [1] (one sample), h1 = x W1 (2 units, linear), out = h1 W2 with W2 = I, linear g with V2 the rotation by
    θ and no biases. BP: ∂ℒ/∂W1 = xᵀ δ2 W2ᵀ = δ2. DTP: ĥ1 − h1 = (ĥ2 − h2) V2 = −η̂ δ2 V2, so the local gradient of
    W1 is 2η̂ δ2 V2, δ2 rotated by θ: the angle is θ, and the output layer's is 0."""
    d = spec_dict([2, 2], ["linear", "linear"], bias=False, fb_bias=False, eta=0.4)
    net = build(d, 1)
    r = math.radians(theta)
    net.load_parameters({"l1": {"W": np.array([[0.3, -0.8]])},
                         "l2": {"W": np.eye(2), "V": np.array([[math.cos(r), math.sin(r)],
                                                                [-math.sin(r), math.cos(r)]])}})
    result = diagnose(net, np.array([[1.0]]), np.array([1]))
    assert result["l1"]["angle_bp"] == pytest.approx(theta, abs=1e-9)
    assert result["l2"]["angle_bp"] == pytest.approx(0.0, abs=1e-9)
    # distance to target and norms, by hand: δ2 = softmax(h2) − e_1, h2 = h1
    h1 = np.array([0.3, -0.8])
    p = np.exp(h1) / np.exp(h1).sum()
    delta = p - np.array([0.0, 1.0])
    assert result["l2"]["distance_to_target"] == pytest.approx(0.4 * np.linalg.norm(delta), rel=1e-12)
    assert result["l1"]["activation_norm"] == pytest.approx(np.linalg.norm(h1), rel=1e-12)
    assert result["l1"]["target_norm"] == pytest.approx(np.linalg.norm(h1 - 0.4 * delta @ net.parameters()["l2"]["V"]),
                                                        rel=1e-12)
    V = net.parameters()["l2"]["V"]
    assert result["l2"]["reconstruction_error"] == pytest.approx(np.sum((h1 @ V - h1) ** 2), rel=1e-12)


def test_a_zero_update_has_no_angle_and_logs_null():
    """A layer with no bias fed all-zero inputs has a zero gradient: its angle is undefined (null in JSON)."""
    net = build(spec_dict([3, 2], ["tanh", "linear"], bias=False), 2)
    randomize(net, 5)
    result = diagnose(net, np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    assert result["l1"]["angle_bp"] is None and result["l1"]["update_norm"] == 0.0
    assert result["l2"]["angle_bp"] is None  # its input h1 = tanh(0) = 0 too
    probe = Probe([0])
    probe.layers = result
    line = json.dumps(probe.record(step=1))
    assert '"angle_bp": null' in line and "NaN" not in line


def test_diagnose_and_the_probe_change_nothing():
    """No parameter, optimiser state or generator moves (stochastic units sample from the layer's generator)."""
    d = spec_dict([5, 4, 3], ["stochastic_binary", "tanh", "linear"], fb_act="tanh")
    d["rule"]["feedback_noise"] = 0.3
    net = build(d, 4)
    randomize(net, 6)
    before = net.state()
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    diagnose(net, x, y)
    after = net.state()
    for name in before:
        for k in before[name]:
            assert np.asarray(before[name][k]).tobytes() == np.asarray(after[name][k]).tobytes(), (name, k)
    # a train_step with the probe attached gives the same numbers as one without
    other = build(d, 4)
    other.load_state(before)
    probe = Probe(y)
    net.probe = probe
    m1 = net.train_step(x, y)
    net.probe = None
    m2 = other.train_step(x, y)
    assert m1 == m2 and probe.layers is not None
    for name, state in net.state().items():
        for k, v in state.items():
            assert np.asarray(v).tobytes() == np.asarray(other.state()[name][k]).tobytes(), (name, k)


def test_measure_reports_the_step_in_hand():
    """measure() between backward and update: angle from the gradients the update is about to use."""
    net = build(spec_dict([5, 4, 3], ["tanh", "tanh", "linear"], fb_act="tanh"), 4)
    randomize(net, 8)
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    seen = {}

    def probe(n):
        seen.update(measure(n, y))
        seen["grads"] = {name: {k: v.copy() for k, v in layer.grads.items()} for name, layer in n.layers.items()}

    net.probe = probe
    before = net.parameters()
    net.forward_step(x, y)
    after = net.parameters()
    for name in net.layers:
        sgd = np.concatenate([((before[name][k] - after[name][k]) / 0.1).ravel() for k in ("W", "b")])
        grads = np.concatenate([seen["grads"][name][k].ravel() for k in ("W", "b")])
        np.testing.assert_allclose(sgd, grads, rtol=1e-9, atol=1e-12)
        assert seen[name]["update_norm"] == pytest.approx(np.linalg.norm(grads))
    assert 0 < seen["l1"]["angle_bp"] < 180 and seen["l3"]["angle_bp"] < 1e-6


# --------------------------------------------------------------------------------------------------------------
# The spec option, the training loop, resume, report
# --------------------------------------------------------------------------------------------------------------
def test_diagnostics_spec_option():
    assert localnet.load_spec(QUICKSTART).diagnostics.every == 0
    assert localnet.load_spec(QUICKSTART, ["diagnostics.every=7"]).diagnostics.every == 7
    with pytest.raises(SpecError, match="diagnostics.every"):
        localnet.load_spec(QUICKSTART, ["diagnostics.every=-1"])
    with pytest.raises(SpecError, match="diagnostics.often"):
        localnet.load_spec(QUICKSTART, ["diagnostics.often=1"])


def spec_of(*extra):
    return localnet.load_spec(QUICKSTART, SMALL + list(extra))


def states(run_dir):
    run = RunDir(run_dir)
    checkpoint = run.checkpoint_path()
    trainer = run.load_trainer_state(checkpoint)
    return run.load_layer_states(checkpoint, trainer["layers"])


def assert_same_states(a, b):
    sa, sb = states(a), states(b)
    assert sa.keys() == sb.keys()
    for layer in sa:
        assert sa[layer].keys() == sb[layer].keys()
        for k in sa[layer]:
            assert sa[layer][k].tobytes() == sb[layer][k].tobytes(), (layer, k)


def without_seconds(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run_dir).metrics()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same spec trained without diagnostics, and with them every 5 batches (both schedules)."""
    root = tmp_path_factory.mktemp("diagnostics")
    out = {}
    for key, extra in {"off": [], "on": ["diagnostics.every=5"],
                       "epoch_off": ["rule.schedule=alternate_epoch"],
                       "epoch_on": ["rule.schedule=alternate_epoch", "diagnostics.every=5"]}.items():
        _, run = train(spec_of(*extra), runs_root=root / key)
        out[key] = run.path
    return out


@pytest.mark.parametrize("schedule", ["", "epoch_"])
def test_diagnostics_log_records_and_change_no_number(runs, schedule):
    off, on = runs[schedule + "off"], runs[schedule + "on"]
    assert_same_states(off, on)
    records = RunDir(on).metrics()
    epochs = [r for r in records if r.get("kind") != "diagnostics"]
    diag = [r for r in records if r.get("kind") == "diagnostics"]
    assert without_seconds(off) == [{k: v for k, v in r.items() if k != "seconds"} for r in epochs]
    passes = 2 if schedule else 1
    # every 5th batch counted across passes; a feedback-only pass (alternate_epoch) learns nothing to measure
    steps = [s for s in range(1, 3 * passes * BATCHES + 1) if s % 5 == 0
             and (not schedule or (s - 1) % (2 * BATCHES) >= BATCHES)]
    assert [r["step"] for r in diag] == steps
    r = diag[0]
    assert set(r) == {"kind", "epoch", "batch", "batches", "step", "loss", "layers"}
    assert r["batches"] == BATCHES and list(r["layers"]) == ["h1", "h2", "out"]
    for name, fields in r["layers"].items():
        assert set(fields) == set(FIELDS)
        assert 0 <= fields["angle_bp"] <= 180
    assert r["layers"]["out"]["angle_bp"] < 0.1  # the first target is on the output: its update is ℒ's gradient
    assert r["layers"]["h1"]["reconstruction_error"] is None and r["layers"]["h2"]["reconstruction_error"] > 0
    assert r["layers"]["h1"]["reconstruction_loss"] is None
    if schedule:  # a forward-only pass trains no feedback map: no reconstruction loss of its own to report
        assert all(rec["layers"]["h2"]["reconstruction_loss"] is None for rec in diag)
    else:
        assert all(rec["layers"]["h2"]["reconstruction_loss"] > 0 for rec in diag)
    # the log is in order: each epoch's record follows its diagnostics
    kinds = [(rec.get("kind"), rec["epoch"]) for rec in records]
    assert kinds == sorted(kinds, key=lambda k: (k[1], k[0] is None))


@pytest.mark.parametrize("variant,epoch,done", [("", 2, 17), ("epoch_", 2, BATCHES + 7), ("epoch_", 1, 12)])
def test_resume_with_diagnostics_is_bit_identical_and_logs_each_record_once(tmp_path, runs, variant, epoch, done):
    extra = ["diagnostics.every=5"] + (["rule.schedule=alternate_epoch"] if variant else [])
    stop = StopRequest()
    current = [1]

    def on_epoch(record):
        current[0] = record["epoch"] + 1

    def on_batch(d, total):
        if (current[0], d) == (epoch, done):
            stop.request()

    with pytest.raises(Interrupted):
        train(spec_of(*extra), runs_root=tmp_path, stop=stop, on_epoch=on_epoch, on_batch=on_batch)
    (path,) = tmp_path.iterdir()
    resume(path)
    reference = runs[variant + "on"]
    assert_same_states(reference, path)
    assert without_seconds(reference) == without_seconds(path)


def test_report_lists_epochs_and_counts_diagnostics(runs):
    result = CliRunner().invoke(main, ["report", str(runs["on"])])
    assert result.exit_code == 0, result.output
    assert "diagnostics: 23 records" in result.output  # 117 batches, every 5th
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]


# --------------------------------------------------------------------------------------------------------------
# localnet plot
# --------------------------------------------------------------------------------------------------------------
def test_plot_draws_several_runs_to_a_png(tmp_path, runs):
    pytest.importorskip("matplotlib")
    out = tmp_path / "both.png"
    result = CliRunner().invoke(main, ["plot", str(runs["on"]), str(runs["epoch_off"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "no diagnostics logged by quickstart" in result.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 500_000
    result = CliRunner().invoke(main, ["plot", str(runs["on"]), "--metric", "distance_to_target"])
    assert result.exit_code == 0, result.output
    assert (runs["on"] / "curves.png").is_file()  # one run: its own directory


def test_plot_fails_cleanly(tmp_path, runs, monkeypatch):
    if importlib.util.find_spec("matplotlib") is not None:  # without it, that is the error reported first
        result = CliRunner().invoke(main, ["plot", str(tmp_path)])
        assert result.exit_code == 1 and "not a run directory" in result.output
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = CliRunner().invoke(main, ["plot", str(runs["on"])])
    assert result.exit_code == 1
    assert "pip install 'localnet[plot]'" in result.output and "Traceback" not in result.output
