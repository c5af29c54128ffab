"""A run directory is untrusted input, and output paths are the user's (issue 20, data loss and paths): nothing is
read, written or deleted through a symbolic link out of a run directory, nothing is read from a device or a FIFO
in one (which would hang), and a report, plot or runs folder that is not a regular file or folder is one clear
line before anything is written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import localnet
from helpers import only_run, reseal, stop_at
from localnet.cli import main
from localnet.errors import DiskFull, Interrupted, RunError
from localnet.runs import RunDir
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


def test_the_lock_is_the_run_directory_itself_not_a_file_one_could_delete(stopped):
    """Item 9: deleting `.lock` under a live resume once let a second resume train beside it."""
    holder = RunDir(stopped)
    holder.lock()  # a live run (flock conflicts across open files, even in one process)
    try:
        (stopped / ".lock").unlink(missing_ok=True)
        with pytest.raises(RunError, match="in use by another localnet process"):
            resume(stopped)
        assert RunDir(stopped).in_use()
    finally:
        holder.unlock()
    assert not RunDir(stopped).in_use() and not (stopped / ".lock").exists()


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


# -- every command that reads a run directory, in process: success or one line, never a traceback or a hang ------
COMMANDS = (("eval",), ("eval", "--best"), ("report",), ("report", "--table"), ("plot",), ("run", "--resume"))


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds):
    """A command still running after `seconds` raises Hang (a blocking open of a FIFO, a read of /dev/zero)."""
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_command(args, seconds=60):
    """Invoke the CLI in process: it succeeds, or ends in a non-zero exit whose error is one line (the only line
    of stderr that is not a warning); never another exception, a traceback or a hang. Returns the result."""
    with deadline(seconds):
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, "".join(traceback.format_exception(result.exception)))
    if result.exit_code:
        errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
        assert len(errors) == 1 and errors[0].startswith(("error:", "spec error:")), (args, result.stderr)
    return result


def every_command(run):
    """{command: result} of every command that reads a run directory, resume last (it may train and rewrite)."""
    return {" ".join(command): run_command([*command, run]) for command in COMMANDS}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny run stopped near the end of its second epoch: a checkpoint with best-validation parameters,
    metrics, a short resume to do. Tests copy it."""
    root = tmp_path_factory.mktemp("pristine")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(localnet.load_spec(ROOT / "specs" / "quickstart.yaml", SMALL), runs_root=root, stop=stop,
              **stop_at(stop, 2, 36))
    return only_run(root)


def _trainer(run):
    return RunDir(run).checkpoint_path() / "trainer.json"


HUGE_INT, NESTED = "9" * 5000, "[" * 100_000
HOSTILE_FILES = {  # item 6: (file, what it is made to hold, what becomes of it)
    "summary: a 5000-digit integer": ("summary.json", '{"status": "interrupted", "epochs": ' + HUGE_INT + "}", "refused"),
    "summary: 100,000 nested [": ("summary.json", NESTED, "refused"),
    "summary: checkpoint is text": ("summary.json", '{"status": "interrupted", "checkpoint": "abc"}', "refused"),
    "summary: status is a list": ("summary.json", '{"status": [1, 2]}', "refused"),
    "pointer: a 5000-digit integer": ("checkpoints/latest.json", '{"checkpoint": "000002", "epoch": ' + HUGE_INT
                                      + "}", "refused"),
    "pointer: 100,000 nested [": ("checkpoints/latest.json", NESTED, "refused"),
    "pointer: names a number": ("checkpoints/latest.json", '{"checkpoint": 2}', "refused"),
    "trainer: a 5000-digit integer": ("trainer", '{"format": 1, "epoch": ' + HUGE_INT + "}", "refused"),
    "trainer: 100,000 nested [": ("trainer", NESTED, "refused"),
    "trainer: checksums are a list": ("trainer", '{"format": 1, "sha256": [1]}', "refused"),
    "environment: a list": ("environment.json", "[]", "refused"),
    "environment: overrides of numbers": ("environment.json", '{"overrides": [1, {"a": 2}], "backend": 5}', "refused"),
    "metrics: a 5000-digit integer": ("metrics.jsonl", '{"epoch": ' + HUGE_INT + "}", "skipped"),
    "metrics: 100,000 nested [": ("metrics.jsonl", NESTED, "skipped"),
    "metrics: layers of a list": ("metrics.jsonl", '{"kind": "diagnostics", "step": 1, "layers": {"h1": [1]}}',
                                  "read"),
}


@pytest.mark.parametrize("case", HOSTILE_FILES)
def test_hostile_json_is_one_line_from_every_command(tmp_path, pristine, case):
    """Integers beyond Python's digit limit, nesting beyond its recursion limit, values of the wrong type: each
    command that reads the file refuses it in one line (a metrics line is skipped with a warning); a trainer file
    is re-checksummed first, as an attacker would, so its content is what is refused."""
    file, text, outcome = HOSTILE_FILES[case]
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    if file == "metrics.jsonl":
        with open(run / file, "a") as fh:
            fh.write(text + "\n")
    else:
        path = _trainer(run) if file == "trainer" else run / file
        path.write_text(text)
        if file == "trainer":
            reseal(path.parent)
    results = every_command(run)
    if outcome == "refused":
        assert results["run --resume"].exit_code == 1
    elif outcome == "skipped":
        assert "is not a complete record" in " ".join(results["report"].stderr.split())
    else:  # a record of the wrong shape is left out of the plot
        assert results["plot"].exit_code == 0


@pytest.mark.parametrize("name", ["checkpoints/latest.json", "trainer", "h1.npz", "environment.json"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_fifo_or_dev_zero_anywhere_in_a_run_directory_never_hangs(tmp_path, pristine, name, kind):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    path = {"trainer": _trainer(run), "h1.npz": _trainer(run).parent / "h1.npz"}.get(name, run / name)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    results = every_command(run)
    assert results["run --resume"].exit_code != 0


def test_a_link_out_of_a_run_directory_is_never_followed(tmp_path, pristine):
    """A checkpoint folder linked to a copy elsewhere: refused, not read (nor written, on resume)."""
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    checkpoint = _trainer(run).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.move(checkpoint, elsewhere)
    checkpoint.symlink_to(elsewhere, target_is_directory=True)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in elsewhere.iterdir())
    for command, result in every_command(run).items():
        if command != "report --table" and command != "plot":  # (these read no checkpoint)
            assert result.exit_code == 1 and "is a symbolic link" in result.stderr, command
    assert sorted((p.name, p.stat().st_mtime_ns) for p in elsewhere.iterdir()) == before


# -- item 12: a checkpoint is read only with its checksums ------------------------------------------------------
def test_without_its_checksums_a_checkpoint_is_refused_unless_unverified(tmp_path, pristine):
    """With `sha256` deleted from latest.json and trainer.json, eval once scored tampered weights silently."""
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    checkpoint = _trainer(run).parent
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    del trainer["sha256"]
    (checkpoint / "trainer.json").write_text(json.dumps(trainer))
    pointer = json.loads((checkpoint.parent / "latest.json").read_text())
    del pointer["sha256"]
    (checkpoint.parent / "latest.json").write_text(json.dumps(pointer))
    for command in (["eval"], ["eval", "--best"], ["report"], ["run", "--resume"]):
        result = run_command([*command, run])
        assert result.exit_code == 1 and "no recorded SHA-256" in result.stderr, command
    result = run_command(["eval", "--unverified", run])
    assert result.exit_code == 0 and "test accuracy" in result.stdout
    assert "read without a checksum (--unverified)" in " ".join(result.stderr.split())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_weights_that_overflow_are_scored_with_a_warning(tmp_path, pristine):
    """Finite weights so large that every activation overflows (their checksums made to match): the score comes
    with a warning, not as a plain "loss nan"."""
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    path = _trainer(run).parent / "out.npz"  # (a linear layer: its sums overflow; tanh would saturate)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["param.W"] = np.full_like(arrays["param.W"], 3e38)
    np.savez(path, **arrays)
    reseal(path.parent)
    result = run_command(["eval", run])
    assert result.exit_code == 0 and "warning: the loss is nan: the parameters overflow" in result.stderr


# -- item 16: nothing a run directory says reaches the terminal as escape sequences ----------------------------
ESCAPE = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"


def test_a_spec_name_with_escape_sequences_is_refused(tmp_path):
    result = run_command(["run", ROOT / "specs" / "quickstart.yaml", "--set", f"name=a{ESCAPE}b", "--set",
                          "train.epochs=0", "--runs-dir", tmp_path])
    assert result.exit_code == 2 and "name: invalid name" in result.stderr
    assert "\x1b" not in result.output and "\\x1b" in result.stderr
    assert not (tmp_path / "runs").exists() and not list(tmp_path.iterdir())


def test_escape_sequences_in_a_run_directory_are_shown_as_text(tmp_path, pristine):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    environment = json.loads((run / "environment.json").read_text())
    environment["overrides"].append(f"description=x{ESCAPE}")
    (run / "environment.json").write_text(json.dumps(environment))
    (run / "summary.json").write_text(json.dumps({"status": f"interrupted{ESCAPE}", "error": f"e\n{ESCAPE}"}))
    for command in (["report", "--table"], ["report"], ["eval"]):
        result = run_command([*command, run])
        assert result.exit_code == 0 and "\\x1b" in result.output and "\x1b" not in result.output, command
    spec = (run / "spec.yaml").read_text()
    (run / "spec.yaml").write_text(spec.replace("name: quickstart", 'name: "q\\e[31m"'))  # YAML's \e: ESC
    result = run_command(["report", "--table", run])
    assert result.exit_code == 2 and "\x1b" not in result.output and "\\x1b" in result.stderr


# -- item 7: a full disk or a read-only one ---------------------------------------------------------------------
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs of its own; mounting one needs root, so elsewhere these tests skip."""
    where = tmp_path / "fs"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                                       capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here (it needs root)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(fs, leave):
    """Fill the file system of `fs` but `leave` bytes; returns the filler file."""
    info = os.statvfs(fs)
    filler = fs / "filler"
    with open(filler, "wb") as fh:
        fh.write(bytes(max(info.f_bavail * info.f_frsize - leave, 0)))
    return filler


def test_a_full_disk_is_one_line_the_summary_says_so_and_resume_works_once_there_is_room(small_fs):
    filler = fill(small_fs, 48 << 10)  # room for the run directory, not for a checkpoint
    line = one_line(cli("run", QUICKSTART, "--backend", "numpy", "--set", "train.epochs=2",
                        "--runs-dir", small_fs / "runs"))
    run = only_run(small_fs / "runs")
    assert re.fullmatch(rf"error: cannot write {re.escape(str(run))}/\S+: No space left on device \([\d.]+ \w+ free\); "
                        rf"stopped: make room, then `localnet run --resume {re.escape(str(run))}`", line), line
    summary = RunDir(run).summary()
    assert summary["status"] == "stopped: disk full" and summary["error"] == line[len("error: "):]
    assert list((run / "checkpoints").iterdir()) == []  # the half-written checkpoint is gone
    filler.unlink()
    done = cli("run", "--resume", run)
    assert done.returncode == 0, done.stderr
    assert RunDir(run).summary()["status"] == "completed"


@pytest.mark.parametrize("leave", [16 << 10, 0], ids=["a little room left", "not a byte left"])
def test_a_disk_that_fills_mid_run_stops_it_and_resume_ends_bit_identical(small_fs, tmp_path, leave):
    """The disk fills after epoch 2's metrics line, before its checkpoint. With not a byte left, not even a
    temporary copy of the summary fits: the summary is overwritten in place."""
    from test_resume import assert_same_state
    spec = localnet.load_spec(QUICKSTART, ["backend=numpy", "train.epochs=3"])
    _, reference = train(spec, runs_root=tmp_path / "reference")
    fillers = []

    def on_epoch(record):
        if record["epoch"] == 2:
            fillers.append(fill(small_fs, leave))

    with pytest.raises(DiskFull, match=r"checkpoints/000002/\S+: No space left on device \(.* free\); stopped: "
                                       r"make room, then `localnet run --resume"):
        train(spec, runs_root=small_fs / "runs", on_epoch=on_epoch)
    run = only_run(small_fs / "runs")
    assert RunDir(run).summary()["status"] == "stopped: disk full"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == ["000001"]  # epoch 1's, whole
    fillers[0].unlink()
    summary, _ = resume(run)
    assert summary["status"] == "completed"
    assert_same_state(reference.path, run)


def test_a_read_only_run_directory_is_one_line(small_fs, pristine):
    shutil.copytree(pristine, small_fs / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for args, words in [(("run", "--resume", small_fs / "run"), "cannot write"),
                        (("plot", small_fs / "run"), "curves.png: Read-only"),
                        (("run", QUICKSTART, "--set", "train.epochs=1", "--runs-dir", small_fs), "cannot make a run")]:
        line = one_line(cli(*args))
        assert words in line and "Read-only file system" in line and "free)" in line, line
    assert RunDir(small_fs / "run").summary()["status"] == "interrupted"  # still readable, and what it was


# -- item 8: a kill while a run directory is made --------------------------------------------------------------
def test_a_kill_while_a_run_directory_is_made_leaves_no_half_made_run(tmp_path):
    """A SIGKILL between spec.yaml and summary.json once left a directory that resume refused ("summary.json is
    missing"); now it is made under a hidden name, renamed into place whole, and the next run deletes the
    abandoned folder."""
    root = tmp_path / "runs"
    code = ("import os, signal, localnet, localnet.runs as runs\n"
            "real = runs.write_json\n"
            "def dying(path, data):\n"
            "    if path.name == 'environment.json':\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(path, data)\n"
            "runs.write_json = dying\n"
            "from localnet.training import train\n"
            f"train(localnet.load_spec({str(QUICKSTART)!r}, {SMALL!r}), runs_root={str(root)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    (made,) = root.iterdir()
    assert made.name.startswith(".") and made.name.endswith(".tmp"), made  # no command takes it for a run
    os.utime(made, (time.time() - 120,) * 2)
    train(localnet.load_spec(QUICKSTART, SMALL), runs_root=root)
    (run,) = root.iterdir()
    assert not run.name.startswith(".") and RunDir(run).summary()["status"] == "completed"


# -- the fuzz: run directories mutated at random, every command --------------------------------------------------
HOLE = "@@hostile@@"
RAW_VALUES = [HUGE_INT, "-" + HUGE_INT, NESTED, "{" * 50_000, '"abc"', "[]", "{}", "null", "true", "-1", "0",
              "1e999", "NaN", "-Infinity", '"\\u001b[2J"', '"../../etc"', "1.5", str(2**64), '{"epoch": "x"}',
              '{"h1": [1]}', '"000001"', '"' + "0" * 64 + '"']
json_values = st.one_of(st.sampled_from(RAW_VALUES), st.builds(json.dumps, st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)))


def _json_paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_paths(value, path + (i,))


def _mutate_json(run, draw):
    """One value anywhere in one JSON file replaced (raw text: integers of any length, any nesting) or deleted;
    a trainer file's checksum made to match, sometimes, as an attacker would."""
    name = draw(st.sampled_from(["summary.json", "environment.json", "data.json", "checkpoints/latest.json",
                                 "trainer"]))
    path = _trainer(run) if name == "trainer" else run / name
    data = json.loads(path.read_text())
    where = draw(st.sampled_from(list(_json_paths(data))))
    value = draw(json_values)
    if not where:
        text = value
    else:
        parent = data
        for step in where[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            del parent[where[-1]]
            text = json.dumps(data)
        else:
            parent[where[-1]] = HOLE
            text = json.dumps(data).replace(json.dumps(HOLE), value)
    path.write_text(text)
    if name == "trainer" and draw(st.booleans()):
        reseal(path.parent)


def _mutate_metrics(run, draw):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    value = draw(json_values)
    line = draw(st.sampled_from([value, '{"epoch": ' + value + ', "train_loss": ' + value + "}",
                                 '{"kind": "diagnostics", "step": 1, "epoch": 1, "batch": 1, "batches": 2, '
                                 '"layers": {"h1": ' + value + "}}"]))
    lines.insert(draw(st.integers(0, len(lines))), line)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


NPZ_EDITS = {
    "text": lambda a: np.full(a.shape, "abc", "<U3"), "void": lambda a: np.zeros(a.shape, "V4"),
    "object": lambda a: np.array([object()], dtype=object), "wider": lambda a: np.asarray(a, np.float64),
    "shape": lambda a: np.zeros((3, 3), np.float32), "nan": lambda a: np.full(a.shape, np.nan, np.float32),
    "inf": lambda a: np.full(a.shape, np.inf, np.float32), "scalar": lambda a: np.array(7),
    "nested text": lambda a: np.array("[" * 100_000), "long integer text": lambda a: np.array(HUGE_INT),
}


def _mutate_npz(run, draw):
    """One member of one checkpoint file replaced (text, void, object, another dtype or shape, NaN, a header
    that claims 2**40 values, a deflated member), deleted or added; its checksums made to match, sometimes."""
    checkpoint = _trainer(run).parent
    path = checkpoint / draw(st.sampled_from(sorted(p.name for p in checkpoint.glob("*.npz"))))
    try:
        with np.load(path) as archive:
            arrays = dict(archive)
    except MemoryError:  # an earlier draw's "claim" header (2**40 values): this file is mutated already
        return
    key = draw(st.sampled_from(sorted(arrays)))
    edit = draw(st.sampled_from([*NPZ_EDITS, "delete", "extra", "claim", "deflate"]))
    members = {k: v for k, v in arrays.items() if not (edit == "delete" and k == key)}
    if edit in NPZ_EDITS:
        members[key] = NPZ_EDITS[edit](arrays[key])
    elif edit == "extra":
        members["param.Z"] = np.zeros(3, np.float32)
    compress = zipfile.ZIP_DEFLATED if edit == "deflate" else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as archive:
        for k, v in members.items():
            buffer = io.BytesIO()
            if edit == "claim" and k == key:
                np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                              "shape": (2**40,)})
                buffer.write(bytes(8))
            else:
                np.save(buffer, v)  # (an object array is pickled: what an attacker would write)
            archive.writestr(f"{k}.npy", buffer.getvalue(), compress_type=compress if k == key else zipfile.ZIP_STORED)
    if draw(st.booleans()):
        reseal(checkpoint)


def _mutate_entry(run, draw, outside):
    """A file or folder deleted, or replaced by a FIFO, a link to /dev/zero or a link to a copy of itself
    outside the run directory."""
    checkpoint = _trainer(run).parent
    path = draw(st.sampled_from([run / "summary.json", run / "environment.json", run / "data.json",
                                 run / "metrics.jsonl",
                                 run / "spec.yaml", run / "checkpoints", run / "checkpoints" / "latest.json",
                                 checkpoint, checkpoint / "trainer.json", checkpoint / "h1.npz"]))
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        return
    action = draw(st.sampled_from(["delete", "fifo", "/dev/zero", "outside"]))
    copy = outside / f"{len(list(outside.iterdir()))}-{path.name}"
    if action == "outside":
        (shutil.copytree if path.is_dir() else shutil.copy)(path, copy)
    (shutil.rmtree if path.is_dir() else os.unlink)(path)
    if action == "fifo":
        os.mkfifo(path)
    elif action == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif action == "outside":
        path.symlink_to(copy, target_is_directory=copy.is_dir())


def _snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_command_on_a_mutated_run_directory_succeeds_or_fails_in_one_line(pristine, data):
    """JSON values, metrics lines, npz members, links and FIFOs mutated at random: eval, eval --best, report,
    report --table, plot and resume each end in success or one error line with a non-zero exit; never a
    traceback or a hang (`run_command`), and nothing outside the run directory is written."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        run, outside, cwd = scratch / "run", scratch / "outside", scratch / "cwd"
        shutil.copytree(pristine, run)
        outside.mkdir()
        cwd.mkdir()
        mutations = data.draw(st.lists(st.sampled_from([_mutate_json, _mutate_json, _mutate_metrics, _mutate_npz,
                                                        _mutate_npz, _mutate_entry]), min_size=1, max_size=3))
        for mutate in sorted(mutations, key=lambda m: m is _mutate_entry):  # (a FIFO made first would block)
            try:
                mutate(run, data.draw, *([outside] if mutate is _mutate_entry else []))
            except (OSError, ValueError, RecursionError, RunError):  # an earlier mutation left nothing to mutate
                continue
        before = _snapshot(outside)
        previous = os.getcwd()
        os.chdir(cwd)
        try:
            every_command(run)
        finally:
            os.chdir(previous)
        assert _snapshot(outside) == before and not list(cwd.iterdir())
        assert sorted(p.name for p in scratch.iterdir()) == ["cwd", "outside", "run"]
