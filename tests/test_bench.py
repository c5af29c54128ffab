"""`localnet bench`: its FLOP accounting against DESIGN §6, and one quick run end to end (no timing asserted)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import localnet
from localnet.bench import bench, flops, step_gemms

SPECS = Path(__file__).resolve().parent.parent / "specs"


def net_for(name):
    spec = localnet.load_spec(SPECS / name, ["backend=numpy"])
    return localnet.build(spec, n_features=784, n_classes=10)


def test_flops_per_sample_match_the_design_numbers():
    """DESIGN §6: DTP on 784-256×5-10 costs about 4.5 MFLOP per sample, 1.9× backprop."""
    dtp = flops(step_gemms(net_for("fashion-mnist-dtp.yaml"), 128)) / 128
    bp = flops(step_gemms(net_for("fashion-mnist-bp.yaml"), 128)) / 128
    assert dtp == pytest.approx(4.5e6, rel=0.01)
    assert dtp / bp == pytest.approx(1.9, abs=0.02)
    forward = 2 * (784 * 256 + 4 * 256 * 256 + 256 * 10)
    assert bp == 2 * forward + 2 * (4 * 256 * 256 + 256 * 10)  # forward, dW, and e Wᵀ for all but the first layer


def tiny_spec(tmp_path, hidden=1):
    """A DTP spec on the bundled digits with `hidden` tanh layers of 16 units."""
    layers = "".join(f"    - {{name: h{i + 1}, size: 16, activation: tanh}}\n" for i in range(hidden))
    spec = tmp_path / f"tiny{hidden}.yaml"
    spec.write_text(f"""
name: tiny
seed: 1
data: {{name: digits}}
network:
  layers:
{layers}    - {{name: out, size: 10, activation: linear}}
rule: {{name: dtp, target_step: 0.2, feedback_noise: 0.1}}
train: {{batch_size: 32}}
""")
    return spec


def test_quick_bench_runs_and_reports_json(tmp_path):
    spec = tiny_spec(tmp_path)
    result = CliRunner().invoke(bench, [str(spec), "--epochs", "1", "--warmup", "2", "--batches", "3", "--no-torch",
                                        "--no-jax", "--no-sweep", "--no-startup", "--json", "--backend", "numpy",
                                        "--bp-spec", str(spec)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["machine"]["gemm_gflops"] > 0
    assert {r["backend"] for r in report["results"]} == {"numpy"}
    row = report["results"][0]
    assert row["seconds"] > 0 and row["vs_peak_floor"] > 0 and row["peak_rss_mib"] > 0
    assert set(report["breakdown"]["numpy"]["dtp"]) == {"data", "forward", "feedback", "targets", "updates"}
    floor = report["floor"]["dtp"]
    assert floor["peak_s"] > 0 and set(floor["layouts_s"]) == {"blas_all", "blas_1", "two_workers"}
    assert floor["gemm_at_shapes_s"] == min(floor["layouts_s"].values()) > 0
    assert report["machine"]["threads"] >= 1 and report["results"][0]["job_threads"] in (1, 2)


def quick_numba_bench_on_two_cores(spec, bp_spec):
    """`run_bench` on the numba backend with 3 batches an epoch, as on a 2-core machine."""
    from localnet import threads
    from localnet.bench import run_bench
    before = threads.cores()
    threads.configure(2)
    try:
        return run_bench(spec, bp_spec, backends=["numba"], epochs=1, warmup=2, batches=3, torch=False, jax=False,
                         sweep=False, startup=False, breakdown_batches=3)
    finally:
        threads.configure(before)


def test_where_the_engine_picks_two_threads_the_bench_also_times_the_work_on_one_core(tmp_path):
    """DTP with two feedback layers gets two job threads: the bench then times the same steps in one thread on one
    core too, and reports the speed-up the second core buys (its value depends on the machine: not asserted)."""
    spec = tiny_spec(tmp_path, hidden=2)
    report = quick_numba_bench_on_two_cores(spec, spec)
    rows = {r["backend"]: r for r in report["results"] if r["rule"] == "dtp"}
    assert set(rows) == {"numba", "numba, 1 thread", "numba, 1 thread on 1 core"}
    assert (rows["numba"]["job_threads"], rows["numba, 1 thread on 1 core"]["job_threads"]) == (2, 1)
    t = report["two_threads"]["dtp"]
    assert t["one_core_s"] == rows["numba, 1 thread on 1 core"]["seconds"] > 0
    assert t["two_threads_s"] == rows["numba"]["seconds"] > 0 and t["speedup"] == t["one_core_s"] / t["two_threads_s"]


def test_where_kernels_split_across_a_threads_cores_the_bench_also_times_them_unsplit(tmp_path):
    """Backprop keeps one job thread with BLAS on both cores; where the kernels split their element-wise passes
    across those cores (MKL's OpenMP threads), the bench times the same steps unsplit too (values not asserted)."""
    from localnet.backends.numba import cores
    spec = tiny_spec(tmp_path)
    bp = tmp_path / "bp.yaml"
    bp.write_text(spec.read_text().replace("rule: {name: dtp, target_step: 0.2, feedback_noise: 0.1}",
                                           "rule: {name: bp}"))
    report = quick_numba_bench_on_two_cores(spec, bp)
    rows = {r["backend"]: r for r in report["results"] if r["rule"] == "bp"}
    if not cores.splits():
        assert "numba, passes not split" not in rows and report["split"] == {}
        return
    assert set(rows) == {"numba", "numba, 2 threads", "numba, passes not split"}
    t = report["split"]["bp"]
    assert t["unsplit_s"] == rows["numba, passes not split"]["seconds"] > 0
    assert t["split_s"] == rows["numba"]["seconds"] > 0 and t["speedup"] == t["unsplit_s"] / t["split_s"]
    assert cores.splits()  # the block put it back


@pytest.mark.parametrize("peer, package", [("pytorch", "torch"), ("jax", "jax")])
def test_each_peer_is_timed_in_a_process_of_its_own(tmp_path, peer, package):
    """Not in the bench's process, where PyTorch's OpenMP calls would bind to the Intel runtime loaded for MKL;
    XLA's CPU client on the cores localnet uses (PJRT_NPROC)."""
    pytest.importorskip(package)
    from localnet.bench import time_peer_in_own_process
    from localnet.threads import cores
    out = time_peer_in_own_process(peer, tiny_spec(tmp_path), epochs=1, warmup=1, batches=2)
    assert out["seconds"] > 0 and len(out["epochs"]) == 1 and out["threads"] == cores()
    assert out["localnet_openmp_loaded"] is False and out["peak_rss_mib"] > 0 and out["version"]


def test_the_bench_has_a_jax_row_and_ratio_where_jax_is_installed(tmp_path):
    pytest.importorskip("jax")
    spec = tiny_spec(tmp_path)
    result = CliRunner().invoke(bench, [str(spec), "--no-torch", "--batches", "2", "--epochs", "1", "--warmup", "1",
                                        "--no-sweep", "--no-startup", "--json", "--backend", "numpy",
                                        "--bp-spec", str(spec)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {(r["backend"], r["rule"]): r for r in report["results"] if r["rule"] == "dtp"}
    assert set(rows) == {("numpy", "dtp"), ("jax", "dtp")} and rows["jax", "dtp"]["seconds"] > 0
    assert rows["numpy", "dtp"]["vs_jax"] == rows["numpy", "dtp"]["seconds"] / rows["jax", "dtp"]["seconds"]
    assert "vs_pytorch" not in rows["numpy", "dtp"] and "pytorch" not in report["skipped"]


def test_a_conv_net_is_benched_against_its_backprop_twin_without_a_gemm_floor():
    """A conv block's work is not a list of matrix products: no floor row, said so; the backprop spec beside the
    rule's (`-bp.yaml`) is found by itself; each rule is reported against backprop on the same backend."""
    from localnet.bench import run_bench
    report = run_bench(SPECS / "fashion-mnist-lenet-dtp.yaml", backends=["numpy"], epochs=1, warmup=1, batches=1,
                       torch=False, jax=False, startup=False)
    assert report["net"]["bp"]["spec"].endswith("fashion-mnist-lenet-bp.yaml")
    assert report["net"]["dtp"]["layers"] == ["16c5m", "32c5m", "flatten", "120", "84", "10"]
    assert report["floor"] == {} and "floor dtp" in report["skipped"] and "sweep" in report["skipped"]
    (dtp,) = [r for r in report["results"] if r["rule"] == "dtp"]
    (bp,) = [r for r in report["results"] if r["rule"] == "bp"]
    assert dtp["vs_bp"] == pytest.approx(dtp["seconds"] / bp["seconds"]) and "vs_peak_floor" not in dtp


