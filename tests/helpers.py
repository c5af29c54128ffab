"""Small helpers shared by several test files."""

import signal
from pathlib import Path


def stop_at(stop, epoch, done):
    """Callbacks that request a stop once batch `done` (counted across passes) of `epoch` has been trained."""
    current = [1]

    def on_epoch(record):
        current[0] = record["epoch"] + 1

    def on_batch(d, total):
        if (current[0], d) == (epoch, done):
            stop.request(signal.SIGTERM)
    return {"on_epoch": on_epoch, "on_batch": on_batch}


def only_run(root):
    """The one run directory under `root`."""
    (run,) = [p for p in Path(root).iterdir() if p.is_dir()]
    return run
