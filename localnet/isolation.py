"""Isolation: a node holds only its own state. Checked when a network is built, before every checkpoint, by
`localnet audit`, and whenever `Network.check_isolation()` is called.

A node's attributes are scanned recursively (containers, bound methods, closures, partials, and the attributes
of localnet objects) for
- another node (a layer, the loss or the data source),
- any array that shares memory with another node's parameters or optimiser state (a view, read-only or not),
- a writable array that shares memory with a writable array another node holds (two writers of one memory),
- a mutable container or generator that another node also holds (a side channel, and a break of determinism).
Read-only views of what another node *sent* (activations, targets) are what a node receives, and are allowed.

What Python cannot enforce: a determined user can reach any object through `gc`, module globals, frames or
`ctypes`, and can make an array writable again; numba kernels see raw memory. The scan catches the accidents
(a stray reference, a leaked live array, a shared buffer), not an adversary.
"""

from __future__ import annotations

import functools
import types
from collections import deque

import numpy as np

from .errors import LocalityError
from .layers.base import Node

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds

_ATOMS = (str, bytes, int, float, complex, bool, type(None), np.generic, np.dtype, type, types.ModuleType,
          types.BuiltinFunctionType, range, slice)
_MUTABLE = (dict, list, set, deque, bytearray, np.random.Generator, np.random.BitGenerator)


def _attributes(obj):
    items = list(getattr(obj, "__dict__", {}).items())
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                items.append((slot, getattr(obj, slot)))
    return items


def reachable(name, node, limit=100_000):
    """(path, object) for every node, array and mutable object reachable from `node`'s attributes; the walk
    does not enter other nodes, modules, or objects of classes defined outside localnet."""
    seen = {id(node)}
    stack = [(f"{name}.{key}", value) for key, value in reversed(_attributes(node))]
    while stack:
        limit -= 1
        if limit < 0:
            raise LocalityError(f"layer {name!r} holds more than 100000 objects; the isolation scan gave up")
        path, value = stack.pop()
        if isinstance(value, _ATOMS) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, (Node, np.ndarray)) or isinstance(value, _MUTABLE):
            yield path, value
        if isinstance(value, (Node, np.ndarray, np.random.Generator, np.random.BitGenerator)):
            continue
        if isinstance(value, dict):
            stack.extend((f"{path}[{k!r}]", v) for k, v in value.items())
            stack.extend((f"{path} key {k!r}", k) for k in value)
        elif isinstance(value, (list, tuple, set, frozenset, deque)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, types.MethodType):
            stack.append((f"{path}.__self__", value.__self__))
            stack.append((f"{path}.__func__", value.__func__))
        elif isinstance(value, types.FunctionType):
            for i, cell in enumerate(value.__closure__ or ()):
                try:
                    stack.append((f"{path} closure {value.__code__.co_freevars[i]}", cell.cell_contents))
                except ValueError:  # an empty cell
                    pass
            stack.extend((f"{path} default {i}", v) for i, v in enumerate(value.__defaults__ or ()))
            stack.extend((f"{path} default {k}", v) for k, v in (value.__kwdefaults__ or {}).items())
        elif isinstance(value, functools.partial):
            stack.append((f"{path}.func", value.func))
            stack.extend((f"{path}.args[{i}]", v) for i, v in enumerate(value.args))
            stack.extend((f"{path}.keywords[{k!r}]", v) for k, v in value.keywords.items())
        elif type(value).__module__.split(".")[0] == "localnet":
            stack.extend((f"{path}.{key}", v) for key, v in reversed(_attributes(value)))


def owned_arrays(node):
    """{label: array} a node owns and no other may see: its parameters and its optimisers' state."""
    own = getattr(node, "owned_arrays", None)
    return own() if own is not None else {}


def check_isolation(nodes: dict):
    """LocalityError naming the node, the attribute and what it reaches when any node is not isolated."""
    arrays, holders = [], {}  # (lo, hi, node, path, array, owned label or None); id of mutable -> (node, path)
    for name, node in nodes.items():
        owned = {id(a): label for label, a in owned_arrays(node).items()}
        for path, value in reachable(name, node):
            if isinstance(value, Node):
                raise LocalityError(f"layer {name!r} holds a reference to node {getattr(value, 'name', value)!r} "
                                    f"(at {path}); a node may hold only its own state and what it received")
            if isinstance(value, np.ndarray):
                if value.size:
                    lo, hi = byte_bounds(value)
                    arrays.append((lo, hi, name, path, value, owned.get(id(value))))
                continue
            other = holders.setdefault(id(value), (name, path))
            if other[0] != name:
                raise LocalityError(f"layer {name!r} shares a mutable {type(value).__name__} with node "
                                    f"{other[0]!r} ({path} is {other[1]}); a node may hold only its own state")
    arrays.sort(key=lambda a: a[0])
    active = []  # arrays whose byte range may still overlap the next ones
    for entry in arrays:
        lo, hi, name, path, array, label = entry
        active = [e for e in active if e[1] > lo]
        for other in active:
            _check_pair(entry, other)
        active.append(entry)


def _check_pair(a, b):
    if a[2] == b[2] or not np.shares_memory(a[4], b[4]):
        return
    for mine, theirs in ((a, b), (b, a)):
        if theirs[5] is not None:
            raise LocalityError(f"layer {mine[2]!r} holds memory of node {theirs[2]!r}'s {theirs[5]} "
                                f"(at {mine[3]}); a node may not see another's parameters or optimiser state")
    if a[4].flags.writeable and b[4].flags.writeable:
        raise LocalityError(f"layer {a[2]!r} and node {b[2]!r} can both write the same memory ({a[3]} and "
                            f"{b[3]}); what crosses a channel is delivered read-only")
