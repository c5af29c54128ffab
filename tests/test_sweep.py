"""`localnet sweep`: the grid times seeds, each run in its own directory and equal to the same run made alone;
local processes and mpi4py.futures workers under mpiexec."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_mpi import MPIEXEC, needs_mpi

from localnet.errors import SpecError
from localnet.sweep import chosen_on_validation, over_seeds, parse_grid, plan, split_values

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
    tests = [runs[("0.003", seed)]["test_accuracy"] for seed in (0, 1)]  # and the spread over seeds
    mean, sd = (tests[0] + tests[1]) / 2, abs(tests[0] - tests[1]) / 2 ** 0.5
    assert "over 2 seeds" in done.stdout and f"{100 * mean:.2f} ± {100 * sd:.2f}%" in done.stdout
    vals = {lr: sum(runs[(lr, seed)]["validation_accuracy"] for seed in (0, 1)) / 2 for lr in ("0.001", "0.003")}
    best = max(vals, key=vals.get)  # ties keep the first in plan order, as max does
    (chosen,) = [line for line in done.stdout.splitlines() if line.startswith("chosen on validation (means over 2")]
    assert f"optimizer.forward.lr={best} " in chosen and f"validation accuracy {100 * vals[best]:.2f}%" in chosen


def children(pid):
    """The processes whose parent is `pid` (from /proc): a sweep's workers and multiprocessing's resource tracker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.fixture
def long_sweep(tmp_path):
    """Starts a sweep of three long runs on two workers and returns, once both workers are training (each run has
    logged an epoch), the sweep process and its children; its output goes to files, as a pipe held open by a
    stray worker would hang the test. Whatever is still alive at the end is killed."""
    started = []

    def start():
        out, err = (open(tmp_path / name, "w") for name in ("out.txt", "err.txt"))  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "localnet", "sweep", QUICK, "--grid",
                                 "optimizer.forward.lr=0.001,0.002,0.003", "--grid", "train.epochs=500",
                                 "--grid", "backend=numpy", "--jobs", "2", "--runs-dir", str(tmp_path / "runs")],
                                stdout=out, stderr=err, text=True)
        started.append(proc.pid)
        give_up = time.monotonic() + 120
        while sum(1 for m in (tmp_path / "runs").glob("*/*/metrics.jsonl") if m.read_text()) < 2:
            assert proc.poll() is None and time.monotonic() < give_up, (tmp_path / "err.txt").read_text()
            time.sleep(0.05)
        kids = children(proc.pid)
        started.extend(kids)
        commands = [Path(f"/proc/{k}/cmdline").read_bytes() for k in kids]
        assert sum(b"spawn_main" in c for c in commands) == 2 and any(b"resource_tracker" in c for c in commands)
        return proc, kids

    yield start
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def assert_gone(pids, within=10):
    give_up = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < give_up, [pid for pid in pids if alive(pid)]
        time.sleep(0.05)


def interrupted_runs(root):
    summaries = [json.loads(s.read_text()) for s in Path(root).glob("*/*/summary.json")]
    return [s for s in summaries if s["status"] == "interrupted" and s["checkpoint"]]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_killed_sweep_takes_its_workers_and_their_resource_tracker_with_it(tmp_path, long_sweep):
    """SIGKILL leaves the sweep no chance to stop anything: each worker notices its parent has gone, stops its run
    as on SIGTERM (checkpointed, resumable) and exits; the resource tracker follows once no process holds its pipe."""
    proc, kids = long_sweep()
    proc.kill()
    proc.wait()
    assert_gone(kids)
    assert len(interrupted_runs(tmp_path / "runs")) == 2


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_sweep_and_its_workers_promptly_with_one_line(tmp_path, long_sweep, signame):
    proc, kids = long_sweep()
    sent = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    proc.wait(timeout=60)
    assert time.monotonic() - sent < 15
    err = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: stopped by {signame}: 2 run(s) interrupted"), err
    assert "1 not started" in lines[0]  # the third run, queued to a worker, never began
    assert_gone(kids)
    assert len(interrupted_runs(tmp_path / "runs")) == 2
    assert len(list((tmp_path / "runs").glob("*/*/summary.json"))) == 2


def test_over_seeds_takes_mean_and_sample_deviation_per_combination():
    def run(status, val=None, test=None, best=None):
        return {"status": status, "validation_accuracy": val, "test_accuracy": test,
                **({"best_validation": {"test_accuracy": best}} if best is not None else {})}
    rows = [("a0", ["lr=1"], 0, run("completed", 0.80, 0.88, 0.89)),
            ("a1", ["lr=1"], 1, run("completed", 0.90, 0.86, 0.85)),
            ("a2", ["lr=1"], 2, run("completed", 0.85, 0.87, 0.84)),
            ("b0", ["lr=2"], 0, run("failed")), ("b1", ["lr=2"], 1, run("completed", 0.5, 0.6))]
    (first, second) = over_seeds(rows)
    assert first[:3] == (["lr=1"], 3, 3)
    assert first[3]["test_accuracy"] == pytest.approx((0.87, 0.01))  # s.d. with n − 1: sqrt((1e-4 + 1e-4) / 2)
    assert first[3]["validation_accuracy"] == pytest.approx((0.85, 0.05))
    assert first[3]["best_validation_test_accuracy"] == pytest.approx((0.86, 0.026457513))
    assert second[:3] == (["lr=2"], 1, 2)  # the failed seed counts as not completed, and is left out
    assert second[3]["test_accuracy"] == pytest.approx((0.6, None)) and \
        second[3]["best_validation_test_accuracy"] == (None, None)


def test_the_choice_is_made_on_validation_never_on_test():
    def combo(name, done, val=None, test=None, val_loss=None, total=2):
        stats = {"validation_accuracy": (val, None), "test_accuracy": (test, None),
                 "validation_loss": (val_loss, None), "test_loss": (None, None),
                 "best_validation_test_accuracy": (None, None)}
        return ([name], done, total, stats)
    a, b, c = combo("a", 2, 0.85, 0.90), combo("b", 2, 0.88, 0.80), combo("c", 1, 0.99, 0.99)
    assert chosen_on_validation([a, b, c]) == (b, "accuracy")  # c has a failed seed: its mean is not comparable
    assert chosen_on_validation([a, combo("a2", 2, 0.85, 0.95)]) == (a, "accuracy")  # equals: the first
    assert chosen_on_validation([a, c]) is None  # one complete combination: nothing to choose
    ae = [combo("x", 2, val_loss=20.0), combo("y", 2, val_loss=17.5), combo("z", 2, val_loss=19.0)]
    assert chosen_on_validation(ae) == (ae[1], "loss")  # an auto-encoder: the lowest validation loss


@needs_mpi
def test_mpi_sweep_runs_on_mpi4py_futures_workers(tmp_path):
    done = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py.futures", "-m", "localnet", "sweep",
                           QUICK, *GRID, "--mpi", "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sweep_runs(tmp_path)
    assert sorted(runs) == [("0.001", 0), ("0.003", 0)]
    assert all(r["status"] == "completed" for r in runs.values())
