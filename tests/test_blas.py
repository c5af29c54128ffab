"""localnet/blas.py: which BLAS the numba kernels' products run on, chosen once per process, before any product.
Each case runs in a fresh process, since the choice cannot change once a product has run."""

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

try:
    version("mkl")
    HAS_MKL = True
except PackageNotFoundError:
    HAS_MKL = False

PROBE = """
import json, numpy as np
import localnet.backends.numba.dense as d
from localnet import blas
from threadpoolctl import threadpool_info
rng = np.random.default_rng(0)
x, W = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((300, 70)).astype(np.float32)
a, _ = d.forward(x, W, None, "linear")
print(json.dumps({"provider": blas.PROVIDER, "apis": sorted({i["internal_api"] for i in threadpool_info()}),
                  "error": float(np.abs(a - x.astype(np.float64) @ W.astype(np.float64)).max())}))
"""


def probe(env_blas, monkeypatch):
    monkeypatch.setenv("LOCALNET_BLAS", env_blas)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=False)
    return done


def test_openblas_on_request(monkeypatch):
    done = probe("openblas", monkeypatch)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["provider"] == "openblas" and "mkl" not in out["apis"] and out["error"] < 1e-3


@pytest.mark.skipif(not HAS_MKL, reason="MKL not installed (pip install -e '.[mkl]')")
def test_mkl_runs_the_numba_products_where_installed(monkeypatch):
    for choice in ("auto", "mkl"):
        done = probe(choice, monkeypatch)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["provider"] == "mkl" and "mkl" in out["apis"] and out["error"] < 1e-3


@pytest.mark.skipif(HAS_MKL, reason="MKL is installed")
def test_asking_for_mkl_without_it_is_a_clear_error(monkeypatch):
    done = probe("mkl", monkeypatch)
    assert done.returncode != 0 and "MKL is not installed" in done.stderr


def test_an_unknown_choice_is_refused(monkeypatch):
    done = probe("atlas", monkeypatch)
    assert done.returncode != 0 and "LOCALNET_BLAS='atlas'" in done.stderr and "openblas" in done.stderr


SPLIT_PROBE = """
import json, numba
from localnet import threads
from localnet.backends.numba import cores, dense
import numpy as np
threads.configure(2)
threads.set_blas(2)
dense.forward(np.ones((128, 256), np.float32), np.ones((256, 256), np.float32), None, "tanh")
try:
    layer = numba.threading_layer()
except ValueError:
    layer = None
print(json.dumps({"parts": cores.parts(1 << 20), "layer": layer}))
"""


@pytest.mark.parametrize("choice", ["mkl", "openblas"])
def test_kernels_split_only_on_mkls_openmp_threads(choice, monkeypatch):
    """Split element-wise passes run on MKL's Intel OpenMP team (Numba's OpenMP layer); beside OpenBLAS's own threads
    a second set of spinning threads would make them several times slower, so there they never split."""
    if choice == "mkl" and not HAS_MKL:
        pytest.skip("MKL not installed (pip install -e '.[mkl]')")
    monkeypatch.setenv("LOCALNET_BLAS", choice)
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    done = subprocess.run([sys.executable, "-c", SPLIT_PROBE], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == ({"parts": 2, "layer": "omp"} if choice == "mkl" else {"parts": 1, "layer": None})


def test_kernels_do_not_split_where_numbas_threads_started_before_localnet(monkeypatch):
    """Started by other code before MKL's runtime was global, Numba's threads may run on another runtime."""
    monkeypatch.setenv("LOCALNET_BLAS", "mkl" if HAS_MKL else "openblas")
    monkeypatch.delenv("NUMBA_THREADING_LAYER", raising=False)
    first = ("import numpy as np\nfrom numba import njit, prange\n@njit(parallel=True)\ndef f(a):\n"
             "    for i in prange(a.size):\n        a[i] += 1\nf(np.zeros(8))\n")
    done = subprocess.run([sys.executable, "-c", first + SPLIT_PROBE], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parts"] == 1
