"""The `localnet` command: run, show and eval specs and runs; every expected failure is one line, no traceback."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings

import click
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import Interrupted, LocalnetError, LocalnetWarning, SpecError, printable
from .plugins import load as load_plugins, option as plugin_option


class _Console(Console):
    """rich's Console, 160 columns wide where rich would fall back to 80 (written to a file or a pipe, no terminal
    anywhere, $COLUMNS unset): such output is kept (`localnet bench > bench.txt`), and folded tables are unreadable.
    Decided at each print, as rich decides, so $COLUMNS set later still counts."""

    @property
    def size(self):
        size = Console.size.fget(self)
        if size.width == 80 and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(160, size.height)
        return size

    @size.setter
    def size(self, new_size):
        Console.size.fset(self, new_size)


def make_console(stderr=False):
    return _Console(stderr=stderr, highlight=False)


console = make_console()
err = make_console(stderr=True)


def shown(text) -> str:
    """Text from a file or an argument, ready for rich: no markup (`escape`), nothing a terminal acts on
    (`printable`: an escape sequence in a run's name or status stays visible text, on one line)."""
    return escape(printable(text))


def _fail_cleanly(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SpecError as exc:
            err.print(f"[bold red]spec error:[/] {shown(exc)}", markup=True, soft_wrap=True)
            sys.exit(2)
        except Interrupted as exc:
            err.print(f"[bold yellow]interrupted:[/] {shown(exc)}", markup=True, soft_wrap=True)
            sys.exit(130)
        except LocalnetError as exc:
            err.print(f"[bold red]error:[/] {shown(exc)}", markup=True, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
    return wrapper


def _load(spec_path, overrides, backend=None, plugins=()):
    from .spec import load_spec
    overrides = list(overrides) + ([f"backend={backend}"] if backend else [])
    return load_spec(spec_path, overrides, plugins)


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                          help="Override a spec value, e.g. --set train.epochs=3 --set network.layers.h1.size=64.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="localnet")
@click.option("--threads", type=click.IntRange(min=1), envvar="LOCALNET_THREADS", show_envvar=True,
              help="Cores to use [default: every core]; the local engine lays its work out on them.")
def main(threads=None):
    """Neural networks that learn with layer-local rules."""
    if threads is not None:
        from .threads import configure
        configure(threads)


@main.command()
@click.argument("spec_path", metavar="[SPEC]", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--backend", help="Override the spec's backend.")
@click.option("--runs-dir", default=lambda: os.environ.get("LOCALNET_RUNS", "runs"), show_default="runs",
              help="Where run directories are created (or $LOCALNET_RUNS).")
@click.option("--resume", "resume_dir", metavar="RUN_DIR", type=click.Path(file_okay=False),
              help="Continue RUN_DIR from its last checkpoint, with its own spec (no SPEC, --set or --backend).")
@click.option("--engine", type=click.Choice(["local", "mpi"]), default="local", show_default=True,
              help="mpi: layers on MPI ranks, under `mpiexec -n K localnet run SPEC --engine mpi`.")
@click.option("--placement", metavar="LAYER=RANK,...",
              help="With --engine mpi: the rank of every layer (default: contiguous, balanced by parameters).")
@click.option("--allow-other-data", is_flag=True,
              help="With --resume: train on the data found now even where it is not the data the run trained on "
                   "(its files or splits changed), which is refused otherwise; warns, and records the new data.")
@plugin_option
@_fail_cleanly
def run(spec_path, overrides, backend, runs_dir, resume_dir, engine="local", placement=None, allow_other_data=False,
        plugins=()):
    """Train the network SPEC describes and write a run directory, or continue one with --resume RUN_DIR.

    SIGINT (Ctrl-C) or SIGTERM finishes the current batch, writes a checkpoint and exits with status 130; a second
    one aborts at once, keeping the previous checkpoint.
    """
    from .training import resume, stop_on_signals, train
    if placement is not None and engine != "mpi":
        raise click.UsageError("--placement places layers on MPI ranks; it needs --engine mpi")
    if resume_dir is not None:
        if spec_path is not None or overrides or backend:
            raise click.UsageError("--resume continues a run with its own spec; give no SPEC, --set or --backend")
    elif spec_path is None:
        raise click.UsageError("give a SPEC to train, or --resume RUN_DIR")
    elif allow_other_data:
        raise click.UsageError("--allow-other-data applies to --resume RUN_DIR; a new run records the data it finds")
    if engine == "mpi":
        from .engines import mpi as mpi_engine
        if not mpi_engine.is_root():  # ranks other than 0 serve their layers; rank 0 reports
            try:
                load_plugins(plugins)
                spec = None if resume_dir else _load(spec_path, overrides, backend, plugins)
            except LocalnetError as exc:  # the same spec and plugins on every rank: rank 0 says it, once
                sys.exit(2 if isinstance(exc, SpecError) else 1)
            mpi_engine.run(spec, resume_dir=resume_dir, placement=placement)
            return
        train, resume = mpi_engine.trainer(placement)
    load_plugins(plugins)  # a run directory's spec may name the rules they register
    if resume_dir is None:
        spec = _load(spec_path, overrides, backend, plugins)  # the spec records them: a resume imports them too
        console.print(f"[bold]{shown(spec.name)}[/]: {spec.rule.name} on {spec.data.name}, "
                      f"{len(spec.network.layers)} layers, {spec.train.epochs} epochs, batch "
                      f"{spec.train.batch_size}, {spec.dtype}, seed {spec.seed}", soft_wrap=True)
    else:
        console.print(f"resuming {shown(resume_dir)}", soft_wrap=True)
    reconstructs = _reconstructs(spec if resume_dir is None else None, resume_dir)  # no accuracy to print
    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)

    def on_epoch(r):
        val = "" if "val_loss" not in r else f"  val loss {r['val_loss']:.4f}" + (
            "" if reconstructs else f"  val acc {100 * r['val_accuracy']:.2f}%")
        acc = "" if reconstructs else f"train acc {100 * r['train_accuracy']:.2f}%"
        progress.console.print(f"epoch {r['epoch']:>3}  train loss {r['train_loss']:.4f}  {acc}{val}  "
                               f"{r['seconds']:.2f}s", soft_wrap=True)
        progress.update(task, completed=0, epoch=r["epoch"] + 1)

    callbacks = dict(on_epoch=on_epoch,
                     on_batch=lambda done, total: progress.update(task, completed=done, total=total))
    with progress, stop_on_signals() as stop, _warnings_printed():
        task = progress.add_task("train", total=None, epoch=1 if resume_dir is None else "")
        if resume_dir is None:
            summary, run_dir = train(spec, runs_root=runs_dir, stop=stop, **callbacks)
        else:
            summary, run_dir = resume(resume_dir, stop=stop, on_warning=_warn, allow_other_data=allow_other_data,
                                      **callbacks)
    table = Table(title="summary", show_header=False, box=None)
    for key in ("train", "validation", "test"):
        if f"{key}_loss" in summary:
            table.add_row(f"{key} {'loss' if reconstructs else 'accuracy'}",
                          f"{summary[key + '_loss']:.4f}" if reconstructs else
                          f"{100 * summary[key + '_accuracy']:.2f}%",
                          "" if reconstructs else f"loss {summary[key + '_loss']:.4f}")
    best = summary.get("best_validation")
    if isinstance(best, dict) and "test_loss" in best:
        table.add_row(f"test, best val. epoch ({best['epoch']})",
                      f"{best['test_loss']:.4f}" if reconstructs else f"{100 * best['test_accuracy']:.2f}%",
                      "" if reconstructs else f"loss {best['test_loss']:.4f}")
    if summary.get("seconds_per_epoch") is not None:
        table.add_row("seconds / epoch", f"{summary['seconds_per_epoch']:.2f}", "(median, training only)")
    console.print(table)
    console.print(f"run directory: {shown(run_dir.path)}", soft_wrap=True)


def _reconstructs(spec, run_dir) -> bool:
    """Whether the run trains an auto-encoder (a loss whose target is the input): it has a loss, no accuracy."""
    from .spec.names import INPUT_TARGET_LOSSES
    if spec is None:
        from .runs import RunDir
        try:
            spec = RunDir(run_dir).spec()
        except LocalnetError:
            return False  # resume refuses the directory itself, with its own message
    return spec.network.loss in INPUT_TARGET_LOSSES


def _warn(message):
    err.print(f"[bold yellow]warning:[/] {shown(message)}", markup=True, soft_wrap=True)


@contextlib.contextmanager
def _warnings_printed():
    """While inside, localnet's own warnings (a channel's noise drowning its messages) print as the command's other
    warnings do, one line each; any other warning goes where it went."""
    with warnings.catch_warnings():
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, LocalnetWarning):
                _warn(str(message))
            else:
                previous(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        yield


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
@plugin_option
@_fail_cleanly
def show(spec_path, overrides, plugins=()):
    """Print the layers, channels and schedule SPEC builds, without training."""
    from .network import build
    spec = _load(spec_path, overrides, plugins=plugins)
    net = build(spec)
    g = net.graph
    layers = Table(title=f"{escape(spec.name)}: layers ({spec.rule.name}, backend {net.backend.NAME}, {spec.dtype})")
    for col in ("layer", "type", "in", "out", "activation", "feedback g", "forward opt.", "feedback opt."):
        layers.add_column(col)
    for name, layer in net.layers.items():
        row = layer.describe()
        layers.add_row(escape(name), *(escape(row[k]) or "-" for k in ("type", "input", "output", "activation",
                                                                        "feedback", "forward optimiser",
                                                                        "feedback optimiser")))
    console.print(layers)
    channels = Table(title="channels")
    for col in ("from", "to", "kind", "shape", "dtype", "constraints"):
        channels.add_column(col)
    for c in g.channels:
        channels.add_row(escape(c.sender), escape(c.receiver), c.kind, "x".join(map(str, c.shape)) or "scalar",
                         c.dtype, c.pipeline.describe() if c.pipeline is not None else "-")
    console.print(channels)
    console.print("[bold]graph[/] (activations, from the data up; `╾ a`: also takes a's output)")
    for line in graph_text(net):
        console.print(escape("  " + line))
    console.print("[bold]schedule[/]")
    console.print(escape("  forward:  " + " -> ".join(g.forward_order)))
    trained = [n for n in g.feedback_layers if not net.layers[n].feedback_fixed]
    if len(trained) < len(g.feedback_layers):
        console.print(escape("  fixed feedback (never trained): " +
                             ", ".join(n for n in g.feedback_layers if n not in trained)))
    if trained:
        console.print(escape("  feedback: " + ", ".join(trained)) +
                      f" (each alone; {spec.rule.feedback_iterations} iteration(s), σ={spec.rule.feedback_noise:g}"
                      + (f"/(1 + (epoch − 1)/{spec.rule.feedback_noise_decay:g})" if spec.rule.feedback_noise_decay
                         else "") + ")")
    console.print(escape("  backward: " + " -> ".join(n for n in g.backward_order if n != "input")))
    console.print(escape("  update:   " + ", ".join(n for n in g.layers if net.layers[n].forward_keys)))
    if spec.plugins:
        console.print(escape("plugins: " + ", ".join(spec.plugins)), soft_wrap=True)


def graph_text(net):
    """The forward graph drawn as text lines (networkx's network text): each layer with its type and output."""
    import networkx as nx
    from .graph import INPUT, LOSS
    drawn = nx.DiGraph()
    shape = "x".join(map(str, net.input_shape))
    drawn.add_node(INPUT, label=f"{INPUT} {shape}")
    for name, layer in net.layers.items():
        row = layer.describe()
        drawn.add_node(name, label=f"{name}: {row['type']} {row['output']}")
    drawn.add_node(LOSS, label=f"{LOSS} ({net.spec.network.loss})")
    drawn.add_edges_from((c.sender, c.receiver) for c in net.graph.channels if c.kind == "activation")
    lines = []
    nx.write_network_text(drawn, path=lambda line: lines.append(line.rstrip("\n")), sources=[INPUT],
                          with_labels=True)
    return lines


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True)
@click.option("--best", is_flag=True,
              help="The parameters of the epoch with the best validation score, not the last checkpoint's.")
@click.option("--unverified", is_flag=True,
              help="Read checkpoint files that record no SHA-256 (runs written before checkpoints had them), "
                   "which are refused otherwise: nothing then shows they are the files training wrote.")
@plugin_option
@_fail_cleanly
def eval_(run_dir, split, best, unverified=False, plugins=()):
    """Reload RUN_DIR's checkpoint and report its accuracy on a split."""
    from .training import evaluate_run
    load_plugins(plugins)
    result, run = evaluate_run(run_dir, split, best=best, unverified=unverified, on_warning=_warn)
    if not math.isfinite(result["loss"]):
        _warn(f"the loss is {result['loss']}: the parameters overflow on this split")
    if run.unchecked:
        _warn(f"{len(run.unchecked)} checkpoint file(s) read without a checksum (--unverified), "
              f"{run.unchecked[0]} first: nothing shows they are the files training wrote")
    losses = _reconstructs(None, run.path)  # an auto-encoder: a loss, no accuracy
    score = (f"{split} loss {result['loss']:.4f}" if losses else
             f"{split} accuracy {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}")
    console.print(f"{score}  ({shown(run.path)}{', best validation epoch' if best else ''})", soft_wrap=True)
    summary = run.summary()
    skipped = run.read_metrics()[1]
    if skipped:
        _warn(run.metrics_warning(skipped))
    if summary.get("status") != "completed":
        _warn(f"the run is {summary.get('status')}: this is its last checkpoint "
              f"(epoch {summary.get('checkpoint', {}).get('epoch', '?')}), not a finished model")
    chosen = summary.get("best_validation") if best else summary
    reported = chosen.get(f"{split}_{'loss' if losses else 'accuracy'}") if isinstance(chosen, dict) else None
    if isinstance(reported, (int, float)):
        console.print(f"training reported {reported:.4f}" if losses else f"training reported {100 * reported:.2f}%")


@main.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--table", is_flag=True, help="Print the comparison table even for one RUN_DIR.")
@click.option("--html", "html_out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write the comparison table as an HTML page.")
@click.option("--plot", "plot_out", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also draw the runs' learning curves, overlaid, to a PNG (needs matplotlib).")
@plugin_option
@_fail_cleanly
def report(run_dirs, table=False, html_out=None, plot_out=None, plugins=()):
    """With one RUN_DIR, print its status, checkpoint and per-epoch metrics (completed, interrupted or killed runs).
    With several (or --table, --html, --plot), print a Markdown table comparing them: spec, rule, data, final
    train and test error, best validation accuracy and its epoch, seconds per epoch, each layer's angle with
    backprop at the last diagnostics record."""
    load_plugins(plugins)
    if table or html_out or plot_out or len(run_dirs) > 1:
        return _compare(run_dirs, html_out, plot_out)
    from . import report as comparison
    from .runs import RunDir
    for path in run_dirs:
        run = RunDir(path)
        run.check()
        summary = run.summary()
        status = summary.get("status", "?")
        if status == "running" and not run.in_use():
            status = "stopped without a trace (killed?); resume with `localnet run --resume`"
        checkpoint = run.checkpoint_path()
        where = "none"
        if checkpoint is not None:
            trainer = run.load_trainer_state(checkpoint)
            where = ", ".join(f"{key} {trainer[key] + (key != 'epoch')}" for key in ("epoch", "pass", "batch")
                              if isinstance(trainer.get(key), int))
            where = (f"final ({checkpoint.relative_to(run.path)})" if summary.get("status") == "completed"
                     else f"resumes at {where or '?'} ({checkpoint.relative_to(run.path)})")
        console.print(f"[bold]{shown(run.path)}[/]", soft_wrap=True)
        made_from = comparison.source(comparison.environment_of(run))
        if made_from:
            console.print(f"  made from: {shown(made_from)}", soft_wrap=True)
        console.print(f"  status: {shown(status)}", soft_wrap=True)
        if summary.get("error"):
            console.print(f"  error: {shown(summary['error'])}", soft_wrap=True)
        console.print(f"  checkpoint: {shown(where)}", soft_wrap=True)
        records, skipped = run.read_metrics()
        if skipped:
            _warn(run.metrics_warning(skipped))
        diagnostics = sum(r.get("kind") == "diagnostics" for r in records)
        records = [r for r in records if r.get("kind") != "diagnostics"]  # per-batch probes: `localnet plot`
        if diagnostics:
            console.print(f"  diagnostics: {diagnostics} records (plot them with `localnet plot`)")
        table = Table(box=None)
        for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds"):
            table.add_column(col, justify="right")
        for r in records:
            def num(key, fmt):
                return fmt.format(r[key]) if isinstance(r.get(key), (int, float)) else "-"
            table.add_row(shown(r.get("epoch", "?")), num("train_loss", "{:.4f}"),
                          num("train_accuracy", "{:.2%}"), num("val_loss", "{:.4f}"), num("val_accuracy", "{:.2%}"),
                          num("seconds", "{:.2f}"))
        if records:
            console.print(table)
        for split in ("train", "validation", "test"):
            if isinstance(summary.get(f"{split}_accuracy"), (int, float)):
                console.print(f"  {split} accuracy {100 * summary[split + '_accuracy']:.2f}%")
        best = summary.get("best_validation")
        if isinstance(best, dict) and isinstance(best.get("test_accuracy"), (int, float)):
            console.print(f"  test accuracy at the best validation epoch ({best.get('epoch')}) "
                          f"{100 * best['test_accuracy']:.2f}%")


def _compare(run_dirs, html_out, plot_out):
    from . import report as comparison
    from .runs import output_file, write_text
    html_out = output_file(html_out) if html_out else None  # refused before anything is read or written
    plot_out = output_file(plot_out) if plot_out else None
    if plot_out:
        from .plot import _matplotlib
        _matplotlib()  # fail before reading anything
    rows = [comparison.row(path) for path in run_dirs]
    for r in rows:
        if r.warning:
            _warn(r.warning)
    click.echo(comparison.markdown(rows), nl=False)
    if html_out:
        write_text(html_out, comparison.html_page(rows))
        err.print(f"wrote {shown(html_out)}", soft_wrap=True)
    if plot_out:
        from .plot import RunCurves, draw
        err.print(f"wrote {shown(draw([RunCurves(p) for p in run_dirs], plot_out))}", soft_wrap=True)


from .plot import plot as _plot  # noqa: E402  (the command lives in its own module)
main.add_command(_plot)
from .bench import bench as _bench  # noqa: E402
main.add_command(_bench)
from .audit import audit_command as _audit  # noqa: E402
main.add_command(_audit)
from .sweep import sweep_command as _sweep  # noqa: E402
main.add_command(_sweep)
