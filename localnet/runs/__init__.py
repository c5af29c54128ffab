"""Run directories: `runs/<date>-<spec name>-<short id>/` with the resolved spec, the environment, metrics,
checkpoint and summary. Every file but the metrics log is written atomically (temporary file, fsync, rename);
the log is appended one flushed line at a time."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..spec import dump_spec, load_spec

CHECKPOINT = "checkpoint"


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str):
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: Path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _versions():
    out = {"python": sys.version.split()[0]}
    for pkg in ("localnet", "numpy", "networkx", "pyyaml", "numba"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def create(cls, root, spec, backend):
        """A new, uniquely named run directory; mkdir without exist_ok makes two runs in one second distinct."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)[:60] or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            path = root / f"{stamp}-{name}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        run = cls(path)
        write_text(path / "spec.yaml", dump_spec(spec))
        write_json(path / "environment.json", {
            "versions": _versions(), "backend": backend, "seed": spec.seed, "dtype": spec.dtype,
            "platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        run.write_summary({"status": "running"})
        return run

    def spec(self):
        if not (self.path / "spec.yaml").is_file():
            raise RunError(f"{self.path} is not a run directory (no spec.yaml)")
        return load_spec(self.path / "spec.yaml")

    def log(self, record: dict):
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def metrics(self) -> list:
        """The logged records; a torn last line (a crash mid-write) is skipped."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def write_summary(self, summary: dict):
        write_json(self.path / "summary.json", summary)

    def summary(self) -> dict:
        try:
            return json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"cannot read {self.path / 'summary.json'}: {exc}") from None

    def save_parameters(self, params: dict):
        """One .npz per layer, so each layer's state stays its own (and a rank can write just its layers)."""
        directory = self.path / CHECKPOINT
        directory.mkdir(exist_ok=True)
        for layer, arrays in params.items():
            _atomic_write(directory / f"{layer}.npz", lambda fh, a=arrays: np.savez(fh, **a))

    def load_parameters(self, layers) -> dict:
        directory = self.path / CHECKPOINT
        params = {}
        for layer in layers:
            path = directory / f"{layer}.npz"
            try:
                with np.load(path, allow_pickle=False) as data:
                    params[layer] = {k: data[k] for k in data.files}
            except FileNotFoundError:
                raise RunError(f"{self.path} has no checkpoint for layer {layer!r} ({path})") from None
            except (OSError, ValueError) as exc:
                raise RunError(f"checkpoint {path} is unreadable: {exc}") from None
        return params
