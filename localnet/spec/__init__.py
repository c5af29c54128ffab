"""Specs: YAML in, a validated and frozen `Spec` out, or one SpecError that names file, line and key."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import SpecError, short_repr
from . import names
from .schema import (ChannelSpec, ConstraintSpec, DataSpec, FeedbackSpec, LayerSpec, NetworkSpec, OptimizerSpec,
                     OptimizersSpec, RuleSpec, Spec, TrainSpec)
from .validate import Context, convert, convert_field, describe, to_data
from .yamlio import load_yaml, read_yaml

__all__ = ["load_spec", "dump_spec", "parse_override", "Spec", "ChannelSpec", "ConstraintSpec", "DataSpec",
           "FeedbackSpec", "LayerSpec", "NetworkSpec", "OptimizerSpec", "OptimizersSpec", "RuleSpec", "TrainSpec"]


def parse_override(text):
    """`a.b.c=value` from the command line: the value is read as a YAML scalar (so 0.1 is a number)."""
    if "=" not in text:
        raise SpecError("an override must look like key.path=value", file="--set", found=repr(text))
    key, _, raw = text.partition("=")
    path = tuple(p for p in key.strip().split(".") if p)
    if not path:
        raise SpecError("empty key path in override", file="--set", found=repr(text))
    try:
        value = load_yaml(raw, file="--set")[0] if raw.strip() else None  # bounded, like a spec file
    except SpecError:
        value = raw
    return path, value


def _apply_override(data, path, value, ctx):
    """Set one key path; a list step may be an index or the `name` of one of its items (layers.h1.size)."""
    node = data
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        where = path[: depth + 1]
        if isinstance(node, list):
            index = _list_index(node, step)
            if index is None:
                raise SpecError("no such list item", file="--set", path=where,
                                expected=f"an index below {len(node)} or the name of an item", found=repr(step))
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[step] = value
            else:
                node = node.setdefault(step, {})
        else:
            raise SpecError("cannot set a key inside a value", file="--set", path=where,
                            found=describe(node))
    ctx.lines[tuple(path)] = None


def _list_index(items, step):
    if step.lstrip("-").isdigit():
        i = int(step)
        return i if -len(items) <= i < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == step:
            return i
    return None


def load_spec(source, overrides=(), plugins=()) -> Spec:
    """Load a spec from a path, a YAML string's parsed dict, or a dict; `overrides` are `key.path=value` strings;
    `plugins` are modules to import and record in the spec's `plugins` besides its own (a command's --plugin)."""
    if isinstance(source, Spec):
        origin = source.origin
        data = to_data(source)
        ctx = Context(file=origin.file if origin else None,
                      overrides=(*(origin.overrides if origin else ()), *overrides))
    elif isinstance(source, dict):
        data, ctx = copy.deepcopy(source), Context(file="<dict>", overrides=overrides)
    else:
        data, lines = read_yaml(source)
        ctx = Context(file=Path(source), lines=lines, overrides=overrides)
    if not isinstance(data, dict):
        raise ctx.error((), "a spec is a mapping of sections", expected="a mapping", found=describe(data))
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(data, path, value, ctx)
    _load_plugins(data, plugins, ctx)
    spec = convert(Spec, data, (), ctx)
    _check(spec, ctx)
    object.__setattr__(spec, "origin", ctx)
    return spec


def _load_plugins(data, extra, ctx):
    """Import the spec's `plugins`, then `extra`, then the installed entry point that provides an unknown
    `rule.name`, before the rest is checked, since it may name what they register. Each module is written back
    into `plugins`, so the resolved spec (a run directory's spec.yaml) names every module its rule needs."""
    from ..plugins import PluginError, import_module, load, provide_rule
    from ..rules import RULES
    listed = list(convert_field(Spec, "plugins", data.get("plugins", []), ("plugins",), ctx))
    for i, module in enumerate(listed):
        try:
            import_module(module)
        except PluginError as exc:
            raise ctx.error(("plugins", i), exc.what, expected="a module Python can import (installed, or on "
                            "PYTHONPATH)", found=exc.reason) from None
    load(extra)
    listed += [module for module in extra if module not in listed]
    rule = data.get("rule")
    name = rule.get("name") if isinstance(rule, dict) else None
    if isinstance(name, str) and name not in RULES:
        try:
            module = provide_rule(name)
        except PluginError as exc:
            raise ctx.error(("rule", "name"), exc.what, found=exc.reason) from None
        if module is None:
            raise ctx.error(("rule", "name"), "unknown name", found=describe(name),
                            expected="one of " + ", ".join(map(repr, RULES)) + ", or a rule a plugin registers "
                            "(a module in the spec's `plugins` or given with --plugin, or an installed package's "
                            "`localnet.rules` entry point)")
        if module not in listed:
            listed.append(module)
    if listed:
        data["plugins"] = listed


def dump_spec(spec: Spec) -> str:
    """The resolved spec as YAML, every default written out; `load_spec` of it gives an equal Spec."""
    return yaml.safe_dump(to_data(spec), sort_keys=False, allow_unicode=True)


def _check(spec, ctx):
    """Checks across fields that a type cannot express."""
    layers = spec.network.layers
    if not layers:
        raise ctx.error(("network", "layers"), "a network needs at least one layer", expected="a non-empty list")
    seen = {}
    for i, layer in enumerate(layers):
        path = ("network", "layers", i, "name")
        if layer.name in names.RESERVED_NODES:
            raise ctx.error(path, "reserved node name", expected="a name other than " +
                            " and ".join(map(repr, names.RESERVED_NODES)), found=short_repr(layer.name))
        if layer.name.casefold() in seen:  # h1 and H1 would share a checkpoint file where case is ignored
            raise ctx.error(path, f"duplicate layer name (first used by layer {seen[layer.name.casefold()]})",
                            expected="unique layer names, ignoring case", found=short_repr(layer.name))
        seen[layer.name.casefold()] = i
    if spec.network.chain is not None and spec.network.channels is not None:
        raise ctx.error(("network", "channels"), "give either `chain` or `channels`, not both")
    _check_inputs(spec, ctx)
    _check_data(spec.data, ctx)
    from ..constraints import check_constraints
    check_constraints(spec, ctx)
    from ..layers.base import family
    from ..rules import get_rule
    rule = get_rule(spec.rule.name)
    if spec.rule.first_target == "last_hidden" and len(layers) < 2 and "target" in rule.backward_kinds(True):
        raise ctx.error(("rule", "first_target"), "`last_hidden` needs a hidden layer below the output",
                        expected="'output' for a one-layer network", found="'last_hidden'")
    if spec.rule.first_target not in rule.first_targets:
        raise ctx.error(("rule", "first_target"), f"rule {rule.name!r} cannot place its first target on the "
                        f"{spec.rule.first_target.replace('_', ' ')} layer", expected=" or ".join(rule.first_targets),
                        found=spec.rule.first_target)
    rule.check_spec(spec, ctx.error)
    for i, layer in enumerate(layers):  # what each family cannot run under this spec, with the layer's line
        cls = family(layer.type)
        missing = sorted(rule.needs - cls.offers) if cls.offers is not None else ()
        if missing:
            raise ctx.error(("rule", "name"), f"rule {rule.name!r} does not support {layer.type} layers (layer "
                            f"{layer.name!r}): it needs {', '.join(missing)}, which they do not offer",
                            expected="a rule whose needs the families offer", found=repr(rule.name))
        cls.check_spec(spec, layer, ("network", "layers", i), ctx.error)
    _check_placement(spec, ctx)
    total = 0
    sizes = [layer.size for layer in layers if layer.size is not None]
    for a, b in zip(sizes, sizes[1:]):
        total += 2 * a * b
    if total > 1 << 31:
        raise ctx.error(("network", "layers"), "network is too large to allocate",
                        expected="at most 2**31 weights", found=f"{total} weights")


def _check_inputs(spec, ctx):
    """`inputs`: each names the data (`input`) or a layer listed earlier (so the graph is acyclic), once; not
    beside `chain` or `channels`, which declare the graph themselves."""
    earlier = ["input"]
    for i, layer in enumerate(spec.network.layers):
        if layer.inputs is not None:
            path = ("network", "layers", i, "inputs")
            other = "chain" if spec.network.chain is not None else "channels" if spec.network.channels else None
            if other:
                raise ctx.error(path, f"layer {layer.name!r}: give its inputs or the network's `{other}`, not both")
            if not layer.inputs:
                raise ctx.error(path, f"layer {layer.name!r} takes no input", expected="at least one name")
            for j, name in enumerate(layer.inputs):
                if name not in earlier:
                    later = any(other.name == name for other in spec.network.layers)
                    raise ctx.error((*path, j), "an input is the data or a layer listed earlier" +
                                    (f" ({name!r} comes later: the graph must be acyclic)" if later else ""),
                                    expected="one of " + ", ".join(earlier), found=short_repr(name))
                if name in layer.inputs[:j]:
                    raise ctx.error((*path, j), f"layer {layer.name!r} takes {name!r} twice",
                                    expected="each input once", found=short_repr(name))
        earlier.append(layer.name)


IDX_FILES = ("images", "labels", "test_images", "test_labels")


def _check_data(data, ctx):
    """The keys of `data` that its `name` reads: `path` for arrays, the IDX files for idx, `classes` for both."""
    required = {"arrays": ("path",), "idx": ("images", "labels")}.get(data.name, ())
    for key in required:
        if getattr(data, key) is None:
            raise ctx.error(("data", key), f"data set {data.name!r} needs `{key}`",
                            expected="the .npz file to read" if key == "path" else f"the {key} IDX file")
    for key in IDX_FILES + ("classes",):
        names = ("arrays", "idx") if key == "classes" else ("idx",)
        if getattr(data, key) is not None and data.name not in names:
            raise ctx.error(("data", key), f"`{key}` does not apply to data set {data.name!r}",
                            expected="data set " + " or ".join(map(repr, names)))
    if data.name == "idx" and (data.test_images is None) != (data.test_labels is None):
        given = "test_images" if data.test_images is not None else "test_labels"
        raise ctx.error(("data", given), "give `test_images` and `test_labels` together, or neither")


def _check_placement(spec, ctx):
    """`placement`: one list of layer names per MPI rank; every layer on exactly one rank."""
    if spec.placement is None:
        return
    layers = [layer.name for layer in spec.network.layers]
    if not spec.placement:
        raise ctx.error(("placement",), "a placement names the layers of each rank",
                        expected="a list of lists of layer names, one per rank", found="[]")
    where = {}
    for rank, names_ in enumerate(spec.placement):
        for i, name in enumerate(names_):
            path = ("placement", rank, i)
            if name not in layers:
                raise ctx.error(path, "unknown layer", expected="one of " + ", ".join(layers),
                                found=short_repr(name))
            if name in where:
                raise ctx.error(path, f"layer {name!r} is already placed on rank {where[name]}",
                                expected="each layer on one rank", found=f"{name!r} on ranks {where[name]} and {rank}")
            where[name] = rank
    missing = [name for name in layers if name not in where]
    if missing:
        raise ctx.error(("placement",), "every layer needs a rank", expected="a rank for every layer",
                        found=f"no rank for {', '.join(missing)}")


Spec.origin = None  # replaced per instance by load_spec; holds the file and line map for later errors
