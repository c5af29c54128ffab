"""Tests for localnet.data: readers, file resolution, downloads (local server only) and splits."""

import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import threading
import urllib.parse
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from helpers import IDX_CODES, idx_bytes, write_idx

from localnet.data import DATASETS, Dataset, Split, dataset_shape, load_dataset, sample_shape
from localnet.data import fetch
from localnet.data.cifar import read_cifar10
from localnet.data.datasets import DIGITS_FILE, stratified
from localnet.data.idx import read_idx
from localnet.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the real user's cache or environment, and none may reach beyond 127.0.0.1."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", "LOCALNET_DATA", "LOCALNET_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOCALNET_NO_DOWNLOAD", "1")
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", f"test tried to reach {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


# ---------------------------------------------------------------- IDX


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(sorted(IDX_CODES)),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    gz=st.booleans(),
)
def test_idx_round_trip(tmp_path_factory, data, dtype, shape, gz):
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    path = write_idx(tmp_path_factory.mktemp("idx") / "a.idx", array, dtype, gz)
    back = read_idx(path)
    assert back.shape == shape
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_idx_ignores_misleading_extension(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain.gz", array)), array)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "packed", array, gz=True)), array)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "trailing"),
        (lambda b: b[:10], "truncated"),  # cut inside the dimension header
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x0a" + b[3:], "type code 0x0a"),
        (lambda b: b"", "empty file"),
        (lambda b: gzip.compress(b)[:-20], "cannot read"),  # gzip stream cut short
    ],
)
def test_idx_rejects_broken_files(tmp_path, mangle, message):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(mangle(idx_bytes(np.zeros((3, 4, 4)), "u1")))
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- CIFAR


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str, as in the published CIFAR-10 batches (Python 2, protocol 2)."""

    def save_bytes(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
        self.write(obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_bytes}


def dumps(obj, protocol=2):
    """Protocol 2 like the official files; protocol 4 like a batch re-pickled by Python 3."""
    if protocol != 2:
        return pickle.dumps(obj, protocol=protocol)
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def write_cifar(root: Path, *, test_batch=None, protocol=2) -> Path:
    """Small batches in the official layout."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for i in range(1, 6):
        (directory / f"data_batch_{i}").write_bytes(dumps(cifar_batch(4, i), protocol))
    (directory / "test_batch").write_bytes(test_batch or dumps(cifar_batch(3, 0), protocol))
    return directory


def tar_cifar(directory: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("test_batch", "data_batch_3", "data_batch_1", "data_batch_5", "data_batch_2", "data_batch_4"):
            tar.add(directory / name, arcname=f"cifar-10-batches-py/{name}")
    return archive


def expected_cifar():
    train = [cifar_batch(4, i) for i in range(1, 6)]
    return (
        np.concatenate([b[b"data"] for b in train]),
        np.concatenate([b[b"labels"] for b in train]),
        cifar_batch(3, 0)[b"data"],
        np.array(cifar_batch(3, 0)[b"labels"]),
    )


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("form", ["directory", "archive"])
def test_cifar_reads_both_forms(tmp_path, form, protocol):
    directory = write_cifar(tmp_path / "src", protocol=protocol)
    source = directory if form == "directory" else tar_cifar(directory, tmp_path / "cifar-10-python.tar.gz")
    for got, want in zip(read_cifar10(source), expected_cifar()):
        np.testing.assert_array_equal(got, want)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_accepts_numpy_1_module_names(tmp_path):
    """The published files name numpy.core.multiarray, which numpy 2 calls numpy._core.multiarray."""
    batch = dumps(cifar_batch(3, 0))
    old = batch.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert old != batch
    np.testing.assert_array_equal(read_cifar10(write_cifar(tmp_path, test_batch=old))[3], expected_cifar()[3])


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("form", ["directory", "archive"])
def test_cifar_refuses_foreign_globals(tmp_path, protocol, form):
    marker = tmp_path / "executed"
    evil = dumps({b"data": Evil(marker), b"labels": []}, protocol)
    directory = write_cifar(tmp_path / "src", test_batch=evil)
    source = directory if form == "directory" else tar_cifar(directory, tmp_path / "c.tar.gz")
    with pytest.raises(DataError, match=r"refusing to load global (os|posix)\.system") as err:
        read_cifar10(source)
    assert "test_batch" in str(err.value)
    assert not marker.exists()


def test_cifar_checks_shapes(tmp_path):
    bad = {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}
    with pytest.raises(DataError, match="3072 uint8"):
        read_cifar10(write_cifar(tmp_path, test_batch=dumps(bad)))
    short = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}
    with pytest.raises(DataError, match="labels of shape"):
        read_cifar10(write_cifar(tmp_path / "b", test_batch=dumps(short)))


def test_cifar_corrupt_archive(tmp_path):
    archive = tar_cifar(write_cifar(tmp_path / "src"), tmp_path / "c.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="c.tar.gz"):
        read_cifar10(archive)


def test_load_cifar10_from_path(tmp_path):
    write_cifar(tmp_path)
    ds = load_dataset("cifar10", path=tmp_path, validation=5)
    x, y, tx, ty = expected_cifar()
    assert (ds.n_features, ds.n_classes) == (3072, 10)
    np.testing.assert_allclose(ds.train.x, x[:15] / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.validation.y, y[15:])
    np.testing.assert_array_equal(ds.test.y, ty)


# ---------------------------------------------------------------- resolution


FILES = {"a.bin": b"alpha", "b.bin": b"bravo"}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A registry entry for a made-up data set whose 'system' directory lives in tmp_path."""
    source = fetch.Source(
        base_url="http://127.0.0.1:9/not-used/",
        files={name: md5(data) for name, data in FILES.items()},
        system_dirs=(str(tmp_path / "system" / "fake"),),
        hint="ask a friend",
    )
    monkeypatch.setitem(fetch.REGISTRY, "fake", source)
    return source


def fill(directory: Path, files=FILES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def test_resolution_order(fake, tmp_path, monkeypatch):
    explicit = fill(tmp_path / "explicit")
    env = fill(tmp_path / "env" / "fake")
    cache = fill(tmp_path / "xdg" / "localnet" / "fake")
    home_cache = fill(tmp_path / "home" / ".cache" / "localnet" / "fake")
    system = fill(tmp_path / "system" / "fake")
    monkeypatch.setenv("LOCALNET_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def found(path=None):
        files = fetch.locate("fake", path, download=False)
        assert [f.name for f in files] == list(FILES)
        return files[0].parent

    assert found(explicit) == explicit
    assert found() == env
    monkeypatch.delenv("LOCALNET_DATA")
    assert found() == cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert found() == home_cache
    (home_cache / "b.bin").unlink()  # an incomplete directory does not count
    assert found() == system
    assert found(tmp_path / "empty") == system


def test_unpacked_files_are_accepted_and_preferred(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.REGISTRY, "fake", dataclasses.replace(fake, unpacked=("a", "b")))
    d = fill(tmp_path / "d")
    assert [f.name for f in fetch.locate("fake", d, download=False)] == ["a.bin", "b.bin"]
    fill(d, {"a": b"", "b": b""})
    assert [f.name for f in fetch.locate("fake", d, download=False)] == ["a", "b"]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_not_found_lists_every_place(fake, tmp_path, monkeypatch, how):
    monkeypatch.setenv("LOCALNET_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if how == "argument":
        monkeypatch.delenv("LOCALNET_NO_DOWNLOAD")
    with pytest.raises(DataError) as err:
        fetch.locate("fake", tmp_path / "explicit", download=how == "environment")
    message = str(err.value)
    places = [tmp_path / "explicit", tmp_path / "env" / "fake", tmp_path / "xdg" / "localnet" / "fake",
              tmp_path / "system" / "fake"]
    positions = [message.index(str(p)) for p in places]
    assert positions == sorted(positions)
    assert "looked in" in message and "a.bin" in message and "ask a friend" in message
    assert ("download=False" if how == "argument" else "LOCALNET_NO_DOWNLOAD") in message


def test_fashion_mnist_hint(tmp_path, monkeypatch):
    source = dataclasses.replace(fetch.REGISTRY["fashion-mnist"], system_dirs=(str(tmp_path / "nowhere"),))
    monkeypatch.setitem(fetch.REGISTRY, "fashion-mnist", source)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "nowhere") in str(err.value)


# ---------------------------------------------------------------- downloads (127.0.0.1 only)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server; downloads are re-enabled and pointed at it."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.delenv("LOCALNET_NO_DOWNLOAD")
    monkeypatch.setenv("LOCALNET_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    yield root
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_lands_and_verifies(fake, mirror, tmp_path, capsys):
    fill(mirror)
    files = fetch.locate("fake")
    cache = tmp_path / "home" / ".cache" / "localnet" / "fake"
    assert files == [cache / name for name in FILES]
    assert {f.name: f.read_bytes() for f in files} == FILES
    assert sorted(os.listdir(cache)) == sorted(FILES)  # no temporary files left behind
    assert "downloading" in capsys.readouterr().err
    assert fetch.locate("fake", download=False) == files  # found in the cache from now on


def test_download_goes_to_localnet_data(fake, mirror, tmp_path, monkeypatch):
    fill(mirror)
    monkeypatch.setenv("LOCALNET_DATA", str(tmp_path / "env"))
    assert fetch.locate("fake")[0] == tmp_path / "env" / "fake" / "a.bin"


def test_download_mirror_argument(fake, mirror, tmp_path, monkeypatch):
    fill(mirror)
    url = os.environ["LOCALNET_MIRROR"]
    monkeypatch.delenv("LOCALNET_MIRROR")
    files = fetch.download_files("fake", tmp_path / "dest", mirror=url)
    assert [f.read_bytes() for f in files] == list(FILES.values())


def test_download_checksum_mismatch_leaves_nothing(fake, mirror, tmp_path):
    fill(mirror, {"a.bin": b"alpha", "b.bin": b"tampered"})
    with pytest.raises(DataError, match="corrupt") as err:
        fetch.locate("fake")
    assert "b.bin" in str(err.value) and "looked in" in str(err.value)
    cache = tmp_path / "home" / ".cache" / "localnet" / "fake"
    assert os.listdir(cache) == ["a.bin"]  # the good file stays, the bad one and its temporary do not


def test_download_missing_file_on_mirror(fake, mirror, tmp_path):
    fill(mirror, {"a.bin": b"alpha"})
    with pytest.raises(DataError, match="404"):
        fetch.locate("fake")
    assert not (tmp_path / "home" / ".cache" / "localnet" / "fake" / "b.bin").exists()


def test_load_mnist_end_to_end_through_mirror(mirror, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5),
    }
    for name, array in arrays.items():
        write_idx(mirror / name, array, gz=True)
    sums = tuple(md5((mirror / name).read_bytes()) for name in arrays)
    monkeypatch.setitem(fetch.REGISTRY, "mnist", fetch._idx_source("http://127.0.0.1:9/", sums, "mnist"))
    ds = load_dataset("mnist", validation=2, scale="none")
    np.testing.assert_array_equal(ds.train.x, arrays["train-images-idx3-ubyte.gz"][:10].reshape(10, 784))
    np.testing.assert_array_equal(ds.validation.y, arrays["train-labels-idx1-ubyte.gz"][10:])
    np.testing.assert_array_equal(ds.test.y, arrays["t10k-labels-idx1-ubyte.gz"])


# ---------------------------------------------------------------- splits and scaling


def raw_digits():
    with np.load(DIGITS_FILE) as npz:
        return npz["images"], npz["labels"]


def rows(x):
    return sorted(map(tuple, np.asarray(x).tolist()))


def test_public_api():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "arrays", "idx")
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and isinstance(ds.train, Split)
    assert (ds.name, ds.n_features, ds.n_classes, ds.validation) == ("digits", 64, 10, None)
    for split in (ds.train, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.flags.c_contiguous and split.y.flags.c_contiguous


def test_digits_validation_is_a_stratified_draw_shuffled_by_the_seed():
    """digits' file runs through the classes in order: its last samples are no fair validation set."""
    full = load_dataset("digits")
    ds = load_dataset("digits", validation=200, seed=0)
    assert np.bincount(ds.validation.y).tolist() == [20] * 10  # each class in its share of the training part
    # together train and validation are exactly the training part, in the same order, and the test split stays
    assert rows(np.vstack([ds.train.x, ds.validation.x])) == rows(full.train.x)
    np.testing.assert_array_equal(ds.test.x, full.test.x)
    assert ds.validation.x.flags.c_contiguous
    again, other = load_dataset("digits", validation=200, seed=0), load_dataset("digits", validation=200, seed=1)
    np.testing.assert_array_equal(again.validation.x, ds.validation.x)
    assert rows(other.validation.x) != rows(ds.validation.x)
    np.testing.assert_array_equal(other.test.x, ds.test.x)  # the test split does not move with the seed


def test_stratified_draw_keeps_each_class_share_and_its_size():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    for n in (1, 7, 10, 33, 99):
        mask = stratified(y, n, np.random.default_rng(n))
        counts = np.bincount(y[mask], minlength=3)
        assert counts.sum() == n and (np.abs(counts - n * np.array([0.5, 0.3, 0.2])) < 1).all(), (n, counts)


def test_validation_of_the_published_sets_is_their_last_samples(tmp_path):
    _mnist(tmp_path)
    arrays = {name: read_idx(tmp_path / name) for name in fetch.REGISTRY["mnist"].unpacked}
    ds = load_dataset("mnist", path=tmp_path, validation=1, scale="none", seed=5)
    np.testing.assert_array_equal(ds.validation.x, arrays["train-images-idx3-ubyte"][3:].reshape(1, 784))
    np.testing.assert_array_equal(ds.train.x, arrays["train-images-idx3-ubyte"][:3].reshape(3, 784))


@pytest.mark.parametrize("validation", [-1, 1438, 5000, 1.5, True])
def test_bad_validation(validation):
    with pytest.raises(DataError, match="validation"):
        load_dataset("digits", validation=validation)


def test_digits_test_split_is_fixed_and_disjoint():
    x, y = raw_digits()
    ds = load_dataset("digits", scale="none")
    assert len(ds.test.y) == round(0.2 * 1797) == 359 and len(ds.train.y) == 1797 - 359
    # together train and test are exactly the data set, so they cannot overlap
    assert rows(np.vstack([ds.train.x, ds.test.x])) == rows(x)
    assert sorted(np.concatenate([ds.train.y, ds.test.y])) == sorted(y)
    again = load_dataset("digits", scale="none", validation=100)
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    assert np.bincount(ds.test.y).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # stratified
    # pinned, so that a change in numpy's generator stream (which would move the test set) is noticed
    assert ds.test.y[:10].tolist() == [5, 9, 2, 4, 6, 7, 9, 3, 4, 6]
    small = load_dataset("digits", test=100, scale="none")
    assert len(small.test.y) == 100 and set(rows(small.test.x)) <= set(rows(ds.test.x))


@pytest.mark.parametrize("test", [0, 1797, -3])
def test_bad_test_size(test):
    with pytest.raises(DataError, match="test"):
        load_dataset("digits", test=test)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist", "cifar10"])
def test_test_argument_refused_for_official_splits(name):
    with pytest.raises(DataError, match="official test split"):
        load_dataset(name, test=100)


def test_scales():
    raw = load_dataset("digits", scale="none", dtype=np.float64)
    unit = load_dataset("digits", scale="unit")
    std = load_dataset("digits", scale="standard", validation=200)
    assert raw.train.x.dtype == np.float64 and raw.train.x.max() == 16
    assert np.array_equal(raw.train.x, raw.train.x.round())
    np.testing.assert_allclose(unit.train.x, raw.train.x / 16, rtol=1e-6)
    assert unit.train.x.min() == 0 and unit.train.x.max() == 1

    split = load_dataset("digits", scale="none", dtype=np.float64, validation=200)
    train = split.train.x
    mean, sd = train.mean(0), train.std(0)
    constant = sd == 0
    assert constant.any()  # digits has always-blank pixels: they must become 0, not NaN
    sd[constant] = 1
    np.testing.assert_allclose(std.train.x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(std.train.x.std(0, dtype=np.float64)[~constant], 1, rtol=1e-5)
    assert not np.isnan(std.train.x).any() and (std.train.x[:, constant] == 0).all()
    # validation and test are scaled with training statistics, not their own
    np.testing.assert_allclose(std.validation.x, (split.validation.x - mean) / sd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.test.x, (raw.test.x - mean) / sd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"name": "imagenet"}, "unknown data set"), ({"scale": "minmax"}, "unknown scale"), ({"dtype": np.int32}, "dtype")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_dataset(**{"name": "digits", **kwargs})


def test_digits_path_argument(tmp_path):
    x, y = raw_digits()
    np.savez_compressed(tmp_path / "digits.npz", images=x[:100], labels=y[:100])
    assert len(load_dataset("digits", path=tmp_path, test=20).train.y) == 80
    with pytest.raises(DataError, match=str(tmp_path / "empty" / "digits.npz")):
        load_dataset("digits", path=tmp_path / "empty")


def test_corrupt_local_file_gives_data_error(tmp_path):
    for name in fetch.REGISTRY["mnist"].files:
        write_idx(tmp_path / name, np.zeros((2, 28, 28) if "images" in name else 2), gz=True)
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", path=tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_system_dir():
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train.x.shape == (60000, 784) and ds.test.x.shape == (10000, 784)
    assert (ds.n_features, ds.n_classes) == (784, 10)
    for split in (ds.train, ds.test):
        assert split.y.min() == 0 and split.y.max() == 9
        assert split.x.min() == 0 and split.x.max() == 1
    assert np.bincount(ds.train.y).tolist() == [6000] * 10


# ---------------------------------------------------------------- hostile files: one line naming the file
def _mnist(tmp_path, **replace):
    """Made-up MNIST files in `tmp_path`, with some replaced: name -> (array, IDX dtype) or raw bytes."""
    for name in fetch.REGISTRY["mnist"].files:
        value = replace.get(name.removesuffix(".gz"))
        path = tmp_path / name.removesuffix(".gz")
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif value is not None:
            write_idx(path, value[0], value[1])
        else:
            write_idx(path, np.zeros((4, 28, 28) if "images" in name else 4))
    return tmp_path


@pytest.mark.parametrize("replace, message", [
    ({"train-images-idx3-ubyte": b""}, "not an IDX file"),
    ({"train-images-idx3-ubyte": bytes([0, 0, 8, 2]) + np.array([65536, 4], ">u4").tobytes()}, "file truncated"),
    ({"train-images-idx3-ubyte": bytes([0, 0, 8, 4]) + np.array([65536] * 4, ">u4").tobytes()}, "file truncated"),
    ({"train-images-idx3-ubyte": (np.zeros((0, 28, 28)), "u1"), "train-labels-idx1-ubyte": (np.zeros(0), "u1")},
     "no images"),
    ({"train-labels-idx1-ubyte": (np.array([1, 2, np.nan, 3]), ">f4")}, "labels must be integers, found float32"),
    ({"t10k-labels-idx1-ubyte": (np.array([1, 2, 3.5, 3]), ">f8")}, "labels must be integers, found float64"),
    ({"train-images-idx3-ubyte": (np.full((4, 28, 28), np.nan), ">f4")}, "NaN or infinite"),
])
def test_hostile_idx_files_are_one_data_error_naming_the_file(tmp_path, replace, message):
    _mnist(tmp_path, **replace)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", path=tmp_path)
    assert str(tmp_path) in str(info.value)


def test_digits_with_string_labels_or_nan_pixels_is_a_data_error(tmp_path):
    x, y = raw_digits()
    for images, labels in ((x[:50], y[:50].astype(str)), (np.full((50, 64), np.nan), y[:50])):
        np.savez(tmp_path / "digits.npz", images=images, labels=labels)
        with pytest.raises(DataError, match="integer labels and finite numeric images"):
            load_dataset("digits", path=tmp_path, test=10)


# ---------------------------------------------------------------- your own data: arrays (.npz) and idx files
def own_arrays(n=120, shape=(2, 4, 4), classes=3, seed=0, test=None):
    """Samples of `shape` and integer labels 0..classes-1, as x_train/y_train (and x_test/y_test)."""
    rng = np.random.default_rng(seed)
    out = {"x_train": rng.random((n, *shape)).astype(np.float32), "y_train": rng.integers(0, classes, n)}
    if test:
        out.update(x_test=rng.random((test, *shape)).astype(np.float32), y_test=rng.integers(0, classes, test))
    return out


def data_spec(**data):
    from localnet.spec import load_spec
    return load_spec({"name": "own", "data": data, "network": {"layers": [{"name": "out", "size": 3}]}}).data


@pytest.mark.parametrize("shape, seen", [((2, 4, 4), (2, 4, 4)), ((5, 6), (1, 5, 6)), ((7,), (7,))])
def test_arrays_load_any_sample_shape_and_count_the_classes(tmp_path, shape, seen):
    file = tmp_path / "my.npz"
    arrays = own_arrays(shape=shape, test=30)
    np.savez(file, **arrays)
    ds = load_dataset("arrays", path=file, validation=20, scale="none")
    assert (ds.sample_shape, ds.n_classes, ds.n_features) == (seen, 3, math.prod(shape))
    assert len(ds.train.y) == 100 and len(ds.validation.y) == 20
    np.testing.assert_array_equal(ds.test.x, arrays["x_test"].reshape(30, -1))  # the file's own test split
    np.testing.assert_array_equal(ds.test.y, arrays["y_test"])
    assert rows(np.vstack([ds.train.x, ds.validation.x])) == rows(arrays["x_train"].reshape(120, -1))
    assert dataset_shape(data_spec(name="arrays", path=str(file))) == (math.prod(shape), 3)
    assert sample_shape(data_spec(name="arrays", path=str(file))) == seen


def test_arrays_without_a_test_split_draw_one_and_unit_scale_by_the_largest_magnitude(tmp_path):
    file = tmp_path / "my.npz"
    x = np.arange(200 * 3, dtype=np.int16).reshape(200, 3) - 100
    np.savez(file, x_train=x, y_train=np.arange(200) % 4)
    ds = load_dataset("arrays", path=file, test=40)
    assert len(ds.test.y) == 40 and np.bincount(ds.test.y).tolist() == [10] * 4
    got = np.vstack([ds.train.x, ds.test.x])
    assert rows(got) == rows(x / np.float32(499))  # unit: |x| at most 499 here


def test_the_network_is_sized_from_the_files_headers_without_reading_the_samples(tmp_path, monkeypatch):
    file = tmp_path / "my.npz"
    np.savez_compressed(file, **own_arrays(shape=(1, 6, 6), classes=5, test=10))
    read = []
    original = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    assert dataset_shape(data_spec(name="arrays", path=str(file))) == (36, 5)
    assert sorted(read) == ["y_test", "y_train"]  # the labels count the classes; no sample is read


def test_classes_gives_k_and_bounds_the_labels(tmp_path):
    file = tmp_path / "my.npz"
    np.savez(file, **own_arrays(classes=3))
    assert load_dataset("arrays", path=file, classes=7).n_classes == 7
    assert dataset_shape(data_spec(name="arrays", path=str(file), classes=7)) == (32, 7)
    with pytest.raises(DataError, match=rf"{file}: y_train: label 2 is not below `classes` \(2\)"):
        load_dataset("arrays", path=file, classes=2)


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 3))}, r"needs arrays x_train and y_train .*found x_train"),
    ({**own_arrays(), "x_test": np.zeros((4, 2, 4, 4))}, "has x_test without y_test"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(5, int)},
     r"y_train: must be \(N,\), one label per sample \(4\)"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.array([0, 1, 0.5, 1])}, "y_train: labels must be integers 0..K-1, "
                                                                          "found float64"),
    ({"x_train": np.zeros((4, 3)), "y_train": np.array([0, 1, -1, 1])}, "y_train: labels must be integers 0..K-1, "
                                                                         "found -1"),
    ({"x_train": np.full((4, 3), np.nan), "y_train": np.zeros(4, int)}, "x_train: holds NaN or infinite values"),
    ({"x_train": np.array([["a"] * 3] * 4), "y_train": np.zeros(4, int)}, "x_train: must hold numbers, found <U1"),
    ({"x_train": np.zeros(4), "y_train": np.zeros(4, int)}, r"x_train: must be \(N, ...\), one sample per row"),
    ({**own_arrays(), "x_test": np.zeros((3, 5)), "y_test": np.zeros(3, int)},
     r"x_test: samples of shape \(5,\), those of .*x_train are \(2, 4, 4\)"),
])
def test_bad_arrays_are_one_data_error_naming_the_file_and_the_key(tmp_path, arrays, message):
    file = tmp_path / "my.npz"
    np.savez(file, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("arrays", path=file)
    assert str(info.value).startswith(f"{file}: ")


@pytest.mark.parametrize("content, message", [(b"not a zip", "cannot read it as an .npz file"), (None, "No such file")])
def test_an_unreadable_arrays_file_is_named(tmp_path, content, message):
    file = tmp_path / "my.npz"
    if content is not None:
        file.write_bytes(content)
    for call in (lambda: load_dataset("arrays", path=file), lambda: dataset_shape(data_spec(name="arrays",
                                                                                            path=str(file)))):
        with pytest.raises(DataError, match=message) as info:
            call()
        assert str(file) in str(info.value)


def test_an_idx_pair_by_path(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (50, 9, 7)), rng.integers(0, 6, 50)
    write_idx(tmp_path / "letters-train-images.gz", images, gz=True)
    write_idx(tmp_path / "letters-train-labels", labels)
    write_idx(tmp_path / "letters-test-images", images[:5])
    write_idx(tmp_path / "letters-test-labels", labels[:5])
    files = dict(images="letters-train-images.gz", labels="letters-train-labels")
    spec = data_spec(name="idx", path=str(tmp_path), **files)
    assert dataset_shape(spec) == (63, int(labels.max()) + 1) and sample_shape(spec) == (1, 9, 7)
    ds = load_dataset("idx", path=tmp_path, validation=10, test=8, **files)
    assert (ds.n_classes, ds.sample_shape, len(ds.train.y), len(ds.validation.y), len(ds.test.y)) == \
        (int(labels.max()) + 1, (1, 9, 7), 32, 10, 8)
    assert ds.train.x.max() <= 1 and ds.train.x.max() > 0.9  # unit: by the largest value, 255 here
    with_test = load_dataset("idx", path=tmp_path, test_images="letters-test-images",
                             test_labels="letters-test-labels", scale="none", **files)
    np.testing.assert_array_equal(with_test.test.x, images[:5].reshape(5, 63))
    write_idx(tmp_path / "short-labels", labels[:49])
    with pytest.raises(DataError, match=rf"{tmp_path / 'short-labels'}: must be \(N,\), one label per sample"):
        load_dataset("idx", path=tmp_path, images="letters-train-images.gz", labels="short-labels")


@pytest.mark.parametrize("data, key, message", [
    ({"name": "arrays"}, "path", "data set 'arrays' needs `path`"),
    ({"name": "idx", "labels": "l"}, "images", "data set 'idx' needs `images`"),
    ({"name": "digits", "images": "i"}, "images", "`images` does not apply to data set 'digits'"),
    ({"name": "mnist", "classes": 3}, "classes", "`classes` does not apply to data set 'mnist'"),
    ({"name": "idx", "images": "i", "labels": "l", "test_images": "t"}, "test_images",
     "give `test_images` and `test_labels` together"),
])
def test_the_spec_says_which_data_keys_are_missing_or_do_not_apply(tmp_path, data, key, message):
    from localnet.errors import SpecError
    from localnet.spec import load_spec
    file = tmp_path / "s.yaml"
    lines = "\n".join(f"  {k}: {v}" for k, v in data.items())
    file.write_text(f"name: s\ndata:\n{lines}\nnetwork:\n  layers:\n    - {{name: out, size: 3}}\n")
    with pytest.raises(SpecError, match=message) as info:
        load_spec(file)
    line = 2 + next((i for i, k in enumerate(data, 1) if k == key), 0)
    assert f"{file}:{line}" in str(info.value) and f"data.{key}" in str(info.value)


def test_training_on_your_own_arrays(tmp_path, monkeypatch):
    from localnet.spec import load_spec
    from localnet.training import train
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, 5)).astype(np.float32)
    np.savez("blobs.npz", x_train=x, y_train=(x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0))
    spec = load_spec({"name": "own", "backend": "numpy", "data": {"name": "arrays", "path": "blobs.npz",
                                                                  "validation": 40},
                      "network": {"layers": [{"name": "h", "size": 8}, {"name": "out", "size": 4,
                                                                        "activation": "linear"}]},
                      "rule": {"name": "bp"}, "optimizer": {"forward": {"lr": 0.01}},
                      "train": {"epochs": 5, "batch_size": 16}})
    summary, _ = train(spec, runs_root=tmp_path / "runs")
    assert summary["status"] == "completed" and summary["test_accuracy"] > 0.6  # 4 quadrants; chance is 0.25
