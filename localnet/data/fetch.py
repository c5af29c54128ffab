"""Finding a data set's files on disk, and downloading them when they are nowhere to be found."""

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .cifar import BATCH_DIR, TEST_BATCH, TRAIN_BATCHES

TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """Where a data set's files come from and where a system package may already have put them."""

    base_url: str
    files: dict[str, str]  # file name -> md5 of the file exactly as the mirror serves it
    system_dirs: tuple[str, ...] = ()
    hint: str = ""  # how to get the data by hand, for the not-found message
    unpacked: tuple[str, ...] = ()  # an equivalent, decompressed set of files, accepted when found locally


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_source(base_url, md5s, name, hint=""):
    return Source(
        base_url=base_url,
        files={f"{f}.gz": md5 for f, md5 in zip(_IDX_FILES, md5s)},
        system_dirs=(f"/usr/share/datasets/{name}",),
        hint=hint,
        unpacked=_IDX_FILES,
    )


# URLs and md5 sums (of the .gz / .tar.gz files as served) are those in torchvision's
# torchvision/datasets/mnist.py and cifar.py (github.com/pytorch/vision), which match the
# publishers' pages. Debian's dataset-fashion-mnist recompresses its files, so their md5s
# differ; local files are never checked against these sums, only downloads are. For MNIST torchvision tries
# yann.lecun.com first; it often refuses plain downloads, so its second mirror is used here.
REGISTRY: dict[str, Source] = {
    "mnist": _idx_source(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        "mnist",
    ),
    "fashion-mnist": _idx_source(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        "fashion-mnist",
        hint="on Debian/Ubuntu: apt-get install dataset-fashion-mnist",
    ),
    "kmnist": _idx_source(
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
         "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
        "kmnist",
    ),
    "cifar10": Source(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        system_dirs=("/usr/share/datasets/cifar10",),
        unpacked=tuple(f"{BATCH_DIR}/{b}" for b in (*TRAIN_BATCHES, TEST_BATCH)),
    ),
}


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "localnet" / name


def _candidates(name: str, path, source: Source) -> list[tuple[Path, str]]:
    """Directories to search, in priority order, each with why it is searched (for the error message)."""
    dirs = []
    if path is not None:
        dirs.append((Path(path), "path argument"))
    if os.environ.get("LOCALNET_DATA"):
        dirs.append((Path(os.environ["LOCALNET_DATA"]) / name, "$LOCALNET_DATA"))
    dirs.append((cache_dir(name), "user cache"))
    dirs.extend((Path(d), "system") for d in source.system_dirs)
    return dirs


def _complete(directory: Path, source: Source) -> list[Path] | None:
    """The first file set (decompressed preferred: faster to read) that is all present in directory."""
    for names in (source.unpacked, tuple(source.files)):
        if names and all((directory / f).is_file() for f in names):
            return [directory / f for f in names]
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_files(name: str, dest: Path, *, mirror: str | None = None, timeout: float = TIMEOUT_S) -> list[Path]:
    """Fetch a data set's files into dest, each verified before it gets its final name.

    Each file goes to a temporary name in dest and is renamed only once its md5 matches, so an
    interrupted or corrupt download never looks like data on the next run. mirror (or
    $LOCALNET_MIRROR) replaces the registry's base URL.
    """
    source = REGISTRY[name]
    base = mirror or os.environ.get("LOCALNET_MIRROR") or source.base_url
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download directory {dest}: {e}") from e
    for file, md5 in source.files.items():
        target = dest / file
        if target.is_file() and _md5(target) == md5:
            continue
        url = base.rstrip("/") + "/" + file
        print(f"localnet: downloading {url}", file=sys.stderr)
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{file}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            got = _md5(Path(tmp))
            if got != md5:
                raise DataError(f"download of {url} is corrupt: md5 {got}, expected {md5}; nothing was kept")
            os.replace(tmp, target)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            raise DataError(f"download of {url} failed: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [dest / f for f in source.files]


def _download_dir(name: str) -> Path:
    data = os.environ.get("LOCALNET_DATA")
    return Path(data) / name if data else cache_dir(name)


def _download_disabled(download: bool) -> str | None:
    if not download:
        return "download=False"
    if os.environ.get("LOCALNET_NO_DOWNLOAD", "") not in ("", "0"):
        return "LOCALNET_NO_DOWNLOAD is set"
    return None


def locate(name: str, path=None, *, download: bool = True) -> list[Path]:
    """The files of data set name: found locally (first complete directory wins) or downloaded.

    Local files are not checksummed on every load (hashing tens of MB each run is too slow);
    the readers catch truncation and corruption instead.
    """
    source = REGISTRY[name]
    candidates = _candidates(name, path, source)
    for directory, _ in candidates:
        found = _complete(directory, source)
        if found:
            return found
    disabled = _download_disabled(download)
    if disabled:
        why = f"download skipped: {disabled}"
    else:
        try:
            return download_files(name, _download_dir(name))
        except DataError as e:
            why = str(e)
    raise DataError(_not_found(name, source, candidates, why, offer_download=bool(disabled)))


def _not_found(name: str, source: Source, candidates, why: str, *, offer_download: bool) -> str:
    looked = "\n".join(f"  {d}  ({reason})" for d, reason in candidates)
    sets = " | or: ".join(", ".join(s) for s in (tuple(source.files), source.unpacked) if s)
    ways = [
        source.hint,
        f"put the files in $LOCALNET_DATA/{name}/ or {cache_dir(name)}/",
        "allow downloading (download=True, LOCALNET_NO_DOWNLOAD unset)" if offer_download else "",
    ]
    return (
        f"data set {name!r} not found; looked in, in order:\n{looked}\n"
        f"each place needs all of: {sets}\n"
        f"{why}\n"
        f"to get it: {'; or '.join(w for w in ways if w)}"
    )
