"""Engines run the phases of a step over the graph's schedule; only an engine sees every node."""

from __future__ import annotations

import contextlib

from .local import LocalEngine

__all__ = ["LocalEngine", "new_engine", "using"]

_factory = LocalEngine  # (graph, nodes) -> engine; `using` swaps it (the MPI engine, under mpiexec)


def new_engine(graph, nodes):
    """The engine a Network built now gets: the local engine unless inside `using(factory)`."""
    return _factory(graph, nodes)


@contextlib.contextmanager
def using(factory):
    """Networks built inside get `factory(graph, nodes)` as their engine."""
    global _factory
    previous, _factory = _factory, factory
    try:
        yield
    finally:
        _factory = previous
