"""Run directories: `runs/<date>-<time>-<spec name>-<short id>/` with the resolved spec, the environment, metrics,
checkpoints and summary.

Every file but the metrics log is written atomically (temporary file, fsync, rename, fsync of the directory); the
log is appended one flushed and fsynced line at a time, and a torn last line (a crash mid-write) is skipped on
read and reported. A checkpoint is a directory `checkpoints/<sequence>/` holding one `<layer>.npz` per layer and
`trainer.json`; it becomes the current one only when `checkpoints/latest.json`, a small pointer file, is
atomically replaced to name it, so a kill at any moment leaves the previous complete checkpoint in force.
While a process trains in a run directory it holds an exclusive lock on the directory itself: no second process
can resume it at the same time, and no two processes ever write the same file.

A run directory is untrusted input: every file in it is read through one bounded, typed reader (`read_json`,
`read_npz`): regular files only, never through a link, never by blocking, at most a size cap, JSON integers and
nesting bounded and each value's type checked, arrays' headers checked before any is read, checkpoints read only
with their checksums.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
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
from ..errors import DiskFull, LocalnetError, RunError, short_repr
from ..files import open_regular, parse_json, read_regular
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
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CREATING = re.compile(r"^\.\d{8}-\d{6}-.+-[0-9a-f]{6}\.tmp$")  # a run directory being made (`RunDir.create`)
_UNREADABLE = (ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)  # (OSError: its own line)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

# Bounds on what a run directory's files may hold (localnet writes a few KiB of JSON per file, nesting four levels
# deep, and arrays of the network's own sizes); JSON integers are bounded by `files.parse_json`.
MAX_JSON_BYTES = 64 << 20
MAX_METRICS_BYTES = 1 << 30
MAX_NPZ_BYTES = 4 << 30
MAX_MEMBERS = 4096  # arrays in one checkpoint file
MAX_TEXT_BYTES = 1 << 20  # a text member (a generator's state as JSON)
MAX_DATA_BYTES = 1 << 20  # data.json: a hundred bytes per data file and split, the records of a few resumes
DATA = "data.json"
DATA_FORMAT = 1
MAX_PATH = 4096  # a file name in data.json: Linux's PATH_MAX


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


def _size(n) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} {units[i]}" if i == 0 else f"{n:.1f} {units[i]}"


def _free(path) -> str:
    """How much room the file system holding `path` (or its nearest existing folder) has left, in words."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            continue
    return "free space unknown"


@contextlib.contextmanager
def _writing(path):
    """An OSError while writing `path` becomes one line naming it and the free space: DiskFull when the file
    system or a quota is full (training stops and can resume once there is room), RunError otherwise (a
    read-only file system, a folder that vanished)."""
    try:
        yield
    except OSError as exc:
        error = DiskFull if exc.errno in _FULL else RunError
        raise error(f"cannot write {path}: {exc.strerror or exc} ({_free(path)})") from None


def write_bytes(path: Path, data: bytes):
    """Write through a uniquely named temporary file, fsync it, rename it over `path`, fsync the directory: a
    reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with _writing(path):
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    _fsync_dir(path.parent)


def append(path: Path, data: bytes):
    """Append `data` to a run directory's file, flushed and fsynced; never through a link or into a FIFO (the
    metrics logs: a crash leaves at most a torn last line)."""
    path = own(path)
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    with _writing(path), os.fdopen(os.open(path, flags, 0o644), "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: Path, text: str):
    write_bytes(path, text.encode("utf-8"))


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


# -- reading: a run directory is untrusted input ---------------------------------------------------------------
def _read_bytes(path: Path, what: str, limit: int) -> bytes:
    """A run directory's file, if it is its own regular file of at most `limit` bytes."""
    try:
        return read_regular(own(path), limit, follow=False)
    except FileNotFoundError:
        raise RunError(f"{what} {path} is missing") from None
    except OSError as exc:
        raise RunError(f"{what} {path} is unreadable: {exc.strerror or exc}") from None


def _kind(value, want) -> bool:
    """Whether a parsed JSON value is of the schema type `want`: int (not bool), float (any number, not bool),
    str, None, a tuple of alternatives or [type] (a list of such values)."""
    if isinstance(want, tuple):
        return any(_kind(value, w) for w in want)
    if isinstance(want, list):
        return isinstance(value, list) and all(_kind(v, want[0]) for v in value)
    if want is None:
        return value is None
    if want in (int, float):
        return isinstance(value, (int, float) if want is float else int) and not isinstance(value, bool)
    return isinstance(value, want)


def _kind_name(want) -> str:
    if isinstance(want, tuple):
        return " or ".join(map(_kind_name, want))
    if isinstance(want, list):
        return f"a list of {_kind_name(want[0])}"
    return {int: "an integer", float: "a number", str: "text", None: "null", list: "a list"}[want]


def _check_schema(data, schema: dict, where: str, _key=()):
    """RunError naming `where` and the key unless `data` is a JSON object whose keys that `schema` names (each
    optional) hold values of their type (`_kind`), or, where the schema gives a dict, objects that match it in
    turn; keys it does not name are left alone."""
    if not isinstance(data, dict):
        raise RunError(f"{where} is invalid: {'.'.join(_key) or 'it'} is not a JSON object")
    for key, want in schema.items():
        if key not in data:
            continue
        if isinstance(want, dict):
            _check_schema(data[key], want, where, _key + (key,))
        elif not _kind(data[key], want):
            raise RunError(f"{where} is invalid: {'.'.join(_key + (key,))} is {short_repr(data[key])}, expected "
                           f"{_kind_name(want)}")
    return data


def read_json(path: Path, what: str, schema: dict, raw: bytes | None = None, limit: int = MAX_JSON_BYTES):
    """A run directory's JSON file (or its bytes, `raw`, already read): bounded (`_read_bytes` to `limit` bytes,
    `parse_json`) and checked against `schema` (`_check_schema`); RunError naming the file otherwise."""
    raw = _read_bytes(path, what, limit) if raw is None else raw
    try:
        data = parse_json(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunError(f"{what} {path} is unreadable: {exc}") from None
    return _check_schema(data, schema, f"{what} {path}")


_POSITION = {"epoch": int, "pass": int, "batch": int}
_SCORES = {f"{split}_{score}": float for split in ("train", "validation", "test") for score in ("loss", "accuracy")}
_SUMMARY = {"status": str, "error": str, "run_dir": str, "epochs": int, "resumes": int, "checkpoint": _POSITION,
            "resumed_at": _POSITION, "seconds_per_epoch": (float, None),
            "best_validation": {"epoch": int, "metric": str, **_SCORES}, **_SCORES}
_ENVIRONMENT = {"spec_file": (str, None), "overrides": [str], "backend": str}
_POINTER = {"checkpoint": str, "epoch": (int, None), "pass": (int, None), "batch": (int, None), "sha256": str}
_TRAINER = {"layers": [str], "sha256": {}, "best": {}}
_SPLIT = {"samples": int, "sha256": str}
_DATA = {"format": int, "files": {}, "splits": {split: _SPLIT for split in ("train", "validation", "test")},
         "earlier": list}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, finite: bool, where: str):
    """(key, array) of one .npy member of the archive `where` names, its header checked before any of its data is
    read: a numeric dtype (a text scalar at most: a generator's state), stored uncompressed as np.savez stores
    it, and exactly the bytes its header claims, within the archive's `size`. No pickle, no decompression bomb,
    no allocation a header merely claims; with `finite`, no NaN or Inf (localnet never checkpoints one)."""
    name = info.filename

    def refuse(why):
        return RunError(f"{where} is unreadable: {short_repr(name[:-4] if name.endswith('.npy') else name)} {why}")

    if not name.endswith(".npy"):
        raise refuse("is not an array")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise refuse("is compressed or encrypted (localnet stores its arrays as they are)")
    if info.compress_size != info.file_size or info.file_size > size:
        raise refuse(f"claims {info.file_size} bytes, more than the file holds")
    fmt = np.lib.format
    with archive.open(info) as member:
        version = fmt.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise refuse(f"is in .npy format version {version}")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(member)
        text = dtype.kind == "U" and shape == () and dtype.itemsize <= MAX_TEXT_BYTES
        if dtype.hasobject or dtype.kind not in "biuf" and not text:
            raise refuse(f"has dtype {short_repr(dtype.str)}, not a numeric array")
        if member.tell() + math.prod(shape) * dtype.itemsize != info.file_size:
            raise refuse(f"claims shape {short_repr(shape)} of {dtype}, which is not what it holds")
    with archive.open(info) as member:
        array = fmt.read_array(member, allow_pickle=False)
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise refuse("holds a NaN or an Inf, which localnet never writes into a checkpoint (altered?)")
    return name[:-4], array


def read_npz(path: Path, what="checkpoint", sha256=None, finite=True) -> dict:
    """Every array of an .npz file, read eagerly (so a truncated or corrupt member fails here, naming the file),
    each member's header checked before its data is read (`_array`), never with pickle; with `sha256`, a file
    whose bytes changed in any way is refused before parsing."""
    try:
        with open_regular(own(path), MAX_NPZ_BYTES, follow=False) as fh:
            if sha256 is not None:
                digest = hashlib.sha256()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                if digest.hexdigest() != sha256:
                    raise RunError(f"{what} file {path} is corrupt: its SHA-256 is not the one recorded when it was "
                                   f"written")
                fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            with zipfile.ZipFile(fh) as archive:
                members = archive.infolist()
                if len(members) > MAX_MEMBERS:
                    raise ValueError(f"{len(members)} members (at most {MAX_MEMBERS})")
                return dict(_array(archive, info, size, finite, f"{what} file {path}") for info in members)
    except FileNotFoundError:
        raise RunError(f"{what} file {path} is missing") from None
    except OSError as exc:
        raise RunError(f"{what} file {path} is unreadable: {exc.strerror or exc}") from None
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
    def __init__(self, path, unverified=False):
        """`unverified`: read checkpoint files that record no SHA-256 (a run written before checkpoints had them)
        instead of refusing them; each is listed in `unchecked`. A recorded checksum is checked either way."""
        self.path = Path(path)
        self.unverified = unverified
        self.unchecked = []
        self._lock_fd = None
        self._trainer_sha256 = {}  # checkpoint directory -> the SHA-256 its pointer recorded for trainer.json

    @classmethod
    def create(cls, root, spec, backend, data_digest=None):
        """A new, uniquely named run directory, locked by this process. It is made under a hidden temporary name
        (mkdir without exist_ok: two runs started in the same second, in threads or processes, stay distinct) and
        renamed into place once it holds its spec, environment, data digest (`data_digest`, a Dataset's `digest`,
        when given) and summary, so a kill while it is made leaves no half-made run directory; the next `create`
        deletes the hidden folder such a kill left."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot use {root} as the runs folder: {exc.strerror or exc}") from None
        if not root.is_dir():
            raise RunError(f"cannot use {root} as the runs folder: it is not a folder")
        cls._delete_abandoned(root)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)[:60] or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            path = root / f"{stamp}-{name}-{secrets.token_hex(3)}"
            try:
                (root / f".{path.name}.tmp").mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise RunError(f"cannot make a run directory in {root}: {exc.strerror or exc} ({_free(root)})") \
                    from None
        run = cls(root / f".{path.name}.tmp")
        try:
            run.lock()
            run._write_start(spec, backend)
            if data_digest is not None:
                run.write_data(data_digest)
            while path.exists() or path.is_symlink():  # taken since the temporary name was made
                path = root / f"{stamp}-{name}-{secrets.token_hex(3)}"
            with _writing(path):
                os.rename(run.path, path)
            _fsync_dir(root)
        except BaseException:
            shutil.rmtree(run.path, ignore_errors=True)
            run.unlock()
            raise
        run.path = path
        return run

    @classmethod
    def _delete_abandoned(cls, root: Path):
        """Delete the hidden folders of run directories whose making was killed: named as `create` names them,
        not links, untouched for a minute (one being made is locked a moment after its mkdir) and locked by no
        live process."""
        for entry in root.iterdir():
            try:
                if not (_CREATING.match(entry.name) and entry.is_dir() and not entry.is_symlink()
                        and time.time() - entry.stat().st_mtime > 60):
                    continue
            except OSError:  # gone meanwhile
                continue
            abandoned = cls(entry)
            try:
                abandoned.lock()
            except RunError:
                continue  # being made right now
            shutil.rmtree(entry, ignore_errors=True)
            abandoned.unlock()

    def _write_start(self, spec, backend):
        write_text(self.path / "spec.yaml", dump_spec(spec))
        origin = spec.origin
        write_json(self.path / "environment.json", {
            # what the resolved spec.yaml was made from: the file and the --set overrides, in order
            "spec_file": str(origin.file) if origin and origin.file is not None else None,
            "overrides": list(origin.overrides) if origin else [],
            "versions": _versions(), "backend": backend, "seed": spec.seed, "dtype": spec.dtype,
            "platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": cores(),  # with the rule, it fixes the engine's thread layout
            # the numba kernels' BLAS (localnet/blas.py); None where no numba kernel runs
            "blas": blas.PROVIDER if backend == "numba" else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.write_summary({"status": "running"})

    def check(self):
        """Refuse anything that is not a run directory, naming what is missing."""
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a directory")
        if not own(self.path / "spec.yaml").is_file():
            raise RunError(f"{self.path} is not a run directory (no spec.yaml)")

    def spec(self):
        self.check()
        return load_spec(own(self.path / "spec.yaml"))

    def environment(self) -> dict:
        return read_json(self.path / "environment.json", "environment file", _ENVIRONMENT)

    # -- the data it trains on -----------------------------------------------------------------------------------
    def write_data(self, digest: dict, earlier=()):
        """Record the digest of the data the run trains on (`Dataset.digest`) in data.json; `earlier`: the records
        of the data it trained on before a resume on other data (`--allow-other-data`), oldest first."""
        write_json(self.path / DATA, {"format": DATA_FORMAT, **digest, "earlier": list(earlier)})

    def data_record(self) -> dict | None:
        """data.json, the digest of the data the run trained on, read bounded and type-checked (every file's and
        split's digest a SHA-256), RunError naming the file otherwise; None where there is none (a run made before
        localnet recorded one)."""
        path = self.path / DATA
        if not own(path).exists():
            return None
        record = read_json(path, "data record", _DATA, limit=MAX_DATA_BYTES)

        def bad(why):
            return RunError(f"data record {path} is invalid: {why}")

        if record.get("format") != DATA_FORMAT:
            raise bad(f"format {short_repr(record.get('format'))}, this localnet reads {DATA_FORMAT}")
        files, splits = record.get("files"), record.get("splits")
        if files is None or splits is None:
            raise bad("it has no files or no splits")
        for name, digest in files.items():
            if len(name) > MAX_PATH:
                raise bad(f"it names a file of {len(name)} characters")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise bad(f"the SHA-256 of {short_repr(name)} is {short_repr(digest)}")
        for split in ("train", "validation", "test"):
            part = splits.get(split)
            if part is None or not _SHA256.match(part.get("sha256", "")) or not isinstance(part.get("samples"), int):
                raise bad(f"splits.{split} is {short_repr(part)}, expected its samples and their SHA-256")
        return record

    # -- the lock: one writing process per run directory -------------------------------------------------------
    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise RunError(f"cannot open the run directory {self.path}: {exc.strerror or exc}") from None

    def lock(self):
        """Hold an exclusive lock on the run directory itself (flock of a descriptor of the folder) until `unlock`
        or exit: the kernel drops it when a process dies, SIGKILL included, and no file a user could delete is
        involved. A run directory another live process holds is refused."""
        if fcntl is None or self._lock_fd is not None:
            return
        fd = self._open()
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
        if fcntl is None or self._lock_fd is not None:
            return False
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # -- metrics -----------------------------------------------------------------------------------------------
    def log(self, record: dict):
        """Append one record as one line, flushed and fsynced; never through a link or into a FIFO."""
        append(self.path / "metrics.jsonl", (json.dumps(record) + "\n").encode("utf-8"))

    def read_metrics(self) -> tuple[list, list]:
        """(records, skipped): the logged records, and the 1-based numbers of lines that are not a JSON record
        (a line torn by a crash mid-write), which are left out."""
        path = self.path / "metrics.jsonl"
        try:
            text = read_regular(own(path), MAX_METRICS_BYTES, follow=False).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise RunError(f"cannot read {path}: {exc.strerror or exc}") from None
        records, skipped = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = parse_json(line)
            except ValueError:
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
        shown = ", ".join(map(str, skipped[:20])) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        return (f"{self.path / 'metrics.jsonl'}: line{'s' if len(skipped) > 1 else ''} {shown} "
                f"{'are' if len(skipped) > 1 else 'is'} not a complete record (torn by a crash mid-write?) "
                f"and {'were' if len(skipped) > 1 else 'was'} ignored")

    def rewrite_metrics(self, records: list):
        write_text(own(self.path / "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))

    # -- summary -----------------------------------------------------------------------------------------------
    def write_summary(self, summary: dict):
        """Write the summary atomically; on a full disk, where no temporary copy fits, overwrite the file in
        place if its new text fits in the blocks it already has (how a run that stopped on a full disk says so)."""
        path = own(self.path / "summary.json")
        data = (json.dumps(summary, indent=2) + "\n").encode("utf-8")
        try:
            write_bytes(path, data)
        except DiskFull:
            flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            try:
                fd = os.open(path, flags)
            except OSError:
                raise DiskFull(f"cannot write {path}: no space left on the file system ({_free(path)})") from None
            with _writing(path), os.fdopen(fd, "r+b") as fh:
                if os.fstat(fd).st_blocks * 512 < len(data):
                    raise DiskFull(f"cannot write {path}: no space left on the file system ({_free(path)})")
                fh.write(data)
                fh.truncate()
                fh.flush()
                os.fsync(fd)

    def summary(self) -> dict:
        return read_json(self.path / "summary.json", "summary", _SUMMARY)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _checkpoints(self) -> Path:
        return own(self.path / CHECKPOINTS)

    def new_checkpoint(self) -> Path:
        """A fresh, empty checkpoint directory, numbered after every one that exists (complete or not)."""
        root = self._checkpoints()
        with _writing(root):
            root.mkdir(exist_ok=True)
        numbers = [int(p.name) for p in root.iterdir() if _SEQUENCE.match(p.name)]
        path = root / f"{max(numbers, default=0) + 1:06d}"
        with _writing(path):
            path.mkdir()
        return path

    def write_layer_state(self, checkpoint: Path, layer: str, state: dict) -> str:
        """One layer's file of a checkpoint in progress (a later MPI engine has each rank write its own);
        returns the file's SHA-256, which the commit records."""
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        data = buffer.getvalue()
        write_bytes(checkpoint / f"{layer}.npz", data)
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
        {layer: {name: array}} of the best validation epoch so far, to `network.best.npz`. On a full disk the
        half-written checkpoint is deleted at once (it is not committed: the pointer is written last), freeing
        its room for the summary."""
        checkpoint = self.new_checkpoint()
        try:
            digests = {f"{layer}.npz": self.write_layer_state(checkpoint, layer, state)
                       for layer, state in states.items()}
            if channels:
                digests[f"{CHANNELS}.npz"] = self.write_layer_state(checkpoint, CHANNELS, channels)
            if best:
                flat = {f"{layer}.{name}": value for layer, params in best.items() for name, value in params.items()}
                digests[f"{BEST}.npz"] = self.write_layer_state(checkpoint, BEST, flat)
            self.commit_checkpoint(checkpoint, {**trainer, "layers": list(states), "sha256": digests})
        except DiskFull:
            shutil.rmtree(checkpoint, ignore_errors=True)
            raise
        return checkpoint

    def checkpoint_path(self) -> Path | None:
        """The current checkpoint's directory, or None when no checkpoint has been committed."""
        pointer = self._checkpoints() / LATEST
        if not own(pointer).exists():
            return None
        data = read_json(pointer, "checkpoint pointer", _POINTER)
        name = data.get("checkpoint")
        if not isinstance(name, str) or not _SEQUENCE.match(name):
            raise RunError(f"checkpoint pointer {pointer} is invalid: it names {short_repr(name)}")
        digest = data.get("sha256")
        if digest is not None and not _SHA256.match(digest):
            raise RunError(f"checkpoint pointer {pointer} is invalid: sha256 is {short_repr(digest)}")
        path = own(self._checkpoints() / name)
        if not path.is_dir():
            raise RunError(f"checkpoint pointer {pointer} names {path}, which is missing")
        self._trainer_sha256[path] = digest
        return path

    def _without_checksum(self, path: Path):
        """A checkpoint file that records no SHA-256 is refused: nothing would show that it is the file training
        wrote (a tampered file deletes its checksum). With `unverified` it is read, and listed in `unchecked`."""
        if not self.unverified:
            raise RunError(f"checkpoint file {path} has no recorded SHA-256, so nothing shows it is the file "
                           f"training wrote: refused (`localnet eval --unverified` reads it anyway)")
        self.unchecked.append(path)

    def load_trainer_state(self, checkpoint: Path) -> dict:
        path = checkpoint / TRAINER
        raw = _read_bytes(path, "checkpoint file", MAX_JSON_BYTES)
        expected = self._trainer_sha256.get(checkpoint)
        if expected is None:
            self._without_checksum(path)
        elif _sha256(raw) != expected:
            raise RunError(f"checkpoint file {path} is corrupt: its SHA-256 is not the one recorded in "
                           f"{self._checkpoints() / LATEST}")
        return read_json(path, "checkpoint file", _TRAINER, raw)

    def _file(self, checkpoint: Path, name: str, trainer=None, optional=False, finite=True):
        """The arrays of one of a checkpoint's .npz files, checked against the SHA-256 its trainer file records.
        An `optional` file (channel state, best parameters) whose checksum it does not record is None: it is
        never read without one (unless `unverified`, where the file is there)."""
        trainer = self.load_trainer_state(checkpoint) if trainer is None else trainer
        digests = trainer.get("sha256", {})
        path = checkpoint / name
        digest = digests.get(name)
        if digest is None:
            if optional and not (own(path).exists() and self.unverified):
                return None
            self._without_checksum(path)
        elif not isinstance(digest, str) or not _SHA256.match(digest):
            raise RunError(f"checkpoint file {checkpoint / TRAINER} is invalid: the SHA-256 of {name} is "
                           f"{short_repr(digest)}")
        return read_npz(path, sha256=digest, finite=finite)

    def load_layer_states(self, checkpoint: Path, layers, trainer=None) -> dict:
        """{layer: state} from a checkpoint's files, each checked against the SHA-256 its trainer file records."""
        return {layer: self._file(checkpoint, f"{layer}.npz", trainer) for layer in layers}

    def load_channel_state(self, checkpoint: Path, trainer=None) -> dict:
        """The channels' state from a checkpoint, checked against its recorded SHA-256; {} when it has none. (A
        delay queue's messages are not scanned by the divergence guard, so they are not required finite.)"""
        return self._file(checkpoint, f"{CHANNELS}.npz", trainer, optional=True, finite=False) or {}

    def load_best(self, checkpoint: Path, trainer=None) -> dict | None:
        """The best validation epoch's parameters {layer: {name: array}} from a checkpoint (checked against its
        recorded SHA-256); None when it holds none."""
        arrays = self._file(checkpoint, f"{BEST}.npz", trainer, optional=True)
        if arrays is None:
            return None
        best = {}
        for key, value in arrays.items():
            layer, _, param = key.partition(".")
            best.setdefault(layer, {})[param] = value
        return best

    def load_parameters(self, layers, best=False) -> dict:
        """Every layer's parameters {layer: {W, b, V, c}} from the current checkpoint (or from the parameters-only
        `checkpoint/` of a run written before checkpoints were resumable, which records no checksums: read only
        `unverified`); with `best`, the parameters of the epoch with the best validation score instead."""
        checkpoint = self.checkpoint_path()
        if checkpoint is None:
            legacy = own(self.path / LEGACY_CHECKPOINT)
            if legacy.is_dir() and not best:
                for layer in layers:
                    self._without_checksum(legacy / f"{layer}.npz")
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
