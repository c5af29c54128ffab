"""The command line end to end, as a user runs it: train the quick-start, reload it, and fail cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from localnet.cli import main
from localnet.runs import RunDir
from localnet.training import evaluate_run

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def localnet(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "localnet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = localnet("run", QUICKSTART, "--runs-dir", runs, "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs.iterdir()
    return result, run_dir


def test_quickstart_trains_and_writes_a_complete_run_directory(quickstart_run):
    result, run_dir = quickstart_run
    out = result.stdout
    assert "epoch   3" in out and "test accuracy" in out and "seconds / epoch" in out
    assert f"run directory: {run_dir}" in out.replace("\n", "")
    for name in ("spec.yaml", "environment.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    (checkpoint,) = [p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]  # older ones are deleted
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["checkpoint"] == checkpoint.name
    assert sorted(p.name for p in checkpoint.iterdir()) == ["h1.npz", "h2.npz", "network.best.npz", "out.npz",
                                                           "trainer.json"]
    records = RunDir(run_dir).metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert 0.5 < summary["test_accuracy"] <= 1.0  # 3 epochs of DTP on digits is far above chance (0.1)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["backend"] and env["seed"] == 0
    assert env["spec_file"] == str(QUICKSTART) and env["overrides"] == ["train.epochs=3"]  # what made it
    from localnet import blas  # the products' BLAS (the same choice as this process's) where numba kernels ran them
    assert env["blas"] == (blas.select() if env["backend"] == "numba" else None)


def test_resolved_spec_reproduces_the_run(quickstart_run):
    _, run_dir = quickstart_run
    spec = RunDir(run_dir).spec()
    assert spec.train.epochs == 3 and spec.name == "quickstart"


def test_eval_reports_what_training_reported(quickstart_run):
    _, run_dir = quickstart_run
    summary = json.loads((run_dir / "summary.json").read_text())
    result, _ = evaluate_run(run_dir)
    assert result["accuracy"] == summary["test_accuracy"]
    assert result["loss"] == pytest.approx(summary["test_loss"], rel=1e-12)
    cli = localnet("eval", run_dir)
    assert cli.returncode == 0, cli.stderr
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in cli.stdout


def test_same_spec_and_seed_give_the_same_parameters(tmp_path):
    runner = CliRunner()
    dirs = []
    for i in range(2):
        out = tmp_path / str(i)
        res = runner.invoke(main, ["run", str(QUICKSTART), "--runs-dir", str(out), "--set", "train.epochs=1"])
        assert res.exit_code == 0, res.output
        dirs.append(next(out.iterdir()))
    a, b = (RunDir(d).load_parameters(["h1", "h2", "out"]) for d in dirs)
    for layer in a:
        for key in a[layer]:
            np.testing.assert_array_equal(a[layer][key], b[layer][key])


BAD = "name: bad\ndata: {name: digits}\nnetwork:\n  layers:\n    - {name: h1, size: 0}\n"


def test_bad_spec_exits_nonzero_with_one_line_and_no_run_directory(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD)
    runs = tmp_path / "runs"
    result = localnet("run", spec, "--runs-dir", runs)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{spec}:5: network.layers.0.size: out of range; expected >= 1, found 0 (int)" in result.stderr
    assert not runs.exists()


def test_bad_override_is_a_spec_error(tmp_path):
    result = CliRunner().invoke(main, ["run", str(QUICKSTART), "--runs-dir", str(tmp_path / "r"),
                                       "--set", "rule.target_stepp=1"])
    assert result.exit_code == 2 and "rule.target_stepp: unknown key" in result.output
    assert not (tmp_path / "r").exists()


def test_missing_data_names_where_it_looked_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALNET_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("localnet.data.fetch.REGISTRY", {
        name: src.__class__(src.base_url, src.files, (), src.hint, src.unpacked)
        for name, src in __import__("localnet.data.fetch", fromlist=["REGISTRY"]).REGISTRY.items()})
    result = CliRunner().invoke(main, ["run", str(ROOT / "specs" / "fashion-mnist-dtp.yaml"),
                                       "--runs-dir", str(tmp_path / "r"), "--set", "data.download=false"])
    assert result.exit_code == 1
    assert str(tmp_path / "data") in result.output and "apt-get install dataset-fashion-mnist" in result.output
    assert not (tmp_path / "r").exists()


def test_show_prints_layers_channels_and_schedule():
    result = CliRunner().invoke(main, ["show", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    for text in ("layers", "channels", "h2", "target", "forward:  input -> h1 -> h2 -> out -> loss",
                 "backward: loss -> out -> h2 -> h1", "feedback: h2, out"):
        assert text in result.output, text
