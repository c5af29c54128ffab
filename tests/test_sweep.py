"""`localnet sweep`: the grid times seeds, each run in its own directory and equal to the same run made alone;
local processes and mpi4py.futures workers under mpiexec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_mpi import MPIEXEC, needs_mpi

from localnet.errors import SpecError
from localnet.sweep import parse_grid, plan, split_values

SPECS = Path(__file__).resolve().parents[1] / "specs"
QUICK = str(SPECS / "quickstart.yaml")
GRID = ["--grid", "optimizer.forward.lr=0.001,0.003", "--grid", "train.epochs=1", "--grid", "backend=numpy"]


def test_grid_values_split_on_commas_outside_brackets():
    assert split_values("1,2, [0.9, 0.99],{a: 1, b: 2}") == ["1", "2", "[0.9, 0.99]", "{a: 1, b: 2}"]
    assert parse_grid(["a.b=1,2", "c=x"]) == [("a.b", ["1", "2"]), ("c", ["x"])]
    with pytest.raises(SpecError, match="key.path=v1,v2"):
        parse_grid(["a.b"])
    with pytest.raises(SpecError, match="twice"):
        parse_grid(["a=1", "a=2"])


def test_plan_is_the_product_times_seeds_and_checks_every_spec_first():
    runs = plan(QUICK, ["optimizer.forward.lr=0.001,0.003", "train.epochs=1"], 2)
    assert [(o, s) for _, o, s in runs] == [(["optimizer.forward.lr=0.001", "train.epochs=1"], 0),
                                            (["optimizer.forward.lr=0.001", "train.epochs=1"], 1),
                                            (["optimizer.forward.lr=0.003", "train.epochs=1"], 0),
                                            (["optimizer.forward.lr=0.003", "train.epochs=1"], 1)]
    assert len({name for name, _, _ in runs}) == 4
    with pytest.raises(SpecError, match="optimizer.forward.lr"):
        plan(QUICK, ["optimizer.forward.lr=0.001,-1"], 1)


def sweep_runs(root):
    (sweep_dir,) = Path(root).iterdir()
    runs = {}
    for run in sweep_dir.iterdir():
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        runs[(str(spec["optimizer"]["forward"]["lr"]), spec["seed"])] = json.loads((run / "summary.json").read_text())
    return runs


def test_local_sweep_runs_every_combination_like_single_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "localnet", "sweep", QUICK, *GRID, "--seeds", "2", "--jobs", "2",
                           "--runs-dir", str(tmp_path / "sweep")], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sweep_runs(tmp_path / "sweep")
    assert sorted(runs) == [("0.001", 0), ("0.001", 1), ("0.003", 0), ("0.003", 1)]
    assert all(r["status"] == "completed" for r in runs.values())
    alone = subprocess.run([sys.executable, "-m", "localnet", "run", QUICK, "--backend", "numpy", "--set",
                            "train.epochs=1", "--set", "optimizer.forward.lr=0.003", "--set", "seed=1",
                            "--runs-dir", str(tmp_path / "alone")], capture_output=True, text=True, timeout=120,
                           check=False)
    assert alone.returncode == 0, alone.stderr
    (run,) = (tmp_path / "alone").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] == runs[("0.003", 1)]["test_accuracy"]
    assert runs[("0.003", 1)]["test_accuracy"] != runs[("0.001", 1)]["test_accuracy"]
    assert f"{100 * summary['test_accuracy']:.2f}%" in done.stdout  # the table of runs


@needs_mpi
def test_mpi_sweep_runs_on_mpi4py_futures_workers(tmp_path):
    done = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py.futures", "-m", "localnet", "sweep",
                           QUICK, *GRID, "--mpi", "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sweep_runs(tmp_path)
    assert sorted(runs) == [("0.001", 0), ("0.003", 0)]
    assert all(r["status"] == "completed" for r in runs.values())
