"""`localnet plot RUN_DIR...`: learning curves and per-layer diagnostics of one or more runs, overlaid, to a PNG.

matplotlib is an optional extra (`pip install 'localnet[plot]'`); it is imported only when the command runs, and
drawn with the Agg canvas directly (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import functools
import io
import sys
import textwrap
from pathlib import Path

import click

from .errors import LocalnetError, printable
from .plugins import load as load_plugins, option as plugin_option

INSTALL_HINT = "pip install 'localnet[plot]'"
CURVES = (("loss", "loss"), ("accuracy", "accuracy"))


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LocalnetError(f"localnet plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


class RunCurves:
    """What one run directory logged: its label, epoch records and diagnostics records."""

    def __init__(self, path):
        from .report import described, environment_of
        from .runs import RunDir
        from .spec.names import INPUT_TARGET_LOSSES
        run = RunDir(path)
        run.check()
        spec = run.spec()
        records, self.skipped = run.read_metrics()
        self.warning = run.metrics_warning(self.skipped)
        self.name, self.id = described(spec.name, environment_of(run)), run.path.name.rsplit("-", 1)[-1]
        self.label = f"{spec.name} ({run.path.name})"
        self.reconstructs = spec.network.loss in INPUT_TARGET_LOSSES  # an auto-encoder: a loss, no accuracy
        self.epochs = [r for r in records if r.get("kind") != "diagnostics" and isinstance(r.get("epoch"), int)]
        self.diagnostics = [r for r in records if r.get("kind") == "diagnostics"
                            and isinstance(r.get("layers"), dict)]

    def series(self, key):
        """(epochs, values) of an epoch record's key, where it is a number; an auto-encoder's accuracy is none."""
        if self.reconstructs and key.endswith("_accuracy"):
            return [], []
        points = [(r["epoch"], r[key]) for r in self.epochs if isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    def layers(self):
        names = {}
        for r in self.diagnostics:
            names.update(dict.fromkeys(r["layers"]))
        return list(names)

    def layer_series(self, layer, metric):
        """(position in epochs, values) of one layer's diagnostics field; a null (no direction) is left out."""
        xs, ys = [], []
        for r in self.diagnostics:
            fields = r["layers"].get(layer)
            value = fields.get(metric) if isinstance(fields, dict) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            epoch, batch, batches = r.get("epoch"), r.get("batch"), r.get("batches")
            if all(isinstance(v, int) for v in (epoch, batch, batches)) and batches > 0:
                xs.append(epoch - 1 + batch / batches)
            elif isinstance(r.get("step"), int):
                xs.append(r["step"])
            else:
                continue
            ys.append(float(value))
        return xs, ys


def _smooth(values, width):
    """A centred moving average (shorter windows at the ends), for noisy per-batch curves."""
    if width <= 1 or len(values) < 3:
        return list(values)
    half = width // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half): i + half + 1]
        out.append(sum(window) / len(window))
    return out


WIDTH, PER_ROW, TITLE_SIZE = 13, 3, 10  # inches; layer panels per row; points


def _fit(text, inches, size=TITLE_SIZE):
    """`text` folded onto at most two lines of a panel `inches` wide (cut with … beyond), so that a long metric
    or layer name cannot run into the next panel; about 0.6 em a character, which errs on the wide side."""
    chars = max(8, int(inches * 72 / (0.6 * size)))
    lines = textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=False)
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), chars, placeholder=" …")]
    return "\n".join(lines)


def _nothing(ax, why, inches):
    """A panel with nothing to draw says so, rather than showing empty axes that read as a broken plot."""
    ax.text(0.5, 0.5, f"n/a\n{_fit(why, inches)}", transform=ax.transAxes, ha="center", va="center", color="0.45",
            fontsize=TITLE_SIZE)
    ax.set_xticks([])
    ax.set_yticks([])


def figure(runs, metric="angle_bp"):
    """The runs' curves on one matplotlib Figure (Agg canvas attached): the epoch curves, then a panel per layer
    of the per-layer diagnostic `metric`."""
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import MaxNLocator
    layers = []
    for run in runs:
        layers += [name for name in run.layers() if name not in layers]
    rows = 1 + -(-len(layers) // PER_ROW)
    fig = Figure(figsize=(WIDTH, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 2 * PER_ROW)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    inches = {span: WIDTH * span / (2 * PER_ROW) - 0.7 for span in (2, PER_ROW)}  # a panel, less its margins

    for column, (key, title) in enumerate(CURVES):
        ax = fig.add_subplot(grid[0, column * PER_ROW:(column + 1) * PER_ROW])
        for run, color in zip(runs, colors):
            for split, style in (("train", "-"), ("val", "--")):
                xs, ys = run.series(f"{split}_{key}")
                if xs:
                    ax.plot(xs, ys, style, color=color, marker="." if len(xs) < 30 else None)
        ax.set_title(_fit(f"{title} (solid: train, dashed: validation)", inches[PER_ROW]), fontsize=TITLE_SIZE)
        if not ax.lines:
            _nothing(ax, "an auto-encoder has no accuracy" if key == "accuracy" and all(r.reconstructs for r in runs)
                     else "no epoch logged yet", inches[PER_ROW])
            continue
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if key == "accuracy":
            ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")

    for i, layer in enumerate(layers):
        row, col = 1 + i // PER_ROW, i % PER_ROW
        ax = fig.add_subplot(grid[row, 2 * col:2 * col + 2])
        for run, color in zip(runs, colors):
            xs, ys = run.layer_series(layer, metric)
            if not xs:
                continue
            if len(xs) >= 30:
                ax.plot(xs, ys, "-", color=color, alpha=0.25, linewidth=0.7)
                ax.plot(xs, _smooth(ys, max(3, len(xs) // 25)), "-", color=color, linewidth=1.6)
            else:
                ax.plot(xs, ys, "-", color=color, marker=".")
        ax.set_title(_fit(f"layer {layer}: {_METRIC_TITLES.get(metric, metric)}", inches[2]), fontsize=TITLE_SIZE)
        if not ax.lines:
            _nothing(ax, f"layer {layer} logged no {metric}", inches[2])
            continue
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if metric == "angle_bp":  # at least 0-5°: float32 noise around 0° should read as 0°, not as a trend
            ax.set_ylabel("degrees")
            top = max((max(run.layer_series(layer, metric)[1], default=0.0) for run in runs), default=0.0)
            ax.set_ylim(0, max(5.0, min(180.0, 1.05 * top)))

    handles = [fig.axes[0].plot([], [], "-", color=color)[0] for color in colors]
    names = [run.name for run in runs]  # the spec's name and overrides; the run's id only where two runs share them
    labels = [f"{run.name} ({run.id})" if names.count(run.name) > 1 else run.name for run in runs]
    ncols = min(len(runs), 4)
    fig.legend(handles, [_fit(label, WIDTH / ncols - 0.8, 9) for label in labels], loc="outside upper center",
               ncols=ncols, fontsize=9, frameon=False)
    return fig


def draw(runs, out, metric="angle_bp"):
    """Draw the runs' curves into `out` (a PNG); returns the path."""
    fig = figure(runs, metric)
    from .runs import output_file, write_bytes
    out = output_file(out)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    write_bytes(out, png.getvalue())  # atomically, and a full or read-only disk is one line
    return out


_METRIC_TITLES = {
    "angle_bp": "angle with backprop's gradient",
    "distance_to_target": "distance to target ‖h − ĥ‖",
    "target_norm": "target norm ‖ĥ‖",
    "activation_norm": "activation norm ‖h‖",
    "reconstruction_loss": "feedback reconstruction loss (noisy)",
    "reconstruction_error": "feedback reconstruction error ‖g(h_i) − h_{i-1}‖²",
    "update_norm": "norm of the local gradient",
    "bp_norm": "norm of backprop's gradient",
    "jfjg_positive": "fraction of eigenvalues of J_f J_g with positive real part",
    "jfjg_trace": "trace of J_f J_g",
}


def _fail_cleanly(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LocalnetError as exc:
            click.echo(f"error: {printable(exc)}", err=True)
            sys.exit(1)
    return wrapper


@click.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="The PNG to write [default: RUN_DIR/curves.png for one run, curves.png for several].")
@click.option("--metric", default="angle_bp", show_default=True, type=click.Choice(list(_METRIC_TITLES)),
              help="Which per-layer diagnostic to draw (runs with `diagnostics: {every: N}` in their spec).")
@plugin_option
@_fail_cleanly
def plot(run_dirs, out, metric, plugins=()):
    """Draw learning curves (train and validation loss and accuracy per epoch) and, where diagnostics were logged,
    each layer's angle with backprop's gradient, for one or more runs overlaid, to a PNG (needs matplotlib:
    pip install 'localnet[plot]')."""
    _matplotlib()  # fail before reading anything
    load_plugins(plugins)
    if out is not None:
        from .runs import output_file
        output_file(out)
    runs = [RunCurves(path) for path in run_dirs]
    for run in runs:
        if run.warning:
            click.echo(f"warning: {printable(run.warning)}", err=True)
    if not any(run.epochs or run.diagnostics for run in runs):
        raise LocalnetError("nothing to plot: no run has logged an epoch or a diagnostics record yet")
    if out is None:
        from .runs import own
        out = own(Path(run_dirs[0]) / "curves.png") if len(run_dirs) == 1 else Path("curves.png")
    path = draw(runs, out, metric)
    missing = [run.label for run in runs if not run.diagnostics]
    if missing and len(missing) < len(runs):
        click.echo(f"note: no diagnostics logged by {printable(', '.join(missing))}", err=True)
    click.echo(f"wrote {printable(path)}")
