"""Safe YAML loading that remembers where every key came from, so spec errors can name a line."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import yaml

from ..errors import SpecError, short_repr
from ..files import read_regular

# A spec is a page of text; anything much larger is a mistake, not a network. The bounds keep a hostile file from
# costing more than a few seconds or megabytes: PyYAML's pure-Python scanner is quadratic in flow nesting depth.
MAX_SPEC_BYTES = 256 << 10
MAX_VALUES = 100_000  # values built, aliases expanded: an alias bomb ("billion laughs") stops here, not in swap
MAX_DEPTH = 64  # a spec nests a handful of levels; a recursive alias (&a [*a]) or a hostile file far more
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Loader(yaml.SafeLoader):
    """SafeLoader: no Python tags, so a spec can never execute code; nesting and size bounded while parsing."""

    def fetch_flow_collection_start(self, token_class):
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                            self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent, index):
        self._nodes = getattr(self, "_nodes", 0) + 1
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._nodes > MAX_VALUES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_VALUES} values",
                                                  self.peek_event().start_mark)
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent, so `lr: 1e-4` would load as the string
# '1e-4'. Researchers write learning rates that way; YAML 1.2 reads them as numbers, and so does a spec.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _walk(loader, node, path, lines, file):
    """Build Python data from a YAML node tree, recording the line of each key path and refusing duplicate keys.

    Aliases are expanded here, so the number of values built and the depth are bounded: a document whose
    aliases multiply it past MAX_VALUES, or that refers to itself, is refused before it can exhaust memory.
    """
    lines[path] = node.start_mark.line + 1
    if len(lines) > MAX_VALUES:
        raise SpecError("spec has too many values (counting what YAML aliases expand to)", file=file,
                        line=node.start_mark.line + 1, path=path, expected=f"at most {MAX_VALUES}")
    if len(path) > MAX_DEPTH:
        raise SpecError("spec is nested too deeply (a YAML alias that contains itself?)", file=file,
                        line=node.start_mark.line + 1, path=path[:8] + ("...",), expected=f"at most {MAX_DEPTH} levels")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise SpecError(f"unsupported YAML tag {node.tag!r}", file=file, line=node.start_mark.line + 1, path=path,
                        expected="a plain mapping or list")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys into plain pairs
        out = {}
        for key_node, value_node in node.value:
            key = _construct(loader, key_node, path, file)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError("keys must be plain scalars", file=file, line=key_node.start_mark.line + 1,
                                path=path, found=type(key).__name__)
            if key in out:
                raise SpecError(f"duplicate key {short_repr(key)}", file=file, line=key_node.start_mark.line + 1,
                                path=path + (key,))
            sub = path + (key,)
            out[key] = _walk(loader, value_node, sub, lines, file)
            lines[sub] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), lines, file) for i, item in enumerate(node.value)]
    return _construct(loader, node, path, file)


def _construct(loader, node, path, file):
    """A scalar's value; PyYAML's constructors raise what they like on a value that does not fit an explicit tag
    (`!!timestamp x`: AttributeError, `!!int x`: ValueError), and each of those is one SpecError here."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except Exception as exc:
        raise SpecError(f"invalid YAML value for tag {short_repr(node.tag)}", file=file,
                        line=node.start_mark.line + 1, path=path,
                        found=short_repr(getattr(node, "value", None)) + f" ({type(exc).__name__})") from None


def load_yaml(text: str, file=None):
    """Parse one YAML document into (data, lines), where lines maps a key path tuple to its 1-based line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError("spec file is too large", file=file, expected=f"at most {MAX_SPEC_BYTES} bytes")
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses characters YAML does not allow
        node = loader.get_single_node()
        if node is None:
            raise SpecError("spec is empty", file=file, expected="a mapping of sections")
        lines: dict = {}
        data = _walk(loader, node, (), lines, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {_one_line(exc.problem or exc.context)}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError(f"invalid YAML: character {char} is not allowed in YAML", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {_one_line(exc)}", file=file) from None
    except RecursionError:
        raise SpecError("spec is nested too deeply", file=file) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise SpecError(f"invalid YAML value: {exc}", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _one_line(text):
    return " ".join(str(text).split())


def read_yaml(path):
    """A spec file's data and line map. Only a regular file of at most MAX_SPEC_BYTES is read, opened without
    blocking (`files.read_regular`: a FIFO would block forever, /dev/zero never end)."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_SPEC_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise SpecError("spec file not found", file=path) from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise SpecError("spec file is too large", file=path, expected=f"at most {MAX_SPEC_BYTES} bytes") from None
        if exc.errno == errno.EINVAL:
            raise SpecError("a spec is a regular file", file=path, found="a FIFO, device or other special file") \
                from None
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", file=path) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read spec: {exc}", file=path) from None
    return load_yaml(text, file=path)
