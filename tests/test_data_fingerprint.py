"""A run directory records the digest of its data (data.json: each file's SHA-256, each split's): a resume on other
data is refused with one line unless `--allow-other-data`; `eval` warns; a relative `data.path` is recorded
absolute, so a resume from another folder reads the same files; a tampered record is one line."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import only_run, stop_at, write_idx
from localnet.data import load_dataset
from localnet.data.datasets import data_changes
from localnet.errors import Interrupted
from localnet.runs import RunDir
from localnet.spec import load_spec
from localnet.training import StopRequest, train

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
SPEC = {"name": "own", "backend": "numpy", "data": {"name": "arrays", "path": "blobs.npz", "validation": 40},
        "network": {"layers": [{"name": "h", "size": 8}, {"name": "out", "size": 4, "activation": "linear"}]},
        "rule": {"name": "bp"}, "optimizer": {"forward": {"lr": 0.01}},
        "train": {"epochs": 3, "batch_size": 16}}


def blobs(path, seed=0):
    """240 made-up samples of 5 features in 4 classes (the quadrants of the first two)."""
    x = np.random.default_rng(seed).standard_normal((240, 5)).astype(np.float32)
    np.savez(path, x_train=x, y_train=(x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0))
    return path


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "localnet", *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env=env)


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def one_line(done):
    """The error a command printed: one line, no traceback, a non-zero status."""
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = lines(done.stderr)
    return line


@pytest.fixture
def stopped(tmp_path, monkeypatch):
    """A run of SPEC interrupted in its second epoch, made in tmp_path/made with a relative data.path."""
    made = tmp_path / "made"
    made.mkdir()
    monkeypatch.chdir(made)
    blobs(made / "blobs.npz")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(load_spec(SPEC), runs_root=tmp_path / "runs", stop=stop, **stop_at(stop, 2, 3))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing of the run's data here: a relative path would find nothing
    return only_run(tmp_path / "runs")


def checkpoint_arrays(run):
    run = RunDir(run)
    checkpoint = run.checkpoint_path()
    return run.load_layer_states(checkpoint, run.load_trainer_state(checkpoint)["layers"])


def test_a_relative_data_path_resumes_from_another_folder_bit_identically(stopped, tmp_path):
    spec = yaml.safe_load((stopped / "spec.yaml").read_text())
    assert spec["data"]["path"] == str(tmp_path / "made" / "blobs.npz")  # recorded absolute
    done = cli("run", "--resume", stopped, cwd=tmp_path / "elsewhere")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert cli("eval", stopped, cwd=tmp_path / "elsewhere").returncode == 0
    os.chdir(tmp_path / "made")
    whole, _ = train(load_spec(SPEC), runs_root=tmp_path / "whole")
    assert json.loads((stopped / "summary.json").read_text())["test_loss"] == whole["test_loss"]
    a, b = checkpoint_arrays(stopped), checkpoint_arrays(only_run(tmp_path / "whole"))
    assert a.keys() == b.keys()
    for layer in a:
        for key in a[layer]:
            assert np.array_equal(a[layer][key], b[layer][key]), (layer, key)


def test_a_resume_on_changed_data_is_refused_unless_allowed(stopped, tmp_path):
    recorded = json.loads((stopped / "data.json").read_text())
    file = tmp_path / "made" / "blobs.npz"
    assert list(recorded["files"]) == [str(file)] and recorded["splits"]["validation"]["samples"] == 40
    blobs(file, seed=1)  # other samples, the same shapes: the checkpoint would load and train on
    was = (stopped / "summary.json").read_text()
    line = one_line(cli("run", "--resume", stopped, cwd=tmp_path / "elsewhere"))
    assert "is not the data" in line and f"file {file}: sha256 {recorded['files'][str(file)][:12]} recorded" in line
    assert "train split: 152 samples, sha256" in line and "--allow-other-data" in line, line
    assert (stopped / "summary.json").read_text() == was  # refused before anything was written

    warned = cli("eval", stopped, cwd=tmp_path / "elsewhere")  # eval reads the data found now, and says so
    assert warned.returncode == 0 and "warning: the data is not the data" in warned.stderr, warned.stderr

    done = cli("run", "--resume", stopped, "--allow-other-data", cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in lines(done.stderr) if "warning" in line]
    assert "is not the data" in warning and "(--allow-other-data)" in warning
    now = json.loads((stopped / "data.json").read_text())
    assert now["files"][str(file)] != recorded["files"][str(file)]
    assert now["earlier"] == [{k: v for k, v in recorded.items() if k != "earlier"}]  # what it trained on before


@pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None, reason="mpi4py and mpiexec")
def test_the_mpi_engine_refuses_changed_data_too(stopped, tmp_path):
    """Rank 0 runs `training.resume`, which checks the data; the other ranks read only its shape."""
    blobs(tmp_path / "made" / "blobs.npz", seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "localnet", "run", "--resume", str(stopped),
                           "--engine", "mpi"], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path / "elsewhere", env=env)
    assert done.returncode != 0 and "is not the data" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert json.loads((stopped / "summary.json").read_text())["status"] == "interrupted"


def test_the_flag_needs_resume(tmp_path):
    done = cli("run", ROOT / "specs" / "quickstart.yaml", "--allow-other-data", cwd=tmp_path)
    assert done.returncode == 2 and "--allow-other-data applies to --resume" in done.stderr


def test_a_run_without_a_record_resumes_with_a_warning_and_gets_one(stopped, tmp_path):
    recorded = json.loads((stopped / "data.json").read_text())
    (stopped / "data.json").unlink()  # as a run made before localnet recorded its data
    done = cli("run", "--resume", stopped, cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in lines(done.stderr) if "warning" in line]
    assert "records no digest of its data" in warning
    assert json.loads((stopped / "data.json").read_text()) == recorded


TAMPERED = {  # (ids, not the texts, name the cases: pytest puts a case's name in the environment)
    "a list": ("[]", "is not a JSON object"),
    "files a list": ('{"format": 1, "files": [], "splits": {}}', "files is not a JSON object"),
    "a digest a number": ('{"format": 1, "files": {"a": 5}, "splits": {}}', "the SHA-256 of 'a' is 5"),
    "another format": ('{"format": 2, "files": {}, "splits": {}}', "format 2, this localnet reads 1"),
    "no splits": ('{"format": 1, "files": {}}', "no files or no splits"),
    "samples text": ('{"format": 1, "files": {}, "splits": {"train": {"samples": "x"}}}',
                     "splits.train.samples is 'x'"),
    "a short digest": ('{"format": 1, "files": {}, "splits": {"train": {"samples": 1, "sha256": "ab"}}}',
                       "splits.train is"),
    "a huge name": ('{"format": 1, "files": {"' + "a" * 5000 + '": "' + "0" * 64 + '"}, "splits": {}}',
                    "5000 characters"),
    "a huge integer": ('{"format": ' + "9" * 100 + "}", "unreadable"),
    "a huge file": (" " * (2 << 20) + "{}", "larger than"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_record_is_one_line(stopped, tmp_path, case):
    text, says = TAMPERED[case]
    (stopped / "data.json").write_text(text)
    line = one_line(cli("run", "--resume", stopped, cwd=tmp_path / "elsewhere"))
    assert line.startswith("error: data record") and says in line and "--allow-other-data" in line, line
    warned = cli("eval", stopped, cwd=tmp_path / "elsewhere")
    assert warned.returncode == 0 and "warning: data record" in warned.stderr, warned.stderr


def test_a_linked_record_is_refused(stopped, tmp_path):
    (stopped / "data.json").unlink()
    (stopped / "data.json").symlink_to(tmp_path / "made" / "blobs.npz")
    assert "is a symbolic link" in one_line(cli("run", "--resume", stopped, cwd=tmp_path / "elsewhere"))


def test_the_splits_decide_the_files_explain(tmp_path):
    """The same samples from other files (gzipped, then unpacked) are the same data; a changed file is named."""
    images = np.random.default_rng(0).integers(0, 256, (30, 4, 4))
    labels = np.arange(30) % 3
    for gz in (True, False):
        write_idx(tmp_path / f"images{'.gz' * gz}", images, "u1", gz)
        write_idx(tmp_path / f"labels{'.gz' * gz}", labels, "u1", gz)

    def digest(suffix):
        return load_dataset("idx", path=tmp_path, images=f"images{suffix}", labels=f"labels{suffix}",
                            validation=5).digest

    packed, unpacked = digest(".gz"), digest("")
    assert packed["files"] != unpacked["files"] and data_changes(packed, unpacked) is None
    write_idx(tmp_path / "labels", (labels + 1) % 3, "u1")
    changed = data_changes(unpacked, digest(""))
    assert f"file {tmp_path / 'labels'}: sha256" in changed and "images" not in changed
    assert "train split: 19 samples" in changed and "test split: 6 samples" in changed


def test_a_data_set_records_its_files_and_splits():
    data = load_dataset("digits", validation=100)
    (file,) = data.digest["files"]
    assert file.endswith("digits.npz")
    assert {split: part["samples"] for split, part in data.digest["splits"].items()} == \
        {"train": len(data.train.y), "validation": 100, "test": len(data.test.y)}
    other = load_dataset("digits", validation=100, seed=1).digest  # another draw of the validation split
    assert other["files"] == data.digest["files"] and data_changes(data.digest, other).startswith("train split")

