"""The spec schema: what a YAML spec may say, as frozen dataclasses with defaults and bounds.

Conventions fixed here and used everywhere: batches first; a dense layer uses row vectors, `h_i = s(h_{i-1} @ W
+ b)` with W of shape (n_in, n_out), and a feedback map `g(h_i) = s̄(h_i @ V + c)` with V of shape (n_out, n_in);
a conv2d layer is NCHW with W and V of shape (C_out, C_in, kh, kw) (DESIGN §8, localnet/layers/conv.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plugins import MODULE_NAME
from . import names
from .validate import option

MAX_UNITS = 1 << 20


def _datasets():
    from ..data import DATASETS
    return DATASETS  # per layer; larger is a typo, and would try to allocate terabytes


def _families():
    from ..layers.base import family_names
    return family_names()  # dense, conv2d, flatten and any registered with localnet.layers.register_family


def _rules():
    from ..rules import RULES
    return tuple(RULES)  # the built-in rules and any registered with localnet.rules.register_rule


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser. RMSprop adds eps inside the square root (Graves 2013, Lee et al.'s code); Adam outside.

    schedule: `constant`, or `cosine`: in epoch e (from 1) the learning rate is
    min_lr + (lr − min_lr)(1 + cos(π (e − 1)/T))/2 with T = schedule_epochs (default: train.epochs), PyTorch's
    CosineAnnealingLR stepped once per epoch (periodic past T, as PyTorch's is)."""

    type: str = option("adam", choices=("sgd", "rmsprop", "adam"))
    lr: float = option(1e-3, gt=0.0)
    momentum: float = option(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = option((0.9, 0.999), ge=0.0, le=1.0)
    alpha: float = option(0.99, ge=0.0, le=1.0)
    eps: float = option(1e-8, gt=0.0)
    centered: bool = False
    weight_decay: float = option(0.0, ge=0.0)
    schedule: str = option("constant", choices=("constant", "cosine"))
    schedule_epochs: int | None = option(None, ge=1, le=1_000_000)
    min_lr: float = option(0.0, ge=0.0)


@dataclass(frozen=True)
class OptimizersSpec:
    """Default optimiser of each pathway; a layer may override either."""

    forward: OptimizerSpec = option(factory=OptimizerSpec)
    feedback: OptimizerSpec = option(factory=OptimizerSpec)


@dataclass(frozen=True)
class FeedbackSpec:
    """A layer's feedback (inverse) map g, from its output space back to its input space."""

    activation: str = option("tanh", choices=names.ACTIVATIONS)
    init: str = option("xavier_normal", choices=names.INITS)
    bias: bool = True
    optimizer: OptimizerSpec | None = None
    # this map's own rule.feedback_noise and rule.feedback_iterations (Ernoult et al. set both per layer)
    noise: float | None = option(None, ge=0.0)
    iterations: int | None = option(None, ge=0, le=10_000)


@dataclass(frozen=True)
class ConstraintSpec:
    """One plausibility constraint (localnet/constraints.py says what each does), e.g. `{type: noise, std: 0.1}`.

    On a channel, a layer (every channel out of it) or the network (every channel): noise (std, optional
    relative), quantize (bits, optional range), sign, drop (p), delay (steps; targets and gradients only),
    optionally for one `kind` of message. On a layer only: fixed_feedback (optional scale: V, c ~ U(±scale)),
    sign_constrained.

    noise: `std` is σ itself, or with `relative: true` a fraction of each message's RMS (σ·RMS per sample), which
    keeps its meaning as messages shrink or grow: a target crosses as its displacement ĥ − h, of the order of
    η̂ ∂ℒ/∂h, and ℒ being the batch mean, that shrinks as 1/batch size. An absolute σ over 10× the RMS of what
    crosses at the first training step is warned about, naming the channel.
    """

    type: str = option(choices=lambda: _constraint_types())
    kind: str | None = option(None, choices=("activation", "target", "gradient"))
    std: float | None = option(None, ge=0.0)
    bits: int | None = option(None, ge=2, le=24)
    range: float | None = option(None, gt=0.0)
    p: float | None = option(None, ge=0.0, le=1.0)
    steps: int | None = option(None, ge=1, le=1000)
    scale: float | None = option(None, gt=0.0)
    relative: bool | None = None  # `noise`: std is a fraction of each sample's RMS (σ·RMS)


def _constraint_types():
    from ..constraints import CONSTRAINT_TYPES
    return CONSTRAINT_TYPES


# A layer's name is also a file name (its checkpoint file) and a step of a `--set` key path: nothing else fits both.
LAYER_NAME = (r"[A-Za-z_][A-Za-z0-9_-]{0,63}",
              "a letter or _, then up to 63 letters, digits, _ or - (it names the layer's checkpoint file)")


@dataclass(frozen=True)
class LayerSpec:
    """One layer. `type` names its family: `dense` (`size` units), `conv2d` (a block: `channels` output channels,
    a `kernel`×`kernel` convolution with `stride` and zero `padding`, the activation, then an optional `pool`
    (`max` or `avg`) of `pool_size`×`pool_size` windows at stride `pool_size`), `flatten` (C×H×W to one
    vector; no parameters) or `add` (the sum of its inputs: an identity skip; no parameters).

    `inputs`: the nodes whose activations the layer takes (`input` or earlier layers), in order; by default the
    layer listed before it (the data, for the first). A dense layer with several inputs owns one weight block per
    input; the last layer listed feeds the loss."""

    name: str = option(pattern=LAYER_NAME)
    type: str = option("dense", choices=lambda: _families())
    inputs: tuple[str, ...] | None = None
    size: int | None = option(None, ge=1, le=MAX_UNITS)
    channels: int | None = option(None, ge=1, le=1 << 14)
    kernel: int | None = option(None, ge=1, le=64)
    stride: int = option(1, ge=1, le=64)
    padding: int = option(0, ge=0, le=64)
    pool: str | None = option(None, choices=("max", "avg"))
    pool_size: int = option(2, ge=1, le=64)
    activation: str = option("tanh", choices=names.ACTIVATIONS)
    bias: bool = True
    init: str | None = option(None, choices=names.INITS)
    optimizer: OptimizerSpec | None = None
    feedback: FeedbackSpec | None = None
    constraints: tuple[ConstraintSpec, ...] = ()  # on its weights, or on every channel out of it


@dataclass(frozen=True)
class ChannelSpec:
    """One directed channel; `from`/`to` are layer names or the reserved nodes `input` and `loss`."""

    from_: str = option(alias="from")
    to: str = option()
    kind: str = option(choices=("activation", "target", "gradient", "label"))
    constraints: tuple[ConstraintSpec, ...] = ()


@dataclass(frozen=True)
class NetworkSpec:
    layers: tuple[LayerSpec, ...]
    loss: str = option("softmax_cross_entropy", choices=names.LOSSES)
    init: str = option("xavier_normal", choices=names.INITS)
    feedback: FeedbackSpec = option(factory=FeedbackSpec)
    chain: tuple[str, ...] | None = None
    channels: tuple[ChannelSpec, ...] | None = None
    constraints: tuple[ConstraintSpec, ...] = ()  # on every channel (of `kind`, when given)


@dataclass(frozen=True)
class RuleSpec:
    """The learning rule and its parameters (DESIGN §2).

    first_target: `output` sets ĥ_L = h_L − η̂ ∂ℒ/∂h_L and every layer from the second up owns a feedback map;
    `last_hidden` (Lee et al. 2015) trains the output layer on ℒ and sets the first target on h_{L-1}.
    schedule: `alternate_batch` trains feedback and forward weights on each batch (targets through g as it was,
    then feedback training, then the forward update: Lee et al.'s Algorithm 1); `alternate_epoch` (Lee et al.'s
    code) makes one full pass of feedback training, then one of forward training, per epoch; `feedback_first`
    trains the feedback maps on each batch first and then sends the targets through the new g (Ernoult et al.'s
    code: two forward passes per batch, the second with the same forward weights).
    feedback_noise_decay: τ > 0 makes σ decay with the epoch e (from 1) as σ / (1 + (e − 1)/τ), Lee et al.'s
    schedule for their discrete and stochastic nets (0.5/(1+epoch/50), their epoch counting from 0); 0: constant.
    """

    name: str = option("dtp", choices=lambda: _rules())
    target_step: float = option(0.1, ge=0.0)
    first_target: str = option("output", choices=("output", "last_hidden"))
    feedback_noise: float = option(0.1, ge=0.0)
    feedback_iterations: int = option(1, ge=0, le=10_000)
    schedule: str = option("alternate_batch", choices=("alternate_batch", "alternate_epoch", "feedback_first"))
    feedback_noise_decay: float = option(0.0, ge=0.0)


@dataclass(frozen=True)
class DataSpec:
    """The data: a bundled or published set by `name` (digits, mnist, fashion-mnist, kmnist, cifar10), or your own.

    `arrays`: an .npz file, `path`, holding x_train and y_train and optionally x_test and y_test (np.savez): samples
    (N, ...) of any shape, (N, C, H, W) or (N, H, W) images (one channel) or (N, D) vectors; labels (N,) integers
    0..K-1, K the largest label + 1 unless `classes` says. `idx`: IDX files (MNIST's format, gzipped or not),
    `images` and `labels`, optionally `test_images` and `test_labels`, relative to the folder `path` if given.
    Relative paths are relative to the working directory; a run records them absolute (its spec.yaml), so a resume
    or an eval started elsewhere reads the same files. The network's input shape and K come from the files.
    validation: samples held out of the training set: the last ones for mnist, fashion-mnist, kmnist and cifar10
    (the papers' convention); for digits and your own data a stratified draw (each class in proportion) shuffled
    by the spec's `seed`. test: for data without a test split (digits; your own without test files): that many
    samples (default 20 %), a stratified draw with a fixed seed, the same in every run. scale: `unit` divides by
    the largest possible value (digits 16, the published sets 255, your own data the largest magnitude in its
    training samples), `standard` standardises each feature by the training split's mean and std, `none`.
    """

    # digits (bundled), mnist, fashion-mnist, kmnist, cifar10 (found on disk or downloaded), or your own: arrays, idx
    name: str = option(choices=lambda: _datasets())
    # built-in sets: a folder looked in first; `arrays`: the .npz file; `idx`: the folder of its files
    path: str | None = None
    # samples held out of training: the last ones of mnist, fashion-mnist, kmnist and cifar10, else a stratified
    # draw shuffled by the seed
    validation: int = option(0, ge=0)
    test: int | None = option(None, ge=1)  # data without a test split: that many (default 20 %), stratified, fixed
    # unit: by the largest possible value; standard: by the training split's per-feature mean and std; none: as read
    scale: str = option("unit", choices=("unit", "standard", "none"))
    download: bool = True  # the published sets: fetch them when they are nowhere on disk
    images: str | None = None  # `idx`: the training images' file
    labels: str | None = None  # `idx`: the training labels' file
    test_images: str | None = None  # `idx`, optional, with test_labels: the test split's images
    test_labels: str | None = None  # `idx`, optional, with test_images: the test split's labels
    # `arrays`, `idx`: the number of classes, if not the largest label + 1
    classes: int | None = option(None, ge=1, le=MAX_UNITS)


@dataclass(frozen=True)
class TrainSpec:
    """input_noise: σ of Gaussian noise added to each training batch's inputs (not to evaluation's, nor to a
    reconstruction loss's target, which stays the clean input): Lee et al.'s stochastic net and denoising
    auto-encoder. eval_samples: evaluate a network with stochastic units by the mean of this many sampled output
    passes (Lee et al.: 100); 0 uses the units' mean activations in one pass."""

    epochs: int = option(10, ge=0, le=1_000_000)
    batch_size: int = option(128, ge=1, le=1 << 20)
    shuffle: bool = True
    eval_batch_size: int = option(1000, ge=1, le=1 << 20)
    checkpoint_every: int = option(1, ge=0, le=1_000_000)  # epochs; 0: only at the end and when interrupted
    input_noise: float = option(0.0, ge=0.0)
    eval_samples: int = option(0, ge=0, le=10_000)
    pipeline: bool = False  # MPI engine: targets that cross ranks arrive one step late, so ranks overlap (docs/mpi.md)
    # Meulemans et al.'s `epochs_fb`: full passes that train only the feedback maps before training starts (a
    # learned feedback path from the first forward step), numbered 1 − N … 0 in metrics.jsonl
    feedback_pretrain_epochs: int = option(0, ge=0, le=1000)
    # their `extra_fb_epochs`: full feedback-only passes after each epoch's training pass
    extra_feedback_epochs: int = option(0, ge=0, le=1000)


@dataclass(frozen=True)
class DiagnosticsSpec:
    """Per-layer diagnostics (angle with backprop's gradient, distance to target, reconstruction error, norms),
    logged to metrics.jsonl every `every` learning batches by a non-local probe; 0: off, at no cost."""

    every: int = option(0, ge=0, le=1_000_000_000)


# A spec's name is printed by `run`, `show` and `report`: no control or format character (an escape sequence would
# reach the terminal, a line break split a line, a bidirectional override reverse what follows).
SPEC_NAME = ("[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+",
             "printable text (no control characters such as escape sequences or line breaks)")


@dataclass(frozen=True)
class Spec:
    name: str = option(pattern=SPEC_NAME)
    data: DataSpec
    network: NetworkSpec
    rule: RuleSpec = option(factory=RuleSpec)
    optimizer: OptimizersSpec = option(factory=OptimizersSpec)
    train: TrainSpec = option(factory=TrainSpec)
    diagnostics: DiagnosticsSpec = option(factory=DiagnosticsSpec)
    seed: int = option(0, ge=0, le=2**63 - 1)
    dtype: str = option("float32", choices=("float32", "float64"))
    backend: str = option("auto", choices=names.BACKENDS)
    description: str | None = None
    placement: tuple[tuple[str, ...], ...] | None = None  # MPI: rank 0's layers, rank 1's, ... (docs/mpi.md)
    # modules imported before the rest is checked, so the spec may name the rules they register (docs/plugins.md)
    plugins: tuple[str, ...] = option((), pattern=MODULE_NAME)
