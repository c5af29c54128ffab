"""The training loop: schedules, the divergence guard, and what a run directory records on failure."""

import json

import numpy as np
import pytest

import localnet
from localnet.training import Diverged, train

SMALL = {
    "name": "small", "seed": 3, "data": {"name": "digits", "validation": 100},
    "network": {"layers": [{"name": "h1", "size": 16}, {"name": "h2", "size": 16},
                           {"name": "out", "size": 10, "activation": "linear"}]},
    "rule": {"name": "dtp", "target_step": 0.5, "feedback_noise": 0.2},
    "optimizer": {"forward": {"type": "adam", "lr": 0.003}, "feedback": {"type": "adam", "lr": 0.001}},
    "train": {"epochs": 8, "batch_size": 32},
}


def spec(**rule):
    data = json.loads(json.dumps(SMALL))
    data["rule"].update(rule)
    return localnet.load_spec(data)


def test_alternate_epoch_trains_feedback_in_its_own_pass(tmp_path):
    """Lee et al.'s schedule: a feedback-only pass changes V, c and not W, b; then a forward pass the reverse."""
    s = spec(schedule="alternate_epoch")
    net = localnet.build(s, n_features=64, n_classes=10)
    x = np.random.default_rng(0).random((32, 64))
    y = np.arange(32) % 10
    before = net.parameters()
    net.feedback_step(x, y)
    middle = net.parameters()
    net.forward_step(x, y)
    after = net.parameters()
    for layer in ("h2", "out"):
        assert np.array_equal(before[layer]["W"], middle[layer]["W"])
        assert not np.array_equal(before[layer]["V"], middle[layer]["V"])
        assert np.array_equal(middle[layer]["V"], after[layer]["V"])
        assert not np.array_equal(middle[layer]["W"], after[layer]["W"])
    summary, run = train(s, runs_root=tmp_path)
    assert summary["status"] == "completed" and summary["test_accuracy"] > 0.3


@pytest.mark.parametrize("rule", ["dtp", "bp"])  # plain TP barely learns here: see README, Results
def test_each_rule_learns_digits_above_chance(tmp_path, rule):
    summary, _ = train(spec(name=rule), runs_root=tmp_path)
    assert summary["validation_accuracy"] > 0.3, summary  # chance is 0.1


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_divergence_stops_the_run_and_marks_it(tmp_path):
    data = json.loads(json.dumps(SMALL))
    data["rule"] = {"name": "bp"}
    data["network"]["layers"] = [{"name": "out", "size": 10, "activation": "linear"}]
    data["optimizer"]["forward"] = {"type": "sgd", "lr": 1e38}  # float32 weights overflow on the first step
    # the loss either overflows at once or explodes past 1e6 times the first batch's first: both stop the run
    with pytest.raises(Diverged, match=r"non-finite values at epoch 1, batch \d+ \(train_step\): first in layer "
                                       r"'out', forward activation; loss is (nan|inf)|the loss exploded at epoch 1, "
                                       r"batch \d+ \(train_step\)"):
        train(localnet.load_spec(data), runs_root=tmp_path)
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and "loss" in summary["error"]
