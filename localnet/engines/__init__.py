"""Engines run the phases of a step over the graph's schedule; only an engine sees every node."""

from .local import LocalEngine

__all__ = ["LocalEngine"]
