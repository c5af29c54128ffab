"""Optimiser steps against their textbook formulas, written out independently for two steps."""

import numpy as np
import pytest

from localnet.backends.numpy import optim
from localnet.optim import Optimizer
from localnet.spec import OptimizerSpec

import localnet.backends.numpy as numpy_backend


def run(spec, grads, p0):
    params = {"W": p0.copy()}
    opt = Optimizer(spec, params, numpy_backend.optim)
    for g in grads:
        opt.step(params, {"W": g.copy()})
    return params["W"]


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    return rng.standard_normal(5), [rng.standard_normal(5) for _ in range(2)]


def test_sgd_with_momentum_and_weight_decay(case):
    p, grads = case
    spec = OptimizerSpec(type="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    want, buf = p.copy(), np.zeros(5)
    for g in grads:
        buf = 0.9 * buf + (g + 0.01 * want)
        want = want - 0.1 * buf
    np.testing.assert_allclose(run(spec, grads, p), want, rtol=1e-14)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_eps_inside_the_square_root(case, centered):
    p, grads = case
    spec = OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, eps=1e-3, momentum=0.9, centered=centered)
    want, v, m, buf = p.copy(), np.zeros(5), np.zeros(5), np.zeros(5)
    for g in grads:
        v = 0.95 * v + 0.05 * g ** 2
        m = 0.95 * m + 0.05 * g
        denom = np.sqrt(v - m ** 2 + 1e-3) if centered else np.sqrt(v + 1e-3)
        buf = 0.9 * buf + g / denom
        want = want - 0.01 * buf
    np.testing.assert_allclose(run(spec, grads, p), want, rtol=1e-14)


def test_adam_with_bias_correction(case):
    p, grads = case
    spec = OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    want, m, v = p.copy(), np.zeros(5), np.zeros(5)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g ** 2
        want = want - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(run(spec, grads, p), want, rtol=1e-14)


def test_state_names_follow_the_options():
    assert optim.state_names(OptimizerSpec(type="sgd")) == ()
    assert optim.state_names(OptimizerSpec(type="rmsprop", centered=True, momentum=0.5)) == (
        "square_avg", "grad_avg", "momentum")


@pytest.mark.parametrize("spec", [OptimizerSpec(type="sgd", lr=0.1, momentum=0.9),
                                  OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, centered=True, momentum=0.9),
                                  OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99))], ids=lambda s: s.type)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_states_that_decay_reach_zero_not_the_subnormal_numbers(spec, dtype):
    tiny = np.finfo(dtype).tiny
    smallest = np.nextafter(dtype(0), dtype(1))
    # plain float arithmetic stalls: the decay factors round a few multiples of the smallest subnormal to themselves
    for factor in (0.9, 0.95, 0.99):
        assert dtype(factor) * (3 * smallest) == 3 * smallest
    p = np.ones(4, dtype)
    state = {name: np.full_like(p, 3 * tiny) for name in optim.state_names(spec)}
    for t in range(1, 301):  # no gradient: every average decays by its factor at each step (0.99³⁰⁰ < 1/3)
        optim.STEPS[spec.type](p, np.zeros_like(p), state, spec, t)
        for name, values in state.items():
            assert not np.any((values != 0) & (np.abs(values) < tiny)), (t, name)  # never subnormal
    for name, values in state.items():
        assert not values.any(), name



@pytest.mark.parametrize("period, floor", [(85, 1e-5), (None, 0.0)])
def test_cosine_schedule_is_pytorchs_cosine_annealing_stepped_per_epoch(case, period, floor):
    """η_e = η_min + ½(η_0 − η_min)(1 + cos(π (e − 1)/T)) in epoch e from 1 (PyTorch's CosineAnnealingLR after
    e − 1 scheduler steps; its closed form is periodic past T); the steps then use that rate."""
    p, grads = case
    spec = OptimizerSpec(type="sgd", lr=0.08, schedule="cosine", schedule_epochs=period, min_lr=floor)
    params = {"W": p.copy()}
    opt = Optimizer(spec, params, numpy_backend.optim)
    epochs, T = 90, period or 90
    for e in (1, 2, 43, 86, 90):
        opt.start_epoch(e, epochs)
        want = floor + 0.5 * (0.08 - floor) * (1 + np.cos(np.pi * (e - 1) / T))
        assert opt.spec.lr == pytest.approx(want, rel=1e-12)
        before = params["W"].copy()
        opt.step(params, {"W": grads[0]})
        np.testing.assert_allclose(params["W"], before - want * grads[0], rtol=1e-12)
    constant = Optimizer(OptimizerSpec(type="sgd", lr=0.08), {"W": p.copy()}, numpy_backend.optim)
    constant.start_epoch(50, 90)
    assert constant.spec.lr == 0.08
