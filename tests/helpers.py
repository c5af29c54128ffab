"""Small helpers shared by several test files."""

import signal


def stop_at(stop, epoch, done):
    """Callbacks that request a stop once batch `done` (counted across passes) of `epoch` has been trained."""
    current = [1]

    def on_epoch(record):
        current[0] = record["epoch"] + 1

    def on_batch(d, total):
        if (current[0], d) == (epoch, done):
            stop.request(signal.SIGTERM)
    return {"on_epoch": on_epoch, "on_batch": on_batch}
