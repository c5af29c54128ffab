"""Safe YAML loading that remembers where every key came from, so spec errors can name a line."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import SpecError

MAX_SPEC_BYTES = 1 << 20
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")  # a spec is a page of text; anything larger is a mistake, not a network


class _Loader(yaml.SafeLoader):
    """SafeLoader: no Python tags, so a spec can never execute code."""


def _walk(loader, node, path, lines, file):
    """Build Python data from a YAML node tree, recording the line of each key path and refusing duplicate keys."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise SpecError(f"unsupported YAML tag {node.tag!r}", file=file, line=node.start_mark.line + 1, path=path,
                        expected="a plain mapping or list")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys into plain pairs
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError("keys must be plain scalars", file=file, line=key_node.start_mark.line + 1,
                                path=path, found=type(key).__name__)
            if key in out:
                raise SpecError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1,
                                path=path + (key,))
            sub = path + (key,)
            out[key] = _walk(loader, value_node, sub, lines, file)
            lines[sub] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), lines, file) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, file=None):
    """Parse one YAML document into (data, lines), where lines maps a key path tuple to its 1-based line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError("spec file is too large", file=file, expected=f"at most {MAX_SPEC_BYTES} bytes")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("spec is empty", file=file, expected="a mapping of sections")
        lines: dict = {}
        data = _walk(loader, node, (), lines, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {exc.problem or exc.context}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:
        raise SpecError("spec is nested too deeply", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def read_yaml(path):
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("spec file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec: {exc}", file=path) from None
    return load_yaml(text, file=path)
