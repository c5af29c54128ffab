"""Two workers run a step's feedback training and updates beside its chain of messages: the numbers must be the
serial engine's bit for bit, whatever the rule, backend or units, and a failing job must surface, not hang."""

import contextlib
import time

import numpy as np
import pytest

from localnet import threads
from localnet.engines import LocalEngine, using
from localnet.errors import LocalnetError
from localnet.network import Network
from localnet.spec import load_spec

N_FEATURES, N_CLASSES = 9, 4


def spec(rule="dtp", backend="numpy", first_target="output", acts=("tanh", "tanh", "tanh"), fb_act="tanh",
         diagnostics=0):
    widths = (12, 11, 10)
    layers = [{"name": f"h{i + 1}", "size": w, "activation": a} for i, (w, a) in enumerate(zip(widths, acts))]
    return load_spec({
        "name": "threads", "seed": 5, "dtype": "float32", "backend": backend, "data": {"name": "digits"},
        "network": {"layers": [*layers, {"name": "out", "size": N_CLASSES, "activation": "linear"}],
                    "feedback": {"activation": fb_act, "bias": fb_act != "linear"}},
        "rule": {"name": rule, "target_step": 0.2, "feedback_noise": 0.3, "first_target": first_target,
                 "feedback_iterations": 2},
        "optimizer": {"forward": {"type": "adam", "lr": 0.01}, "feedback": {"type": "rmsprop", "lr": 0.01}},
        "diagnostics": {"every": diagnostics},
    })


def trained(s, workers, steps=4):
    with using(lambda graph, nodes: LocalEngine(graph, nodes, workers=workers)):
        net = Network(s, 5, N_FEATURES, N_CLASSES)
    assert (net.engine._pool is not None) == (workers > 1)
    net.jobs = jobs = []  # what went to the worker (which thread runs each depends on timing; numbers must not)
    if net.engine._pool is not None:
        submit = net.engine._submit
        net.engine._submit = lambda name, phase, method: jobs.append((name, phase)) or submit(name, phase, method)
    rng = np.random.default_rng(0)
    metrics = []
    for _ in range(steps):
        x, y = rng.standard_normal((16, N_FEATURES)), rng.integers(0, N_CLASSES, 16)
        metrics.append(net.train_step(x, y))
    return net, metrics


CASES = [dict(rule="dtp"), dict(rule="dtp", backend="numba"), dict(rule="bp"), dict(rule="bp", backend="numba"),
         dict(rule="tp"), dict(rule="dtp", first_target="last_hidden"),
         dict(rule="dtp", backend="numba", acts=("stochastic_binary", "step", "tanh")),
         dict(rule="ddtp_linear", fb_act="linear"), dict(rule="ldrl"), dict(rule="dtp_drl")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_two_workers_give_the_serial_engines_numbers_bit_for_bit(case):
    (serial, m1), (threaded, m2) = trained(spec(**case), 1), trained(spec(**case), 2)
    in_threads = {"update"} if case["rule"] in ("bp", "dtp_drl") else {"feedback", "update"}  # (DTP-DRL: serial)
    assert not serial.jobs and {p for _, p in threaded.jobs} == in_threads
    assert m1 == m2
    s1, s2 = serial.state(), threaded.state()
    for name in s1:
        for key in s1[name]:
            assert np.array_equal(s1[name][key], s2[name][key]), (name, key)
    initial = trained(spec(**case), 1, steps=0)[0].parameters()
    assert all(not np.array_equal(initial[n]["W"], serial.parameters()[n]["W"]) for n in serial.layers)  # it learned


@pytest.mark.parametrize("rule,prepared", [("dtp", 3), ("ldrl", 3), ("tp", 3), ("ddtp_linear", 0), ("dtp_drl", 0)])
def test_first_feedback_gradients_start_beside_the_forward_pass(rule, prepared):
    """Where a layer's feedback gradient reads only its own input, f and g, it is the first job of its step, taken
    while the forward pass goes on (DDTP's and DTP-DRL's read the layers above: they wait for the targets)."""
    net, _ = trained(spec(rule=rule, fb_act="linear" if rule == "ddtp_linear" else "tanh"), 2, steps=1)
    net.jobs.clear()
    forward = net.engine._run

    def forward_then_mark(phase, *args):
        forward(phase, *args)
        net.jobs.append(("|", f"end of {phase}"))
    net.engine._run = forward_then_mark
    net.train_step(np.ones((3, N_FEATURES)), np.zeros(3, np.int64))
    during_forward = net.jobs[:net.jobs.index(("|", "end of forward"))]
    assert during_forward == [(name, "feedback") for name in ("h2", "h3", "out")][:prepared]


def test_feedback_step_and_a_probe_wait_for_every_job():
    s = spec(diagnostics=1)
    (serial, _), (threaded, _) = trained(s, 1, steps=2), trained(s, 2, steps=2)
    for net in (serial, threaded):
        net.feedback_step(np.ones((3, N_FEATURES)), np.zeros(3, np.int64))
        assert not net.engine._feedback_jobs and not net.engine._update_jobs
    assert all(np.array_equal(a, b) for n in serial.layers for a, b in
               zip(serial.parameters()[n].values(), threaded.parameters()[n].values()))


def test_a_failing_job_surfaces_and_no_job_is_left_running():
    net, _ = trained(spec(), 2, steps=1)

    def broken():
        raise RuntimeError("feedback kernel failed")
    done = []

    def slow_gradient():  # started before h2's failure is joined, in the backward pass
        time.sleep(0.3)
        done.append(True)
    net.layers["h2"].train_feedback = broken
    net.layers["out"].prepare_update = slow_gradient
    before = net.parameters()
    with pytest.raises(RuntimeError, match="feedback kernel failed"):
        net.train_step(np.ones((3, N_FEATURES)), np.zeros(3, np.int64))
    assert done  # the other jobs were waited for before the error surfaced
    assert not net.engine._feedback_jobs and not net.engine._update_jobs
    after = net.parameters()  # and no forward parameter changed: updates wait for the whole backward phase
    assert all(np.array_equal(before[n][k], after[n][k]) for n in before for k in ("W", "b"))


def test_thread_settings(monkeypatch):
    monkeypatch.setenv("LOCALNET_THREADS", "two")
    with pytest.raises(LocalnetError, match="LOCALNET_THREADS='two'"):
        threads.configure()
    with pytest.raises(LocalnetError, match="≥ 1"):
        threads.configure(0)
    try:
        threads.configure(1)
        assert threads.layout(True) == (1, 1) and threads.layout(False) == (1, 1)
        threads.configure(8)
        assert threads.layout(True) == (2, 4) and threads.layout(False) == (1, 8)
        threads.set_blas(3)
        assert threads.blas_threads() == [3]
        with threads.limit_blas(1):
            assert threads.blas_threads() == [1]
        assert threads.blas_threads() == [3]
    finally:
        monkeypatch.delenv("LOCALNET_THREADS")
        threads.configure()
        threads.set_blas(threads.cores())


@pytest.mark.parametrize("rule", ["bp", "dtp"])
def test_a_conv_net_runs_on_two_job_threads_whatever_its_rule(rule):
    """A conv block's products are one sample's, too small to split across BLAS threads: its weight gradients
    (and feedback training) go beside the chain instead, backprop's too; the numbers are the one-thread layout's."""
    conv = load_spec({
        "name": "conv-threads", "seed": 5, "backend": "numpy", "data": {"name": "digits"},
        "network": {"layers": [{"name": "c1", "type": "conv2d", "channels": 3, "kernel": 3, "pool": "max"},
                               {"name": "fl", "type": "flatten"}, {"name": "f2", "size": 8},
                               {"name": "out", "size": N_CLASSES, "activation": "linear"}]},
        "rule": {"name": rule},
    })
    threads.configure(2)
    try:
        net = Network(conv, 5, (1, 8, 8), N_CLASSES)
        assert (net.engine.workers, net.engine.blas) == (2, 1)
    finally:
        threads.configure()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, N_CLASSES, 6)
    with using(lambda graph, nodes: LocalEngine(graph, nodes, workers=1, blas=1)):
        serial = Network(conv, 5, (1, 8, 8), N_CLASSES)
    for _ in range(3):
        net.train_step(x, y)
        serial.train_step(x, y)
    for name, params in serial.parameters().items():
        for key, value in params.items():
            assert np.array_equal(net.parameters()[name][key], value), (name, key)


@pytest.mark.parametrize("case,workers", [(dict(rule="dtp"), 2), (dict(rule="ldrl"), 2), (dict(rule="bp"), 1),
                                          (dict(rule="ddtp_linear", fb_act="linear"), 2), (dict(rule="dtp_drl"), 1)])
def test_the_engine_picks_two_threads_where_feedback_training_can_run_beside_the_chain(case, workers):
    threads.configure(2)
    try:
        net = Network(spec(**case), 5, N_FEATURES, N_CLASSES)
        assert (net.engine.workers, net.engine.blas) == ((2, 1) if workers == 2 else (1, 2))
        net.train_step(np.ones((3, N_FEATURES)), np.zeros(3, np.int64))
        assert threads.blas_threads() == [net.engine.blas]  # each engine sets its own layout as it runs
    finally:
        threads.configure()


@pytest.mark.parametrize("rule", ["bp", "dtp_drl"])
def test_split_element_wise_passes_give_the_unsplit_numbers_bit_for_bit(rule, monkeypatch):
    """One job thread with BLAS on 2 cores: the numba kernels split their large element-wise passes across them
    (where MKL's OpenMP threads can run them, localnet/backends/numba/cores.py); the numbers are the unsplit ones."""
    from localnet.backends.numba import cores
    from localnet.backends.numba import dense as nbd
    layers = [{"name": "h1", "size": 256, "activation": "tanh"}, {"name": "h2", "size": 256, "activation": "tanh"},
              {"name": "out", "size": N_CLASSES, "activation": "linear"}]  # passes of ≥ 16384 elements: they split
    s = load_spec({"name": "split", "seed": 5, "dtype": "float32", "backend": "numba", "data": {"name": "digits"},
                   "network": {"layers": layers, "feedback": {"activation": "tanh"}},
                   "rule": {"name": rule, "target_step": 0.2, "feedback_noise": 0.3},
                   "optimizer": {"forward": {"type": "adam", "lr": 0.01},
                                 "feedback": {"type": "rmsprop", "lr": 0.01}}})
    calls = []
    kernel = nbd._forward_parts
    monkeypatch.setattr(nbd, "_forward_parts", lambda *args: (calls.append(args[-1]), kernel(*args)))
    saved = threads.cores()
    threads.configure(2)
    try:
        runs = []
        for split in (True, False):
            with contextlib.nullcontext() if split else cores.unsplit():
                net = Network(s, 5, N_FEATURES, N_CLASSES)
                assert (net.engine.workers, net.engine.blas) == (1, 2)
                rng = np.random.default_rng(0)
                for _ in range(3):
                    net.train_step(rng.standard_normal((128, N_FEATURES)), rng.integers(0, N_CLASSES, 128))
                runs.append(net.state())
            if split:
                assert bool(calls) == cores.splits() and set(calls) <= {2}
    finally:
        threads.configure(saved)
    for name in runs[0]:
        for key in runs[0][name]:
            assert np.array_equal(runs[0][name][key], runs[1][name][key]), (name, key)
