"""Turn plain YAML data into frozen dataclasses, failing with the file, line, key path, expected and found.

The schema is the dataclasses themselves (spec/schema.py); field metadata adds the few constraints a type
cannot say (bounds, names from a registry, a YAML key that is a Python keyword).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from functools import cache

from ..errors import SpecError, short_repr


def option(default=dataclasses.MISSING, *, alias=None, gt=None, ge=None, le=None, choices=None, pattern=None,
           factory=None):
    """A schema field: `choices` may be a callable so registries are read when a spec is checked, not at import;
    `pattern` is (regular expression a string must match in full, what it means in words)."""
    meta = {"alias": alias, "gt": gt, "ge": ge, "le": le, "choices": choices, "pattern": pattern}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Context:
    """Where the data came from: the file, the line of every key path and the `--set` overrides applied to it."""

    def __init__(self, file=None, lines=None, overrides=()):
        self.file = file
        self.lines = lines or {}
        self.overrides = tuple(overrides)

    def line(self, path):
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path, message, expected=None, found=None):
        return SpecError(message, file=self.file, line=self.line(path), path=path, expected=expected, found=found)


def describe(value):
    """A short, unambiguous rendering of a found value."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


@cache
def _hints(cls):
    return typing.get_type_hints(cls)


def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def convert(tp, value, path, ctx):
    """Check `value` against type `tp` and build it; every failure is a SpecError at `path`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, ctx)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return convert(non_none[0], value, path, ctx)
        raise ctx.error(path, "unsupported schema type", expected=_type_name(tp))
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ctx.error(path, "invalid value", expected=_type_name(tp), found=describe(value))
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ctx.error(path, "wrong type", expected=_type_name(tp), found=describe(value))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, path + (i,), ctx) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ctx.error(path, "wrong length", expected=_type_name(tp), found=f"{len(value)} values")
        return tuple(convert(a, v, path + (i,), ctx) for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, "wrong type", expected="true or false", found=describe(value))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, "wrong type", expected="an integer", found=describe(value))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(path, "wrong type", expected="a number", found=describe(value))
        if not math.isfinite(value):
            raise ctx.error(path, "not a finite number", expected="a finite number", found=describe(value))
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ctx.error(path, "wrong type", expected="a non-empty string", found=describe(value))
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ctx.error(path, "not valid text", expected="a string UTF-8 can encode (no lone surrogates)",
                            found=describe(value)) from None
        return value
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in the schema, not in the spec


def _check_constraints(meta, value, path, ctx):
    if value is None:
        return
    if meta.get("pattern") is not None:  # a string, or each string of a list
        regex, meaning = meta["pattern"]
        for where, text in ([(path + (i,), v) for i, v in enumerate(value)] if isinstance(value, tuple)
                            else [(path, value)]):
            if isinstance(text, str) and not re.fullmatch(regex, text):
                raise ctx.error(where, "invalid name", expected=meaning, found=describe(text))
    if meta.get("choices") is not None:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if value not in choices:
            raise ctx.error(path, "unknown name", expected="one of " + ", ".join(map(repr, choices)),
                            found=describe(value))
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if not isinstance(number, (int, float)):
            continue
        if meta.get("gt") is not None and not number > meta["gt"]:
            raise ctx.error(path, "out of range", expected=f"> {meta['gt']}", found=describe(number))
        if meta.get("ge") is not None and not number >= meta["ge"]:
            raise ctx.error(path, "out of range", expected=f">= {meta['ge']}", found=describe(number))
        if meta.get("le") is not None and not number <= meta["le"]:
            raise ctx.error(path, "out of range", expected=f"<= {meta['le']}", found=describe(number))


def yaml_key(field):
    return field.metadata.get("alias") or field.name


def _convert_dataclass(cls, value, path, ctx):
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not isinstance(value, dict):
        raise ctx.error(path, "wrong type", expected=f"a mapping with keys {', '.join(yaml_key(f) for f in fields)}",
                        found=describe(value))
    keys = {yaml_key(f): f for f in fields}
    for key in value:
        if key not in keys:
            # `{type:sgd}` is one key, 'type:sgd': YAML wants a space after the colon of a flow mapping
            glued = isinstance(key, str) and ":" in key and key.split(":", 1)[0].strip() in keys
            raise ctx.error(path + (key,), "unknown key" + (" (a space is missing after ':')" if glued else ""),
                            expected="one of " + ", ".join(keys), found=short_repr(key))
    hints = _hints(cls)
    kwargs = {}
    for key, field in keys.items():
        sub = path + (key,)
        if key not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ctx.error(sub, "missing required key", expected=_type_name(hints[field.name]))
            continue
        kwargs[field.name] = _convert_field(field, hints[field.name], value[key], sub, ctx)
    return cls(**kwargs)


def convert_field(cls, name, value, path, ctx):
    """One field of dataclass `cls`, checked and built on its own (a spec's `plugins`, needed before the rest)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return _convert_field(field, _hints(cls)[name], value, path, ctx)


def _convert_field(field, hint, value, path, ctx):
    converted = convert(hint, value, path, ctx)
    _check_constraints(field.metadata, converted, path, ctx)
    return converted


def to_data(obj):
    """The inverse of `convert`: plain YAML-ready data, with every default written out."""
    if dataclasses.is_dataclass(obj):
        return {yaml_key(f): to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_data(v) for v in obj]
    return obj
