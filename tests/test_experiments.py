"""The papers' experiments: the spec options their schedules need (σ decaying per epoch, input noise, the
reconstruction loss of auto-encoders, evaluation by the mean of sampled passes), each held to a hand-written numpy
computation, and the shipped experiment specs (they validate and build; without their data, the data error; with
made-up files in their data's layout, they run)."""

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

import localnet
from helpers import stop_at, write_idx
from localnet.data import dataset_shape, sample_shape
from localnet.errors import DataError, Interrupted, SpecError
from localnet.graph import build_graph
from localnet.layers.dense import DenseLayer
from localnet.network import Network
from localnet.runs import RunDir
from localnet.training import StopRequest, load_data, resume, train

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "network.layers.h1.size=16", "network.layers.h2.size=16"]
BATCHES = 39  # digits: 1237 training samples in batches of 32


def small(*overrides):
    return localnet.load_spec(QUICKSTART, SMALL + list(overrides))


# -- σ decaying per epoch -----------------------------------------------------------------------------------------
def test_feedback_noise_decays_per_epoch_as_lee_et_al(tmp_path, monkeypatch):
    seen = []  # (layer, σ) at every feedback-training call
    original = DenseLayer.train_feedback

    def spy(self, *args, **kwargs):
        seen.append((self.name, self.feedback_noise))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DenseLayer, "train_feedback", spy)
    train(small("train.epochs=3", "rule.feedback_noise=0.5", "rule.feedback_noise_decay=2"), runs_root=tmp_path)
    # σ_e = 0.5 / (1 + (e - 1)/2): 0.5, 1/3, 0.25; the feedback layers h2 and out, once per batch
    expected = [0.5] * BATCHES + [0.5 / 1.5] * BATCHES + [0.25] * BATCHES
    for name in ("h2", "out"):
        got = [sigma for layer, sigma in seen if layer == name]
        assert len(got) == len(expected)
        np.testing.assert_allclose(got, expected, rtol=1e-15)


def test_without_decay_sigma_stays_the_specs():
    spec = small()
    assert spec.rule.feedback_noise_decay == 0
    net = localnet.build(spec)
    assert {layer.feedback_noise for layer in net.layers.values()} == {spec.rule.feedback_noise}


@pytest.mark.parametrize("key,value", [("rule.feedback_noise_decay", "-1"), ("train.input_noise", "-0.1"),
                                       ("train.eval_samples", "-1")])
def test_negative_settings_are_spec_errors_naming_the_key(key, value):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        small(f"{key}={value}")


def test_decay_and_input_noise_resume_bit_identically(tmp_path):
    extra = ["train.epochs=3", "rule.feedback_noise_decay=1", "train.input_noise=0.2"]
    reference, _ = train(small(*extra), runs_root=tmp_path / "ref")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        train(small(*extra), runs_root=tmp_path / "stopped", stop=stop, **stop_at(stop, 2, 20))
    (path,) = (tmp_path / "stopped").iterdir()
    summary, _ = resume(path)
    assert summary["status"] == "completed"
    a = RunDir(reference["run_dir"]).load_parameters(["h1", "h2", "out"])
    b = RunDir(path).load_parameters(["h1", "h2", "out"])
    for layer in a:
        for key in a[layer]:
            assert a[layer][key].tobytes() == b[layer][key].tobytes(), (layer, key)


# -- input noise ----------------------------------------------------------------------------------------------------
def test_input_noise_corrupts_training_inputs_only(tmp_path, monkeypatch):
    spec = small("train.epochs=2", "train.input_noise=0.3", "train.shuffle=false")
    data = load_data(spec)
    steps, evaluated = [], []
    original_step, original_eval = Network.train_step, Network.evaluate

    def step(self, x, y):
        steps.append((np.array(x), np.array(y)))
        return original_step(self, x, y)

    def evaluate(self, x, y, batch_size=1000):
        evaluated.append(np.array(x))
        return original_eval(self, x, y, batch_size)

    monkeypatch.setattr(Network, "train_step", step)
    monkeypatch.setattr(Network, "evaluate", evaluate)
    train(spec, runs_root=tmp_path)
    assert len(steps) == 2 * BATCHES
    clean = data.train.x
    noise = np.concatenate([x - clean[(i % BATCHES) * 32:(i % BATCHES) * 32 + len(x)]
                            for i, (x, _) in enumerate(steps)])
    # Gaussian, σ 0.3: sample mean and standard deviation of ~160k draws within a few standard errors
    assert abs(noise.mean()) < 0.005 and abs(noise.std() - 0.3) < 0.003
    first, second = steps[0][0], steps[BATCHES][0]  # the same images in both epochs (no shuffle): new noise
    assert not np.allclose(first, second)
    for i, (_, y) in enumerate(steps):  # the labels are untouched
        np.testing.assert_array_equal(y, data.train.y[(i % BATCHES) * 32:(i % BATCHES) * 32 + len(y)])
    for x in evaluated:  # validation, then the final evaluation of each split: clean inputs
        assert any(x.shape == part.x.shape and np.array_equal(x, part.x)
                   for part in (data.train, data.validation, data.test))


# -- the reconstruction loss -------------------------------------------------------------------------------------
AE = ["network.loss=reconstruction", "network.layers.out.size=64", "network.layers.out.activation=sigmoid",
      "dtype=float64"]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_reconstruction_loss_value_and_first_target_against_numpy(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    spec = small(*AE, f"backend={backend}", "rule.target_step=0.7")
    net = localnet.build(spec)
    x = load_data(spec).train.x[:10]
    targets = net.targets(x, x)
    z = net.forward(x)[-1]
    loss = ((z - x) ** 2).sum(axis=1).mean()  # ‖z − x‖² summed over units, averaged over the batch
    np.testing.assert_allclose(net.loss.value, loss, rtol=1e-12)
    np.testing.assert_allclose(targets[-1], z - 0.7 * 2 * (z - x) / 10, rtol=1e-12, atol=1e-15)
    assert net.loss.correct == 0


def test_target_step_of_half_the_batch_makes_the_clean_input_the_first_target():
    spec = small(*AE, "rule.target_step=5")
    net = localnet.build(spec)
    x = load_data(spec).train.x[:10]
    np.testing.assert_allclose(net.targets(x, x)[-1], x, atol=1e-12)


def test_reconstruction_trains_toward_the_clean_input_when_inputs_are_noisy(tmp_path, monkeypatch):
    spec = small(*AE, "train.epochs=1", "train.input_noise=0.5", "train.shuffle=false")
    clean = load_data(spec).train.x
    pairs = []
    original = Network.train_step

    def step(self, x, y):
        pairs.append((np.array(x), np.array(y)))
        return original(self, x, y)

    monkeypatch.setattr(Network, "train_step", step)
    summary, _ = train(spec, runs_root=tmp_path)
    for i, (x, y) in enumerate(pairs):
        np.testing.assert_array_equal(y, clean[i * 32:i * 32 + len(y)])  # the target: the clean input
        assert not np.array_equal(x, y)
    assert summary["status"] == "completed" and summary["test_accuracy"] == 0


def test_reconstruction_loss_trains_an_auto_encoder_with_dtp(tmp_path):
    first, _ = train(small(*AE, "train.epochs=1"), runs_root=tmp_path / "a")
    longer, _ = train(small(*AE, "train.epochs=6"), runs_root=tmp_path / "b")
    # the first epoch reduces the loss from its start (about 16 for sigmoid outputs near 0.5 on 64 pixels)
    assert longer["test_loss"] < first["test_loss"] < 16


def test_reconstruction_output_must_have_one_unit_per_input_feature():
    with pytest.raises(SpecError, match="64 units"):
        localnet.build(small("network.loss=reconstruction"))  # the output has 10 units; digits has 64 pixels


# -- evaluation by the mean of sampled passes --------------------------------------------------------------------
def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_eval_samples_is_the_mean_of_sampled_output_probabilities():
    spec = small("dtype=float64", "network.layers.h1.activation=stochastic_binary",
                 "network.layers.h2.activation=stochastic_binary", "train.eval_samples=7")
    net = localnet.build(spec)
    data = load_data(spec)
    x, y = data.validation.x[:50], data.validation.y[:50]
    p = net.parameters()
    gens = {name: np.random.Generator(np.random.PCG64()) for name in ("h1", "h2")}
    for name, g in gens.items():
        g.bit_generator.state = net.layers[name].rng.bit_generator.state
    mean = np.zeros((50, 10))
    for _ in range(7):
        h1 = (gens["h1"].random((50, 16)) < _sigmoid(x @ p["h1"]["W"] + p["h1"]["b"])).astype(float)
        h2 = (gens["h2"].random((50, 16)) < _sigmoid(h1 @ p["h2"]["W"] + p["h2"]["b"])).astype(float)
        logits = h2 @ p["out"]["W"] + p["out"]["b"]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        mean += e / e.sum(axis=1, keepdims=True) / 7
    result = net.evaluate(x, y, batch_size=50)
    np.testing.assert_allclose(result["loss"], -np.log(mean[np.arange(50), y]).mean(), rtol=1e-12)
    assert result["accuracy"] == (mean.argmax(axis=1) == y).mean()


# -- the shipped experiment specs --------------------------------------------------------------------------------
EXPERIMENTS = sorted(p.name for p in (ROOT / "specs").glob("*.yaml")
                     if p.name.startswith(("mnist-", "cifar10-", "fashion-mnist-7x240", "fashion-mnist-3x1000",
                                           "fashion-mnist-discrete", "fashion-mnist-stochastic", "fashion-mnist-dae",
                                           "fashion-mnist-deep-ae", "fashion-mnist-lenet", "fashion-mnist-skip",
                                           "fashion-mnist-simple-vgg")))


def test_every_experiment_of_the_brief_has_a_spec():
    assert {"mnist-7x240-dtp.yaml", "mnist-7x240-bp.yaml", "mnist-discrete-dtp.yaml", "mnist-discrete-bp.yaml",
            "mnist-stochastic-dtp.yaml", "mnist-dae-dtp.yaml", "cifar10-3x1000-dtp.yaml", "cifar10-3x1000-bp.yaml",
            "fashion-mnist-discrete-dtp.yaml", "fashion-mnist-discrete-bp.yaml", "fashion-mnist-7x240-dtp.yaml",
            "fashion-mnist-stochastic-dtp.yaml", "fashion-mnist-dae-dtp.yaml", "fashion-mnist-3x1000-dtp.yaml",
            "fashion-mnist-3x1000-bp.yaml", "fashion-mnist-deep-ae-tp.yaml"} <= set(EXPERIMENTS)


# each of Lee et al.'s nets on Fashion-MNIST, and what it may change from the paper's spec: the data set, the number
# of epochs, and (CIFAR-10's net only) the split and pixel scaling that the other Fashion-MNIST twins use
TWINS = {f"fashion-mnist-{net}.yaml": (f"{paper}-{net}.yaml", {"name": "fashion-mnist"})
         for paper, nets in (("mnist", ("7x240-dtp", "7x240-bp", "discrete-dtp", "discrete-bp", "stochastic-dtp",
                                        "dae-dtp")), ("cifar10", ("3x1000-dtp", "3x1000-bp")))
         for net in nets}
for twin in ("fashion-mnist-3x1000-dtp.yaml", "fashion-mnist-3x1000-bp.yaml"):
    TWINS[twin][1].update(validation=10000, scale="unit")


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_the_fashion_mnist_twins_change_only_the_data_and_the_epochs(twin):
    paper, data = TWINS[twin]
    theirs = dataclasses.asdict(localnet.load_spec(ROOT / "specs" / paper))
    ours = dataclasses.asdict(localnet.load_spec(ROOT / "specs" / twin))
    assert ours["name"] == twin.removesuffix(".yaml") and ours["train"]["epochs"] == 20
    assert ours["data"] == {**theirs["data"], **data}
    for key in set(theirs) - {"name", "data", "train"}:
        assert ours[key] == theirs[key], key
    assert {k: v for k, v in ours["train"].items() if k != "epochs"} == \
        {k: v for k, v in theirs["train"].items() if k != "epochs"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_specs_validate_and_build(name):
    spec = localnet.load_spec(ROOT / "specs" / name, ["backend=numpy"])
    n_classes = dataset_shape(spec.data.name)[1]  # the data set's known shape: no data needed
    graph = build_graph(spec, sample_shape(spec.data.name), n_classes)  # every build-time check, no weights drawn
    assert graph.layers == tuple(layer.name for layer in spec.network.layers)


LEE = {"mnist-7x240-dtp.yaml": (0.32774, 0.014889, 0.0050115, 0.35983, 0),
       "mnist-discrete-dtp.yaml": (27.965, 6.60e-4, 4.33e-4, 0.5, 50),
       "mnist-stochastic-dtp.yaml": (58.44, 3.09e-3, 2.7e-6, 0.5, 100)}


@pytest.mark.parametrize("name", sorted(LEE))
def test_lee_specs_carry_the_settings_of_their_code(name):
    spec = localnet.load_spec(ROOT / "specs" / name)
    step, lr, fb_lr, sigma, decay = LEE[name]
    assert (spec.rule.target_step, spec.optimizer.forward.lr, spec.optimizer.feedback.lr, spec.rule.feedback_noise,
            spec.rule.feedback_noise_decay) == (step, lr, fb_lr, sigma, decay)
    assert spec.rule.first_target == "last_hidden" and spec.rule.schedule == "alternate_epoch"
    for opt in (spec.optimizer.forward, spec.optimizer.feedback):
        assert (opt.type, opt.centered, opt.momentum, opt.alpha, opt.eps) == ("rmsprop", True, 0.9, 0.95, 0.001)
    assert spec.network.init == "orthogonal" and spec.train.batch_size == 100


# Ernoult et al.'s simple VGG: their command line (per block c2 c3 c4 c5 fc: iterations, σ, feedback lr)
ERNOULT = {"c2": (20, 0.4, 1e-4), "c3": (30, 0.4, 3.5e-4), "c4": (35, 0.2, 8e-3), "c5": (55, 0.2, 8e-3),
           "fc": (20, 0.08, 0.18)}


@pytest.mark.parametrize("name", ["cifar10-simple-vgg-ldrl.yaml", "fashion-mnist-simple-vgg-ldrl.yaml",
                                  "cifar10-simple-vgg-bp.yaml", "fashion-mnist-simple-vgg-bp.yaml"])
def test_the_simple_vgg_specs_carry_the_settings_of_their_code(name):
    spec = localnet.load_spec(ROOT / "specs" / name)
    layers = {layer.name: layer for layer in spec.network.layers}
    assert [layers[f"c{i}"].channels for i in range(1, 6)] == [128, 128, 256, 256, 512]
    assert all((layers[f"c{i}"].kernel, layers[f"c{i}"].pool, layers[f"c{i}"].activation) == (3, "max", "elu")
               for i in range(1, 6))
    f = spec.optimizer.forward
    assert (f.type, f.momentum, f.schedule, f.schedule_epochs, spec.train.epochs, spec.train.batch_size) == \
        ("sgd", 0.9, "cosine", 85, 90, 128)
    if name.endswith("-bp.yaml"):
        assert (f.lr, f.weight_decay, f.min_lr) == (3e-4, 1e-4, 1e-5)
        return
    # their ½‖h − ĥ‖² layer loss against localnet's ‖h − ĥ‖²: lr, weight decay and η_min halved or doubled
    assert (f.lr, f.weight_decay, f.min_lr, spec.rule.target_step) == (0.08 / 2, 1e-4 * 2, 1e-5 / 2, 0.7 * 128)
    assert (spec.rule.name, spec.rule.schedule) == ("ldrl", "feedback_first") and layers["c1"].feedback is None
    for name, (iterations, noise, lr) in ERNOULT.items():
        fb = layers[name].feedback
        assert (fb.iterations, fb.noise, fb.optimizer.type, fb.optimizer.lr, fb.optimizer.momentum) == \
            (iterations, noise, "sgd", lr, 0.9)


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.startswith(("mnist-", "cifar10-"))])
def test_without_their_files_mnist_and_cifar_specs_fail_with_the_data_error(name, tmp_path, monkeypatch):
    spec = localnet.load_spec(ROOT / "specs" / name)
    if Path(f"/usr/share/datasets/{spec.data.name}").is_dir():
        pytest.skip(f"{spec.data.name} is installed on this machine")
    monkeypatch.setenv("LOCALNET_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOCALNET_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match=f"data set {spec.data.name!r} not found"):
        train(spec, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.fixture(scope="module")
def their_files(tmp_path_factory):
    """$LOCALNET_DATA with made-up MNIST and CIFAR-10 files in the official layouts: each spec's validation split
    and two batches of training images, and a small test set (the specs' runs need nothing more)."""
    root, rng = tmp_path_factory.mktemp("data"), np.random.default_rng(0)
    mnist = root / "mnist"
    mnist.mkdir()
    for split, n in (("train", 10200), ("t10k", 100)):
        write_idx(mnist / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(mnist / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    fashion = root / "fashion-mnist"  # for the LeNet specs: their 5k validation split and one batch to train on
    fashion.mkdir()
    for split, n in (("train", 5128), ("t10k", 100)):
        write_idx(fashion / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(fashion / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    cifar = root / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 1040) for i in range(1, 6)] + [("test_batch", 100)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=4))  # as re-pickled by Python 3 (test_data: both)
    return root


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.startswith(("mnist-", "cifar10-", "fashion-mnist-lenet",
                                                                          "fashion-mnist-skip"))
                                  and "simple-vgg" not in n])
def test_with_their_files_mnist_and_cifar_specs_run(name, their_files, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALNET_DATA", str(their_files))
    monkeypatch.setenv("LOCALNET_NO_DOWNLOAD", "1")
    spec = localnet.load_spec(ROOT / "specs" / name, ["train.epochs=1"])
    summary, run = train(spec, runs_root=tmp_path)
    assert summary["status"] == "completed"
    records = [r for r in RunDir(run.path).metrics() if r.get("kind") != "diagnostics"]
    assert [r["epoch"] for r in records] == [1]
    assert np.isfinite(records[0]["train_loss"]) and np.isfinite(summary["test_loss"])


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """$LOCALNET_DATA with a few made-up CIFAR-10 and Fashion-MNIST images in the official layouts: the simple VGG
    (its L-DRL step is ~6 GMAC per sample) trains one batch of 8 in a few seconds."""
    root, rng = tmp_path_factory.mktemp("tiny"), np.random.default_rng(1)
    cifar = root / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 4)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=4))
    fashion = root / "fashion-mnist"
    fashion.mkdir()
    for split, n in (("train", 20), ("t10k", 4)):
        write_idx(fashion / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(fashion / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return root


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if "simple-vgg" in n])
def test_the_simple_vgg_specs_run_end_to_end_on_made_up_files(name, tiny_files, tmp_path, monkeypatch):
    """As shipped but for one epoch and a validation split of 12 images (the files hold 20): one batch of 8."""
    monkeypatch.setenv("LOCALNET_DATA", str(tiny_files))
    monkeypatch.setenv("LOCALNET_NO_DOWNLOAD", "1")
    spec = localnet.load_spec(ROOT / "specs" / name, ["train.epochs=1", "data.validation=12"])
    summary, run = train(spec, runs_root=tmp_path)
    assert summary["status"] == "completed"
    (record,) = [r for r in RunDir(run.path).metrics() if r.get("kind") != "diagnostics"]
    assert np.isfinite(record["train_loss"]) and np.isfinite(summary["test_loss"])


def test_diagnostics_of_an_auto_encoder_measure_against_the_clean_input(tmp_path):
    # backprop's gradient for the output layer is the local update's direction when its target is one step
    # down ℒ's gradient: angle 0 only if the probe's ℒ is the reconstruction of the input
    summary, run = train(small(*AE, "train.epochs=1", "diagnostics.every=13"), runs_root=tmp_path)
    records = [r for r in RunDir(run.path).metrics() if r.get("kind") == "diagnostics"]
    assert len(records) == 3
    for r in records:
        assert r["layers"]["out"]["angle_bp"] < 1e-3


def test_show_prints_the_noise_schedule():
    from click.testing import CliRunner

    from localnet.cli import main
    result = CliRunner().invoke(main, ["show", str(ROOT / "specs" / "fashion-mnist-discrete-dtp.yaml")])
    assert result.exit_code == 0, result.output
    assert "σ=0.5/(1 + (epoch − 1)/50)" in result.output
