"""Model selection by the validation split: a run keeps the parameters of its best validation epoch (in every
checkpoint, so resuming keeps them too) and reports their test score beside the last epoch's."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import localnet
from helpers import only_run, reseal, stop_at
from localnet.cli import main
from localnet.errors import Interrupted, RunError
from localnet.report import row
from localnet.runs import RunDir
from localnet.training import Best, StopRequest, evaluate_run, resume, train

ROOT = Path(__file__).resolve().parent.parent
# 6 epochs of DTP on the digits whose validation accuracy peaks at epoch 5 (0.91, then 0.9)
SPEC = ["backend=numpy", "train.epochs=6", "network.layers.h1.size=16", "network.layers.h2.size=16",
        "optimizer.forward.lr=0.01"]


def spec(*extra):
    return localnet.load_spec(ROOT / "specs" / "quickstart.yaml", SPEC + list(extra))


def best_file(path):
    run = RunDir(path)
    checkpoint = run.checkpoint_path()
    trainer = run.load_trainer_state(checkpoint)
    return trainer["best"], (checkpoint / "network.best.npz").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    summary, run = train(spec(), runs_root=tmp_path_factory.mktemp("reference"))
    return summary, run.path


def test_the_best_epoch_is_the_one_validation_picks_and_its_test_score_is_that_epochs(tmp_path, reference):
    summary, path = reference
    val = [r["val_accuracy"] for r in RunDir(path).metrics()]
    best = summary["best_validation"]
    assert best["epoch"] == 1 + int(np.argmax(val)) == 5  # the first epoch reaching the maximum; not the last
    assert best["metric"] == "val_accuracy" and best["validation_accuracy"] == max(val)
    # the same spec stopped at that epoch ends with exactly those parameters, so exactly those scores
    short, _ = train(spec("train.epochs=5"), runs_root=tmp_path)
    for key in ("validation_accuracy", "validation_loss", "test_accuracy", "test_loss"):
        assert best[key] == short[key], key
    assert best["test_accuracy"] != summary["test_accuracy"]  # (so the check above saw other parameters)


def test_a_run_whose_last_epoch_is_best_reports_the_last_numbers(tmp_path):
    summary, path = train(spec("train.epochs=3"), runs_root=tmp_path)
    val = [r["val_accuracy"] for r in RunDir(path.path).metrics()]
    assert summary["best_validation"]["epoch"] == 3 == 1 + int(np.argmax(val))
    assert summary["best_validation"]["test_accuracy"] == summary["test_accuracy"]


def test_resuming_keeps_the_best_epoch_bit_for_bit(tmp_path, reference):
    summary, path = reference
    stop = StopRequest()
    with pytest.raises(Interrupted):  # in epoch 6, after epoch 5 (the best) was checkpointed
        train(spec(), runs_root=tmp_path, stop=stop, **stop_at(stop, 6, 10))
    stopped = only_run(tmp_path)
    assert best_file(stopped)[0]["epoch"] == 5
    resumed, _ = resume(stopped)
    assert best_file(stopped) == best_file(path)
    assert resumed["best_validation"] == summary["best_validation"]


def test_eval_best_and_the_report_read_the_best_epoch(reference):
    summary, path = reference
    best = summary["best_validation"]
    result, _ = evaluate_run(path, best=True)
    assert result["accuracy"] == best["test_accuracy"]
    out = CliRunner().invoke(main, ["eval", str(path), "--best"])
    assert out.exit_code == 0, out.output
    assert f"test accuracy {100 * best['test_accuracy']:.2f}%" in out.output
    assert f"training reported {100 * best['test_accuracy']:.2f}%" in out.output
    cells = row(path).cells
    assert cells["test error at best validation"] == f"{100 * (1 - best['test_accuracy']):.2f} %"
    assert cells["test error"] == f"{100 * (1 - summary['test_accuracy']):.2f} %"
    assert cells["backend"] == "numpy"  # from the run's environment.json


def test_without_a_validation_split_nothing_is_kept_and_eval_best_says_why(tmp_path):
    summary, run = train(spec("data.validation=0", "train.epochs=2"), runs_root=tmp_path)
    assert "best_validation" not in summary
    assert "best" not in run.load_trainer_state(run.checkpoint_path())
    with pytest.raises(RunError, match="no best-validation parameters"):
        evaluate_run(run.path, best=True)
    assert row(run.path).cells["test error at best validation"] == "–"


def test_a_best_entry_without_its_parameters_is_refused_by_resume(tmp_path):
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(spec(), runs_root=tmp_path, stop=stop, **stop_at(stop, 3, 4))
    path = only_run(tmp_path)
    checkpoint = RunDir(path).checkpoint_path()
    (checkpoint / "network.best.npz").unlink()
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    del trainer["sha256"]["network.best.npz"]
    (checkpoint / "trainer.json").write_text(json.dumps(trainer))
    reseal(checkpoint)
    with pytest.raises(RunError, match="'best' entry"):
        resume(path)


@pytest.mark.parametrize("metric,values,beaten", [
    ("val_accuracy", (0.5, 0.6), True), ("val_accuracy", (0.5, 0.5), False), ("val_accuracy", (0.5, 0.4), False),
    ("val_loss", (2.0, 1.0), True), ("val_loss", (2.0, 2.0), False), ("val_loss", (2.0, 3.0), False),
])
def test_accuracy_is_maximised_loss_minimised_and_a_tie_keeps_the_earlier_epoch(metric, values, beaten):
    assert Best(1, metric, values[0], {}).beaten_by({metric: values[1]}) is beaten


def test_an_auto_encoder_is_selected_by_validation_loss_and_the_cli_prints_losses(tmp_path):
    """A reconstruction run has no accuracy: the best epoch is the lowest validation loss, and `localnet run` and
    `localnet eval` print losses, not 0 % accuracies."""
    args = ["run", str(ROOT / "specs" / "quickstart.yaml"), "--backend", "numpy", "--runs-dir", str(tmp_path),
            "--set", "network.loss=reconstruction", "--set", "network.layers.2.size=64", "--set", "train.epochs=3"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "test loss" in out.output and "accuracy" not in out.output and "acc " not in out.output
    path = only_run(tmp_path)
    summary = RunDir(path).summary()
    val = [r["val_loss"] for r in RunDir(path).metrics()]
    assert summary["best_validation"]["metric"] == "val_loss"
    assert summary["best_validation"]["epoch"] == 1 + int(np.argmin(val))
    shown = CliRunner().invoke(main, ["eval", str(path), "--best"])
    assert shown.exit_code == 0 and "test loss" in shown.output and "accuracy" not in shown.output, shown.output


def test_the_report_row_survives_a_missing_environment_file(tmp_path, reference):
    import shutil
    path = tmp_path / "run"
    shutil.copytree(reference[1], path)
    (path / "environment.json").unlink()
    cells = row(path).cells
    assert cells["backend"] == "–" and cells["test error"] != "–"
