"""Run directories: `runs/<date>-<time>-<spec name>-<short id>/` with the resolved spec, the environment, metrics,
checkpoints and summary.

Every file but the metrics log is written atomically (temporary file, fsync, rename, fsync of the directory); the
log is appended one flushed and fsynced line at a time, and a torn last line (a crash mid-write) is skipped on
read and reported. A checkpoint is a directory `checkpoints/<sequence>/` holding one `<layer>.npz` per layer and
`trainer.json`; it becomes the current one only when `checkpoints/latest.json`, a small pointer file, is
atomically replaced to name it, so a kill at any moment leaves the previous complete checkpoint in force.
While a process trains in a run directory it holds an exclusive lock on its `.lock` file: no second process can
resume it at the same time, and no two processes ever write the same file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import sys
import time
import zipfile
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np

from .. import blas
from ..threads import cores
from ..errors import LocalnetError, RunError
from ..spec import dump_spec, load_spec

try:
    import fcntl
except ImportError:  # not POSIX: no lock, documented in the README
    fcntl = None

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
TRAINER = "trainer.json"
LEGACY_CHECKPOINT = "checkpoint"  # parameters only, one .npz per layer, as written before resumable runs
PARAM = "param."  # the prefix of a parameter's key in a layer's checkpoint file
CHANNELS = "network.channels"  # the channels' state (constraints' generators, delay queues); no layer name has a dot
BEST = "network.best"  # the parameters of the epoch with the best validation score, keys "<layer>.<parameter>"
_SEQUENCE = re.compile(r"^\d{6,}$")
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


def _fsync_dir(path: Path):
    """Make a rename or a new entry in `path` durable; not every platform can open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write):
    """Write through a uniquely named temporary file, fsync it, rename it over `path`, fsync the directory: a
    reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str):
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: Path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def own(path: Path) -> Path:
    """`path`, an entry of a run directory, if it is not a symbolic link and, where it exists, a regular file or a
    directory: a run directory is untrusted input, and nothing is read, written or deleted through a link out of
    it (a symlinked `checkpoints/` once had resume delete the folders it pointed at), nor read from a device or a
    FIFO (which would hang)."""
    if path.is_symlink():
        raise RunError(f"{path} is a symbolic link: a run directory's files and folders must be its own")
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise RunError(f"{path} is not a regular file or folder")
    return path


def output_file(path) -> Path:
    """A path a command may write a report or a plot to: a regular file or nothing yet, in a folder (made if
    missing). Anything else (a device such as /dev/full, a FIFO, a folder, a path under a file) is one clear error,
    before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise LocalnetError(f"{path} exists and is not a regular file; give a file name to write to")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalnetError(f"cannot make the folder {path.parent} for {path.name}: "
                            f"{exc.strerror or exc}") from None
    if not path.parent.is_dir():
        raise LocalnetError(f"{path.parent} is not a folder, so {path} cannot be written")
    return path


def _read_json(path: Path, what: str):
    try:
        return json.loads(own(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{what} {path} is unreadable: {exc}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_npz(path: Path, what="checkpoint", sha256=None) -> dict:
    """Every array of an .npz file, read eagerly (so a truncated or corrupt member fails here, naming the file)
    and never with pickle; with `sha256`, a file whose bytes changed in any way is refused before parsing."""
    try:
        raw = own(path).read_bytes()
        if sha256 is not None and _sha256(raw) != sha256:
            raise RunError(f"{what} file {path} is corrupt: its SHA-256 is not the one recorded when it was written")
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("not an .npz archive")
        with data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise RunError(f"{what} file {path} is missing") from None
    except _UNREADABLE as exc:
        raise RunError(f"{what} file {path} is unreadable (corrupt or truncated?): {type(exc).__name__}: {exc}") \
            from None


def _versions():
    out = {"python": sys.version.split()[0]}
    for pkg in ("localnet", "numpy", "networkx", "pyyaml", "numba", "scipy", "mkl"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self._lock_fd = None
        self._trainer_sha256 = {}  # checkpoint directory -> the SHA-256 its pointer recorded for trainer.json

    @classmethod
    def create(cls, root, spec, backend):
        """A new, uniquely named run directory, locked by this process; mkdir without exist_ok makes two runs
        started in the same second (in threads or processes) distinct."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot use {root} as the runs folder: {exc.strerror or exc}") from None
        if not root.is_dir():
            raise RunError(f"cannot use {root} as the runs folder: it is not a folder")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)[:60] or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            path = root / f"{stamp}-{name}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        run.lock()
        write_text(path / "spec.yaml", dump_spec(spec))
        origin = spec.origin
        write_json(path / "environment.json", {
            # what the resolved spec.yaml was made from: the file and the --set overrides, in order
            "spec_file": str(origin.file) if origin and origin.file is not None else None,
            "overrides": list(origin.overrides) if origin else [],
            "versions": _versions(), "backend": backend, "seed": spec.seed, "dtype": spec.dtype,
            "platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": cores(),  # with the rule, it fixes the engine's thread layout
            # the numba kernels' BLAS (localnet/blas.py); None where no numba kernel runs
            "blas": blas.PROVIDER if backend == "numba" else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        run.write_summary({"status": "running"})
        return run

    def check(self):
        """Refuse anything that is not a run directory, naming what is missing."""
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a directory")
        if not (self.path / "spec.yaml").is_file():
            raise RunError(f"{self.path} is not a run directory (no spec.yaml)")

    def spec(self):
        self.check()
        return load_spec(self.path / "spec.yaml")

    def environment(self) -> dict:
        return _read_json(self.path / "environment.json", "environment file")

    # -- the lock: one writing process per run directory -------------------------------------------------------
    def lock(self):
        """Hold an exclusive lock on `.lock` until `unlock` or exit (the kernel drops it when a process dies,
        SIGKILL included); a run directory another live process holds is refused."""
        if fcntl is None or self._lock_fd is not None:
            return
        fd = os.open(own(self.path / ".lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunError(f"{self.path} is in use by another localnet process") from None
        self._lock_fd = fd

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def in_use(self) -> bool:
        """Whether some other process holds this run's lock right now (a live run)."""
        if fcntl is None or self._lock_fd is not None or not (self.path / ".lock").exists():
            return False
        fd = os.open(own(self.path / ".lock"), os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # -- metrics -----------------------------------------------------------------------------------------------
    def log(self, record: dict):
        with open(own(self.path / "metrics.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> tuple[list, list]:
        """(records, skipped): the logged records, and the 1-based numbers of lines that are not a JSON record
        (a line torn by a crash mid-write), which are left out."""
        path = own(self.path / "metrics.jsonl")
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise RunError(f"cannot read {path}: {exc}") from None
        records, skipped = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped.append(number)
        return records, skipped

    def metrics(self) -> list:
        """The logged records; a torn line (a crash mid-write) is skipped (`read_metrics` says which)."""
        return self.read_metrics()[0]

    def metrics_warning(self, skipped) -> str | None:
        if not skipped:
            return None
        lines = ", ".join(map(str, skipped))
        return (f"{self.path / 'metrics.jsonl'}: line{'s' if len(skipped) > 1 else ''} {lines} "
                f"{'are' if len(skipped) > 1 else 'is'} not a complete record (torn by a crash mid-write?) "
                f"and {'were' if len(skipped) > 1 else 'was'} ignored")

    def rewrite_metrics(self, records: list):
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    # -- summary -----------------------------------------------------------------------------------------------
    def write_summary(self, summary: dict):
        write_json(self.path / "summary.json", summary)

    def summary(self) -> dict:
        data = _read_json(self.path / "summary.json", "summary")
        if not isinstance(data, dict):
            raise RunError(f"summary {self.path / 'summary.json'} is not a JSON object")
        return data

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _checkpoints(self) -> Path:
        return own(self.path / CHECKPOINTS)

    def new_checkpoint(self) -> Path:
        """A fresh, empty checkpoint directory, numbered after every one that exists (complete or not)."""
        root = self._checkpoints()
        root.mkdir(exist_ok=True)
        numbers = [int(p.name) for p in root.iterdir() if _SEQUENCE.match(p.name)]
        path = root / f"{max(numbers, default=0) + 1:06d}"
        path.mkdir()
        return path

    def write_layer_state(self, checkpoint: Path, layer: str, state: dict) -> str:
        """One layer's file of a checkpoint in progress (a later MPI engine has each rank write its own);
        returns the file's SHA-256, which the commit records."""
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        data = buffer.getvalue()
        _atomic_write(checkpoint / f"{layer}.npz", lambda fh: fh.write(data))
        return _sha256(data)

    def commit_checkpoint(self, checkpoint: Path, trainer: dict):
        """Make `checkpoint` the current one: write the trainer's state, fsync the directory, atomically replace
        the pointer (which records the trainer file's SHA-256, as that file records each layer file's), then
        delete every other checkpoint directory."""
        text = json.dumps(trainer, indent=2) + "\n"
        write_text(checkpoint / TRAINER, text)
        _fsync_dir(checkpoint)
        _fsync_dir(checkpoint.parent)
        write_json(self._checkpoints() / LATEST, {
            "checkpoint": checkpoint.name, "epoch": trainer.get("epoch"), "pass": trainer.get("pass"),
            "batch": trainer.get("batch"), "sha256": _sha256(text.encode("utf-8"))})
        for other in self._checkpoints().iterdir():  # only the numbered folders this code makes, never a link
            if _SEQUENCE.match(other.name) and other.is_dir() and not other.is_symlink() and other != checkpoint:
                shutil.rmtree(other, ignore_errors=True)

    def save_checkpoint(self, states: dict, trainer: dict, channels: dict | None = None,
                        best: dict | None = None) -> Path:
        """A complete checkpoint of {layer: state} and the trainer's state, committed atomically; `channels`, the
        network's channel state when a channel keeps one, goes to `network.channels.npz`; `best`, the parameters
        {layer: {name: array}} of the best validation epoch so far, to `network.best.npz`."""
        checkpoint = self.new_checkpoint()
        digests = {f"{layer}.npz": self.write_layer_state(checkpoint, layer, state) for layer, state in states.items()}
        if channels:
            digests[f"{CHANNELS}.npz"] = self.write_layer_state(checkpoint, CHANNELS, channels)
        if best:
            flat = {f"{layer}.{name}": value for layer, params in best.items() for name, value in params.items()}
            digests[f"{BEST}.npz"] = self.write_layer_state(checkpoint, BEST, flat)
        self.commit_checkpoint(checkpoint, {**trainer, "layers": list(states), "sha256": digests})
        return checkpoint

    def checkpoint_path(self) -> Path | None:
        """The current checkpoint's directory, or None when no checkpoint has been committed."""
        pointer = self._checkpoints() / LATEST
        if not pointer.exists():
            return None
        data = _read_json(pointer, "checkpoint pointer")
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or not _SEQUENCE.match(name):
            raise RunError(f"checkpoint pointer {pointer} is invalid: it names {name!r}")
        path = self._checkpoints() / name
        if not path.is_dir():
            raise RunError(f"checkpoint pointer {pointer} names {path}, which is missing")
        self._trainer_sha256[path] = data.get("sha256")
        return path

    def load_trainer_state(self, checkpoint: Path) -> dict:
        path = checkpoint / TRAINER
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RunError(f"checkpoint file {path} is missing") from None
        except OSError as exc:
            raise RunError(f"checkpoint file {path} is unreadable: {exc}") from None
        expected = self._trainer_sha256.get(checkpoint)
        if isinstance(expected, str) and _sha256(raw) != expected:
            raise RunError(f"checkpoint file {path} is corrupt: its SHA-256 is not the one recorded in "
                           f"{self._checkpoints() / LATEST}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"checkpoint file {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise RunError(f"checkpoint file {path} is not a JSON object")
        return data

    def _digests(self, checkpoint: Path, trainer=None) -> dict:
        """{file name: SHA-256} as the checkpoint's trainer file records them ({} where it records none)."""
        trainer = self.load_trainer_state(checkpoint) if trainer is None else trainer
        digests = trainer.get("sha256")
        return digests if isinstance(digests, dict) else {}

    def load_layer_states(self, checkpoint: Path, layers, trainer=None) -> dict:
        """{layer: state} from a checkpoint's files, each checked against the SHA-256 its trainer file records."""
        digests = self._digests(checkpoint, trainer)
        return {layer: read_npz(checkpoint / f"{layer}.npz", sha256=digests.get(f"{layer}.npz")) for layer in layers}

    def load_channel_state(self, checkpoint: Path, trainer=None) -> dict:
        """The channels' state from a checkpoint, checked against its recorded SHA-256; {} when it has none."""
        digests = self._digests(checkpoint, trainer)
        name = f"{CHANNELS}.npz"
        if name not in digests and not (checkpoint / name).exists():
            return {}
        return read_npz(checkpoint / name, sha256=digests.get(name))

    def load_best(self, checkpoint: Path, trainer=None) -> dict | None:
        """The best validation epoch's parameters {layer: {name: array}} from a checkpoint (checked against its
        recorded SHA-256); None when it holds none."""
        digests = self._digests(checkpoint, trainer)
        name = f"{BEST}.npz"
        if name not in digests:
            return None
        best = {}
        for key, value in read_npz(checkpoint / name, sha256=digests[name]).items():
            layer, _, param = key.partition(".")
            best.setdefault(layer, {})[param] = value
        return best

    def load_parameters(self, layers, best=False) -> dict:
        """Every layer's parameters {layer: {W, b, V, c}} from the current checkpoint (or from the parameters-only
        `checkpoint/` of a run written before checkpoints were resumable); with `best`, the parameters of the epoch
        with the best validation score instead."""
        checkpoint = self.checkpoint_path()
        if checkpoint is None:
            legacy = self.path / LEGACY_CHECKPOINT
            if legacy.is_dir() and not best:
                return {layer: read_npz(legacy / f"{layer}.npz") for layer in layers}
            raise RunError(f"{self.path} has no checkpoint yet (the run stopped before its first one)")
        for attempt in range(3):
            try:
                if best:
                    params = self.load_best(checkpoint)
                    if params is None:
                        raise RunError(f"{self.path} has no best-validation parameters yet (no validation split, "
                                       f"or no checkpoint written since an epoch ended)")
                    return params
                states = self.load_layer_states(checkpoint, layers)
                break
            except RunError:
                newer = self.checkpoint_path()  # a live run may have committed a newer one and deleted this
                if attempt == 2 or newer == checkpoint:
                    raise
                checkpoint = newer
        return {layer: {k[len(PARAM):]: v for k, v in state.items() if k.startswith(PARAM)}
                for layer, state in states.items()}
