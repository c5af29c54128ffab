"""A run directory is untrusted input, and output paths are the user's (issue 20, data loss and paths): nothing is
read, written or deleted through a symbolic link out of a run directory, nothing is read from a device or a FIFO
in one (which would hang), and a report, plot or runs folder that is not a regular file or folder is one clear
line before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import localnet
from helpers import only_run, stop_at
from localnet.errors import Interrupted, RunError
from localnet.training import StopRequest, resume, train

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["backend=numpy", "train.epochs=2", "network.layers.h1.size=8", "network.layers.h2.size=8"]


@pytest.fixture
def stopped(tmp_path):
    """A run interrupted in its second epoch (a checkpoint to resume from, a resume that would commit more)."""
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(localnet.load_spec(ROOT / "specs" / "quickstart.yaml", SMALL), runs_root=tmp_path / "runs", stop=stop,
              **stop_at(stop, 2, 3))
    return only_run(tmp_path / "runs")


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "localnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line(done):
    """The error a command printed: one line, no traceback."""
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_symlinked_checkpoints_folder_is_refused_and_what_it_points_at_survives(stopped, tmp_path):
    somewhere = tmp_path / "somewhere"
    for name in ("000001", "keep", "photos"):
        (somewhere / name).mkdir(parents=True)
        (somewhere / name / "file").write_text("precious")
    os.rename(stopped / "checkpoints", tmp_path / "moved")
    (stopped / "checkpoints").symlink_to(somewhere, target_is_directory=True)
    with pytest.raises(RunError, match="checkpoints is a symbolic link"):
        resume(stopped)
    assert sorted(p.name for p in somewhere.iterdir()) == ["000001", "keep", "photos"]
    assert all((somewhere / n / "file").read_text() == "precious" for n in ("000001", "keep", "photos"))


def test_only_numbered_checkpoint_folders_are_deleted_and_never_through_a_link(stopped, tmp_path):
    """The clean-up after a commit deletes the checkpoints this code wrote, not a user's folder or a link's
    target that sits beside them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("precious")
    (stopped / "checkpoints" / "notes").mkdir()
    (stopped / "checkpoints" / "000099").symlink_to(outside, target_is_directory=True)
    summary, _ = resume(stopped)
    assert summary["status"] == "completed"
    assert (stopped / "checkpoints" / "notes").is_dir() and (outside / "file").read_text() == "precious"


def test_a_symlinked_lock_creates_nothing_outside(stopped, tmp_path):
    (stopped / ".lock").unlink()
    target = tmp_path / "elsewhere.lock"
    (stopped / ".lock").symlink_to(target)
    with pytest.raises(RunError, match=r"\.lock is a symbolic link"):
        resume(stopped)
    assert not target.exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json"])
def test_a_fifo_or_a_device_in_a_run_directory_is_one_line_not_a_hang(stopped, name):
    (stopped / name).unlink()
    os.mkfifo(stopped / name)
    assert "is not a regular file or folder" in one_line(cli("report", stopped, timeout=60))
    (stopped / name).unlink()
    (stopped / name).symlink_to("/dev/zero")
    assert "is a symbolic link" in one_line(cli("report", stopped, timeout=60))


def test_report_refuses_output_paths_that_are_not_files(stopped, tmp_path):
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    for out in (fifo, "/dev/full"):  # (a folder: click refuses it with its usage message)
        assert "exists and is not a regular file" in one_line(cli("report", stopped, "--html", out, timeout=60))
    assert fifo.exists() and not fifo.is_file()  # still the FIFO it was
    (tmp_path / "afile").write_text("x")
    assert "cannot make the folder" in one_line(cli("report", stopped, "--html", tmp_path / "afile" / "a.html"))


def test_a_runs_folder_that_is_not_a_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for runs in ("/dev/null", tmp_path / "afile", tmp_path / "afile" / "under", "/proc/nope"):
        line = one_line(cli("run", ROOT / "specs" / "quickstart.yaml", "--set", "train.epochs=0", "--runs-dir", runs))
        assert f"cannot use {runs} as the runs folder" in line, line
    assert (tmp_path / "afile").read_text() == "x"
