"""`localnet sweep`: one spec over a grid of `--set` overrides times seeds, runs in parallel (local processes, or
MPI ranks with mpi4py.futures), each in its own run directory, with a one-line-per-run summary at the end
and, with several seeds, each combination's mean and standard deviation over them (`localnet report` compares the
runs in depth)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from pathlib import Path

import click

from .errors import Interrupted, LocalnetError, SpecError
from .plugins import option as plugin_option
from .threads import configure, cores


def split_values(text):
    """`a,b,[c,d]` -> ["a", "b", "[c,d]"]: commas inside brackets or braces belong to the value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(grid):
    """[`key=v1,v2`, ...] -> [(key, [v1, v2]), ...]; SpecError naming the bad item."""
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SpecError("a grid axis looks like key.path=v1,v2,...", file="--grid", found=repr(item))
        if key in (k for k, _ in axes):
            raise SpecError("the same key is given twice", file="--grid", found=repr(key))
        axes.append((key, split_values(values)))
    return axes


def plan(spec_path, grid, seeds, plugins=()):
    """The runs of a sweep: [(name, overrides)], every combination of the grid's values, each with `seeds`
    seeds (the spec's seed, then the next ones); each run's spec is loaded once here so a bad value fails
    before anything runs."""
    from .spec import load_spec
    if seeds < 1:
        raise LocalnetError(f"--seeds must be at least 1, got {seeds}")
    base = load_spec(spec_path, plugins=plugins)
    axes = parse_grid(grid)
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        for i in range(seeds):
            seed = base.seed + i
            overrides = [f"{key}={value}" for (key, _), value in zip(axes, values)]
            label = "-".join(f"{key.rsplit('.', 1)[-1]}{value}" for (key, _), value in zip(axes, values))
            name = "-".join(filter(None, (base.name, label, f"seed{seed}")))
            load_spec(spec_path, [*overrides, f"seed={seed}", f"name={name}"], plugins)
            runs.append((name, overrides, seed))
    return runs


_STOP = None  # in a local worker process: the StopRequest its SIGTERM sets (`_worker_start`)
_BUSY = threading.Event()  # set while a worker process runs `run_one`


def _worker_start(sweep_pid):
    """Initializer of a local worker process. SIGTERM stops its run as it stops `localnet run` (checkpointed,
    resumable) and the worker starts no other; SIGINT is ignored, as a Ctrl-C reaches the whole process group and
    the sweep passes it on as SIGTERM, once; and a thread watches the sweep, so the worker dies with it."""
    global _STOP
    from .training import StopRequest
    _STOP = StopRequest()
    signal.signal(signal.SIGTERM, lambda signum, frame: _STOP.request(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_sweep, args=(sweep_pid,), daemon=True, name="watch-sweep").start()


def _watch_sweep(sweep_pid):
    """Once the sweep is gone (even SIGKILLed: this process is re-parented), stop the run in hand as on SIGTERM
    and exit when it has, instead of waiting forever for work from a dead sweep. Polled, not Linux's
    PR_SET_PDEATHSIG: that follows the thread that started the worker, not the sweep, and Linux only."""
    while os.getppid() == sweep_pid:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    while _BUSY.is_set():
        time.sleep(0.05)
    os._exit(1)


def run_one(spec_path, overrides, seed, name, runs_root, threads=None, plugins=()):
    """Train one run of the sweep (in a worker process); its summary, or its failure, as a dict. A worker told to
    stop (`_STOP`) stops its run at the next batch boundary, checkpointed, and starts no other."""
    from .spec import load_spec
    from .training import train
    _BUSY.set()
    try:
        if _STOP:
            return {"status": "not started"}
        spec = load_spec(spec_path, [*overrides, f"seed={seed}", f"name={name}"], plugins)
        configure(threads)  # this worker process's share of the cores
        try:
            summary, run = train(spec, runs_root=runs_root, stop=_STOP)
        except Interrupted as exc:
            return {"status": "interrupted", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others go on
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return {**summary, "run_dir": str(run.path)}
    finally:
        _BUSY.clear()


def sweep(spec_path, grid, seeds, *, jobs=None, use_mpi=False, runs_dir="runs", on_done=None, plugins=()):
    """Run every combination; returns [(name, overrides, seed, result)] in plan order. `jobs` local processes
    (default: the cores), or with `use_mpi` the mpi4py.futures workers (`mpiexec -n K python -m mpi4py.futures
    -m localnet sweep ... --mpi`: K − 1 workers); each run's spec records `plugins` (--plugin) with its own.

    SIGINT or SIGTERM (called in the main thread: it sets their handlers) cancels the runs not started and passes
    SIGTERM to the local workers, whose runs stop checkpointed, as `localnet run` stops; once they have, Interrupted
    says what stopped (a second signal: KeyboardInterrupt). A worker also stops if the sweep is killed outright."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, CancelledError, wait

    from .training import stop_on_signals
    runs = plan(spec_path, grid, seeds, plugins)
    root = Path(runs_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{Path(spec_path).stem}"
    n_cores = cores()
    if use_mpi:
        from mpi4py.futures import MPIPoolExecutor
        executor = MPIPoolExecutor()
        threads = 1  # workers share their machines' cores: one BLAS thread each avoids oversubscribing them
    else:
        from concurrent.futures import ProcessPoolExecutor
        jobs = max(1, min(jobs or n_cores, len(runs)))
        executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_start, initargs=(os.getpid(),))
        threads = max(1, n_cores // jobs)
    results = {}

    def halt():
        for future in pending:
            future.cancel()  # those not yet handed to a worker; a worker told to stop starts no other
        for worker in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):  # it may have just ended
                os.kill(worker.pid, signal.SIGTERM)

    with stop_on_signals() as stop, executor:
        futures = {executor.submit(run_one, str(spec_path), overrides, seed, name, str(root), threads, plugins): name
                   for name, overrides, seed in runs}
        pending, halted = set(futures), False
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                if stop and not halted:
                    halt()
                    halted = True
                for future in done:
                    name = futures[future]
                    try:
                        results[name] = future.result()
                    except CancelledError:
                        results[name] = {"status": "not started"}
                    except Exception as exc:  # noqa: BLE001 - a worker that died: reported like a failed run
                        results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    if on_done:
                        on_done(name, results[name])
        except BaseException:  # a second signal (KeyboardInterrupt), or a failure here: no worker goes on alone
            halt()
            raise
    stopped = {status: sum(r.get("status") == status for r in results.values())
               for status in ("interrupted", "not started")}
    if stop and any(stopped.values()):
        raise Interrupted(f"stopped by {stop.name}: {stopped['interrupted']} run(s) interrupted, checkpointed "
                          f"(continue each with `localnet run --resume RUN_DIR`), {stopped['not started']} not "
                          f"started, {len(runs) - sum(stopped.values())} ended before; the runs are in {root}")
    return root, [(name, overrides, seed, results[name]) for name, overrides, seed in runs]


def over_seeds(rows):
    """Per combination of overrides (in plan order): how many of its seeds completed, and the mean and sample
    standard deviation over them of the last epoch's validation and test accuracy and of the test accuracy at the
    best validation epoch (None where no run reports it, and the s.d. where fewer than two do). One seed does not
    settle a difference of a few tenths of a point; this says how far apart the seeds are."""
    import statistics
    groups = {}
    for _, overrides, _, result in rows:
        groups.setdefault(tuple(overrides), []).append(result)
    out = []
    for overrides, results in groups.items():
        done = [r for r in results if r.get("status") == "completed"]
        values = {"validation_accuracy": [r.get("validation_accuracy") for r in done],
                  "test_accuracy": [r.get("test_accuracy") for r in done],
                  "validation_loss": [r.get("validation_loss") for r in done],
                  "test_loss": [r.get("test_loss") for r in done],
                  "best_validation_test_accuracy": [(r.get("best_validation") or {}).get("test_accuracy")
                                                    for r in done]}
        stats = {}
        for key, found in values.items():
            found = [v for v in found if isinstance(v, (int, float))]
            stats[key] = (statistics.fmean(found) if found else None,
                          statistics.stdev(found) if len(found) > 1 else None)
        out.append((list(overrides), len(done), len(results), stats))
    return out


def chosen_on_validation(combinations):
    """Of `over_seeds`' combinations whose every seed completed, the one with the best mean last-epoch validation
    score (highest accuracy; lowest loss where no run has an accuracy, as for an auto-encoder), the first of equals,
    and "accuracy" or "loss". None with fewer than two such combinations: there is nothing to choose.

    The sweep names it so that a choice of hyper-parameters is made on the validation split and the test score is
    only read off afterwards: choosing by the test column would report a number tuned on the test set."""
    complete = [c for c in combinations if c[1] == c[2]]
    for metric, pick in (("accuracy", max), ("loss", min)):
        scored = [c for c in complete if c[3][f"validation_{metric}"][0] is not None]
        if len(scored) > 1:
            return pick(scored, key=lambda c: c[3][f"validation_{metric}"][0]), metric
    return None


@click.command("sweep")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, exists=True))
@click.option("--grid", multiple=True, metavar="KEY.PATH=V1,V2,...",
              help="An axis of the grid: a --set key path and its values (repeatable; the runs are every "
                   "combination).")
@click.option("--seeds", default=1, show_default=True, help="Seeds per combination: the spec's seed and the next.")
@click.option("--jobs", type=int, default=None, help="Runs at once in local processes (default: the cores).")
@click.option("--mpi", "use_mpi", is_flag=True,
              help="Run on mpi4py.futures workers: `mpiexec -n K python -m mpi4py.futures -m localnet sweep ...`.")
@click.option("--runs-dir", default=lambda: os.environ.get("LOCALNET_RUNS", "runs"), show_default="runs",
              help="Where the sweep's directory of runs is created (or $LOCALNET_RUNS).")
@plugin_option
def sweep_command(spec_path, grid, seeds, jobs, use_mpi, runs_dir, plugins=()):
    """Train SPEC for every combination of the --grid values times --seeds seeds, in parallel; each run gets its
    own run directory under one sweep directory; prints one line per run and, with several seeds, each
    combination's mean ± s.d. over them (compare runs in depth with `localnet report`)."""
    from rich.markup import escape
    from rich.table import Table

    from .cli import _fail_cleanly, make_console
    console = make_console()

    @_fail_cleanly
    def go():
        root, rows = sweep(spec_path, grid, seeds, jobs=jobs, use_mpi=use_mpi, runs_dir=runs_dir, plugins=plugins,
                           on_done=lambda name, r: console.print(f"done {escape(name)}: {r.get('status')}"))
        table = Table(title=f"sweep: {len(rows)} runs in {escape(str(root))}")
        for col in ("run (directory: <time>-<run>-<id>)", "overrides"):
            table.add_column(col, overflow="fold")  # names and overrides wrap on a narrow terminal, never cut
        for col in ("seed", "status", "val acc", "test acc", "s / epoch"):
            table.add_column(col, no_wrap=True)
        for name, overrides, seed, r in rows:
            def pct(key, r=r):
                return f"{100 * r[key]:.2f}%" if isinstance(r.get(key), (int, float)) else "-"
            table.add_row(escape(name),
                          escape(" ".join(overrides)) or "-", str(seed), escape(str(r.get("status"))),
                          pct("validation_accuracy"), pct("test_accuracy"),
                          f"{r['seconds_per_epoch']:.2f}" if r.get("seconds_per_epoch") else "-")
        console.print(table)
        combinations = over_seeds(rows)
        if seeds > 1:
            summary = Table(title=f"over {seeds} seeds: mean ± s.d. (sample)")
            summary.add_column("overrides", overflow="fold")
            for col in ("completed", "val acc", "test acc", "test acc at best val"):
                summary.add_column(col, no_wrap=True)
            for overrides, done, total, stats in combinations:
                def spread(key, stats=stats):
                    mean, sd = stats[key]
                    if mean is None:
                        return "-"
                    return f"{100 * mean:.2f}%" if sd is None else f"{100 * mean:.2f} ± {100 * sd:.2f}%"
                short = " ".join(f"{key.rsplit('.', 1)[-1]}={value}"  # the last part of each key path
                                 for key, value in (o.split("=", 1) for o in overrides))
                summary.add_row(escape(short) or "-", f"{done} of {total}", spread("validation_accuracy"),
                                spread("test_accuracy"), spread("best_validation_test_accuracy"))
            console.print(summary)
        choice = chosen_on_validation(combinations)
        if choice:
            (overrides, _, _, stats), metric = choice
            value, test = stats[f"validation_{metric}"][0], stats[f"test_{metric}"][0]
            show = (lambda v: f"{100 * v:.2f}%") if metric == "accuracy" else (lambda v: f"{v:.4g}")
            console.print(f"chosen on validation{f' (means over {seeds} seeds)' if seeds > 1 else ''}: "
                          f"{escape(' '.join(overrides))}: validation {metric} {show(value)}, test {metric} "
                          f"{show(test) if test is not None else '-'}", soft_wrap=True)
        for name, _, _, r in rows:
            if r.get("error"):
                console.print(f"[red]{escape(name)}[/]: {escape(r['error'])}", soft_wrap=True)
        if any(r.get("status") != "completed" for *_, r in rows):
            raise LocalnetError("some runs did not complete (above)")

    go()
