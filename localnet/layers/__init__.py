"""Layers: the layer protocol (`Layer`, `Reference`), the registry of families, and the built-in families.

A new family is a `Layer` subclass with a `family` name, registered with `register_family`, and one kernel module
per backend; localnet/layers/base.py says what the protocol asks."""

from .base import FAMILIES, Layer, Node, Reference, family, family_names, register_family

__all__ = ["FAMILIES", "Layer", "Node", "Reference", "family", "family_names", "register_family"]
