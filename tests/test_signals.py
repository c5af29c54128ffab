"""Nothing lost, for real: `localnet run` in a subprocess is SIGKILLed at a random moment, or sent SIGINT or
SIGTERM, then resumed with `localnet run --resume`; its final checkpoint must equal, bit for bit, that of the same
spec run without a stop."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import only_run
from localnet.cli import main
from localnet.runs import RunDir
from test_resume import assert_same_state, same_metrics

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
EPOCHS = 8
# 256 hidden units in batches of 8: about 0.2 s an epoch on numpy, so a random moment lands inside training
ARGS = ["--backend", "numpy", "--set", f"train.epochs={EPOCHS}", "--set", "train.batch_size=8",
        "--set", "network.layers.h1.size=256", "--set", "network.layers.h2.size=256"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "localnet", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def wait_for_epochs(proc, root, epochs):
    """Block until the run under `root` has logged `epochs` epochs and has a checkpoint; returns its directory
    and the last epoch's duration. Polls files only: nothing here depends on how fast the machine is (the limit
    only turns a hung run into a failure)."""
    give_up = time.monotonic() + 300
    while True:
        if time.monotonic() > give_up:
            proc.kill()
            pytest.fail(f"no checkpoint after {epochs} epoch(s) within 300 s")
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before it could be stopped: {proc.stderr.read()}")
        dirs = list(Path(root).iterdir()) if Path(root).is_dir() else []
        if dirs:
            run = RunDir(dirs[0])
            records = run.metrics()
            if len(records) >= epochs and (dirs[0] / "checkpoints" / "latest.json").exists():
                return dirs[0], records[-1]["seconds"]
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    code, out, err = finish(start("run", QUICKSTART, "--runs-dir", root, *ARGS))
    assert code == 0, err
    return only_run(root)


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, reference):
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    after = rnd.randint(1, EPOCHS - 3)  # leaves at least two epochs to kill the run in
    proc = start("run", QUICKSTART, "--runs-dir", tmp_path, *ARGS)
    path, seconds = wait_for_epochs(proc, tmp_path, after)
    time.sleep(rnd.uniform(0.0, 1.0) * seconds)  # anywhere in the next epoch: a batch, the log, a checkpoint
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}"
    run = RunDir(path)
    assert run.summary()["status"] == "running", f"seed {seed}: the kill came too late"
    assert not run.in_use()  # the kernel dropped the dead process's lock
    report = CliRunner().invoke(main, ["report", str(path)])  # a killed run reads like any other
    assert report.exit_code == 0 and "killed?" in report.output, report.output
    code, out, err = finish(start("run", "--resume", path))
    assert code == 0, f"seed {seed}: {err}"
    assert "Traceback" not in err
    assert run.summary()["status"] == "completed" and run.summary()["resumes"] == 1
    assert_same_state(reference, path)
    assert same_metrics(reference, path), f"seed {seed}"


@pytest.mark.parametrize("signals", [["SIGINT"], ["SIGTERM"], ["SIGINT", "SIGINT"]])
def test_sigint_and_sigterm_checkpoint_mark_interrupted_exit_130_and_resume_bit_identical(
        tmp_path, reference, signals):
    proc = start("run", QUICKSTART, "--runs-dir", tmp_path, *ARGS)
    path, seconds = wait_for_epochs(proc, tmp_path, 1)
    time.sleep(random.uniform(0.0, 0.5) * seconds)
    for name in signals:  # a second signal aborts at once, keeping the previous checkpoint
        proc.send_signal(getattr(signal, name))
    code, out, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err
    summary = RunDir(path).summary()
    assert summary["status"] == "interrupted"
    if len(signals) == 1:
        assert f"stopped by {signals[0]}" in summary["error"] and "--resume" in err
        trainer = json.loads((RunDir(path).checkpoint_path() / "trainer.json").read_text())
        assert trainer["epoch"] == summary["checkpoint"]["epoch"]
    code, out, err = finish(start("run", "--resume", path))
    assert code == 0, err
    assert_same_state(reference, path)
    assert same_metrics(reference, path)
    code, out, err = finish(start("run", "--resume", path))
    assert code == 1 and "is completed; there is nothing to resume" in err and "Traceback" not in err


def test_two_processes_at_once_get_distinct_run_directories(tmp_path):
    procs = [start("run", QUICKSTART, "--runs-dir", tmp_path, "--backend", "numpy", "--set", "train.epochs=1")
             for _ in range(2)]
    for proc in procs:
        code, out, err = finish(proc)
        assert code == 0, err
    dirs = sorted(tmp_path.iterdir())
    assert len(dirs) == 2
    for d in dirs:
        assert RunDir(d).summary()["status"] == "completed"
        assert not list(d.rglob("*.tmp"))
