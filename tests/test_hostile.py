"""Hostile input: random and malicious YAML through `localnet.load_spec(path)`. Every case ends in one clear
SpecError (one line, naming the file) or a valid Spec — never another exception, a hang, an absurd allocation or
code execution (the loader is safe YAML only)."""

import copy
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import localnet
from localnet.errors import GraphError, SpecError
from localnet.graph import build_graph
from localnet.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
MARKER = "localnet-pwned"  # the file a successful code execution would create (checked after every example)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.function_scoped_fixture])

VALID = {
    "name": "hostile", "seed": 1, "dtype": "float32",
    "data": {"name": "digits", "validation": 100},
    "network": {"layers": [{"name": "h1", "size": 8, "activation": "tanh"},
                           {"name": "h2", "size": 8},
                           {"name": "out", "size": 10, "activation": "linear"}],
                "feedback": {"activation": "tanh"}},
    "rule": {"name": "dtp", "target_step": 0.5},
    "optimizer": {"forward": {"type": "adam", "lr": 0.001}, "feedback": {"type": "sgd", "lr": 0.01}},
    "train": {"epochs": 2, "batch_size": 16, "checkpoint_every": 1},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def check(workdir, text):
    """Load `text` as a spec file; the one acceptable failure is a one-line SpecError naming the file."""
    path = workdir / "spec.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        spec = localnet.load_spec(path)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message and "\r" not in message, message
        return None
    finally:
        assert not (workdir / MARKER).exists(), "the spec executed code"
    assert isinstance(spec, Spec)
    try:  # what loads describes a graph, or a GraphError/SpecError says why not; nothing is allocated here
        build_graph(spec, 64, 10)
    except (GraphError, SpecError) as exc:
        assert "\n" not in str(exc)
    return spec


# -- random YAML ------------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["digits", "tanh", "dtp", "adam", "h1", "out", "input",
                                                          "loss", "target", "activation", "-1", "1e400", "~"]))
keys = st.one_of(st.text(max_size=10), st.sampled_from(list(VALID) + ["layers", "size", "name", "from", "to",
                                                                      "kind", "channels", "chain", "<<"]),
                 st.integers(-3, 3), st.booleans())
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


@SETTINGS
@given(documents)
def test_random_yaml_documents(workdir, data):
    check(workdir, yaml.safe_dump(data, allow_unicode=True))


@SETTINGS
@given(st.text(max_size=300))
@example("\x00")
@example("name: \ud800")
@example('"[/x]": 1')  # rich markup in a key must not break the error line
@example('? "a\\nb"\n: 1')  # a line break inside a key
@example("- " * 100 + "x")
@example("a: " + "[" * 200)
@example("&a [*a]")
def test_random_text(workdir, text):
    check(workdir, text)


# -- a valid spec, corrupted ------------------------------------------------------------------------------------

def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _parent(data, path):
    for step in path[:-1]:
        data = data[step]
    return data


def _mutate(data, draw):
    kind = draw(st.sampled_from(["delete", "junk", "unknown", "huge", "negative", "duplicate", "cycle",
                                 "self", "wrong_type", "unicode"]))
    paths = [p for p in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = _parent(data, path)
    layers = data.get("network", {}).get("layers") if isinstance(data.get("network"), dict) else None
    if kind == "delete":
        del parent[path[-1]]
    elif kind == "junk":
        parent[path[-1]] = draw(documents)
    elif kind == "unknown" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
    elif kind in ("huge", "negative") and isinstance(layers, list) and layers:
        layer = draw(st.sampled_from(layers))
        if isinstance(layer, dict):
            layer["size"] = draw(st.sampled_from([2**20, 2**20 + 1, 10**12, 2**63, 10**30])) if kind == "huge" \
                else draw(st.integers(-(10**12), 0))
    elif kind == "duplicate" and isinstance(layers, list) and len(layers) > 1:
        layers[-1] = copy.deepcopy(layers[0])
    elif kind in ("cycle", "self") and isinstance(data.get("network"), dict):
        names = [layer.get("name") for layer in (layers if isinstance(layers, list) else [])
                 if isinstance(layer, dict)]
        channels = [{"from": "input", "to": "h1", "kind": "activation"},
                    {"from": "h1", "to": "h2", "kind": "activation"},
                    {"from": "h2", "to": "h1", "kind": "activation"},  # a cycle in the forward phase
                    {"from": "h2", "to": "out", "kind": "activation"},
                    {"from": "out", "to": "loss", "kind": "activation"}]
        if kind == "self":
            channels.append({"from": draw(st.sampled_from(names or ["h1"])), "to": "h2", "kind": "target"})
            channels.append({"from": "h2", "to": "h2", "kind": "target"})
        data["network"]["channels"] = channels
    elif kind == "wrong_type":
        parent[path[-1]] = draw(st.sampled_from([[1, 2], {"a": 1}, "text", 3.5, True, None, -1]))
    elif kind == "unicode":
        parent[path[-1]] = draw(st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=8))


TAGS = ["!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/apply:subprocess.check_output [['touch', '{marker}']]",
        "!!python/object/new:os.system ['touch {marker}']",
        "!!python/name:os.system", "!!python/module:os", "!!python/object:localnet.spec.Spec {{}}",
        "!!binary aGVsbG8=", "!!set {{a, b}}", "!!omap [a: 1]", "!!timestamp 2001-12-14", "!custom x",
        "!!str", "!!int", "!!float", "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']"]


def _text_mutation(text, draw, marker):
    lines = text.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    line = lines[i]
    kind = draw(st.sampled_from(["tag", "anchor", "bomb", "merge", "unicode", "truncate", "dup_key"]))
    if kind == "tag":  # a tag before a value, at any position
        if ": " in line:
            key, _, value = line.partition(": ")
            lines[i] = f"{key}: {draw(st.sampled_from(TAGS)).format(marker=marker)} {value}"
        else:
            lines[i] = draw(st.sampled_from(TAGS)).format(marker=marker) + " " + line
    elif kind == "anchor":  # anchor one value, refer to it from another place
        if ": " in line:
            key, _, value = line.partition(": ")
            lines[i] = f"{key}: &x {value}"
            j = draw(st.integers(0, len(lines) - 1))
            if ": " in lines[j] and j != i:
                k, _, _ = lines[j].partition(": ")
                lines[j] = f"{k}: *x"
    elif kind == "bomb":
        lines.append(_bomb(draw(st.integers(2, 9)), draw(st.integers(2, 12))))
    elif kind == "merge":
        lines.append("defaults: &d {size: 8}")
        lines.append("extra: {<<: *d, size: -1}")
    elif kind == "unicode":
        lines[i] = line + draw(st.text(max_size=5))
    elif kind == "truncate":
        lines = lines[:i] + [line[: draw(st.integers(0, len(line)))]]
    elif kind == "dup_key":
        lines.insert(i, line)
    return "\n".join(lines) + "\n"


def _bomb(levels, width):
    out = ["lol0: &l0 [lol]"]
    for n in range(1, levels + 1):
        out.append(f"lol{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * width) + "]")
    return "\n".join(out)


@SETTINGS
@given(st.data())
def test_corrupted_valid_specs(workdir, draw):
    data = copy.deepcopy(VALID)
    for _ in range(draw.draw(st.integers(0, 3))):
        _mutate(data, draw.draw)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    for _ in range(draw.draw(st.integers(0, 3))):
        text = _text_mutation(text, draw.draw, workdir / MARKER)
    check(workdir, text)


def test_the_valid_spec_loads(workdir):
    assert check(workdir, yaml.safe_dump(VALID)) is not None


# -- named attacks ----------------------------------------------------------------------------------------------

def test_billion_laughs_errors_without_blowing_up_memory(workdir):
    """10^9 expanded values if followed; refused after a bounded number, with a bounded peak of memory."""
    text = "name: x\n" + _bomb(9, 10) + "\n"
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="too many values"):
            localnet.load_spec(_write(workdir, text))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("text,message", [
    ("a: &a [*a]\n", "nested too deeply"),  # an alias inside itself
    ("a: &a {b: *a}\n", "nested too deeply"),
    ("a: " + "[" * 100_000 + "\n", "nested more than"),  # the pure-Python scanner is quadratic in this depth
    ("".join(" " * i + f"k{i}:\n" for i in range(200)), "nested more than"),
    ("a: [" + "1, " * 200_000 + "1]\n", "too large|more than"),
    ("seed: " + "9" * 5000 + "\n", "invalid YAML value"),  # beyond Python's int-from-string limit
    ("a: 1\n---\nb: 2\n", "another document"),
    ("x" * (300 << 10), "too large"),
])
def test_pathological_yaml(workdir, text, message):
    with pytest.raises(SpecError, match=message) as info:
        localnet.load_spec(_write(workdir, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tag", [t for t in TAGS if "marker" in t or "python" in t])
def test_python_tags_never_execute(workdir, tag):
    text = yaml.safe_dump(VALID).replace("name: hostile", "name: " + tag.format(marker=workdir / MARKER))
    with pytest.raises(SpecError, match="YAML"):
        localnet.load_spec(_write(workdir, text))
    assert not (workdir / MARKER).exists()


def test_huge_and_negative_sizes_are_refused_before_anything_is_built(workdir):
    for size, message in [(2**20 + 1, "<= 1048576"), (-5, ">= 1"), (0, ">= 1"), (10**30, "<= 1048576")]:
        data = copy.deepcopy(VALID)
        data["network"]["layers"][0]["size"] = size
        with pytest.raises(SpecError, match=message):
            localnet.load_spec(_write(workdir, yaml.safe_dump(data)))
    data = copy.deepcopy(VALID)
    data["network"]["layers"] = [{"name": f"h{i}", "size": 2**20} for i in range(3)]
    with pytest.raises(SpecError, match="too large to allocate"):
        localnet.load_spec(_write(workdir, yaml.safe_dump(data)))


@pytest.mark.parametrize("name", ["../../outside", "a/b", "/etc/passwd", "..", ".hidden", "[/x]", "h 1", "1h",
                                  "x" * 65, "naïve", "h1\n", "con:", "a.b"])
def test_layer_names_that_cannot_be_file_names_are_refused(workdir, name):
    """A layer's name names its checkpoint file: nothing may lead out of the run directory or break a path."""
    data = copy.deepcopy(VALID)
    data["network"]["layers"][0]["name"] = name
    with pytest.raises(SpecError, match="network.layers.0.name: invalid name"):
        localnet.load_spec(_write(workdir, yaml.safe_dump(data)))


def test_cyclic_channels_and_duplicate_names(workdir):
    data = copy.deepcopy(VALID)
    for duplicate in ("h1", "H1"):  # h1 and H1 would share a file where case is ignored
        data["network"]["layers"][2]["name"] = duplicate
        with pytest.raises(SpecError, match="duplicate layer name"):
            localnet.load_spec(_write(workdir, yaml.safe_dump(data)))
    data = copy.deepcopy(VALID)
    data["network"]["channels"] = [{"from": "input", "to": "h1", "kind": "activation"},
                                   {"from": "h1", "to": "h2", "kind": "activation"},
                                   {"from": "h2", "to": "h1", "kind": "activation"},
                                   {"from": "h2", "to": "out", "kind": "activation"},
                                   {"from": "out", "to": "loss", "kind": "activation"}]
    spec = localnet.load_spec(_write(workdir, yaml.safe_dump(data)))
    with pytest.raises((GraphError, SpecError)):
        build_graph(spec, 64, 10)


def _write(workdir, text):
    path = workdir / "named.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- data files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("corrupt", [
    lambda b: b[: len(b) // 2], lambda b: b[:10], lambda b: b"", lambda b: b"garbage" * 10,
    lambda b: b[:1000] + bytes([b[1000] ^ 0xFF]) + b[1001:],  # a flipped byte inside compressed data
], ids=["half", "header", "empty", "garbage", "flipped"])
def test_corrupt_digits_file_is_a_data_error_naming_it(tmp_path, corrupt):
    from localnet.data import load_dataset
    from localnet.data.datasets import DIGITS_FILE
    from localnet.errors import DataError
    (tmp_path / "digits.npz").write_bytes(corrupt(DIGITS_FILE.read_bytes()))
    with pytest.raises(DataError, match=str(tmp_path / "digits.npz")):
        load_dataset("digits", path=tmp_path)


# -- the command line -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "name: x\n" + _bomb(9, 10) + "\n",
    "name: !!python/object/apply:os.system ['echo pwned']\n",
    'name: t\n"[/x]": 1\n',
    'name: t\n"a\\nb": 1\n',
    "name: a\x00\n",
])
def test_cli_prints_one_line_and_no_traceback(tmp_path, text):
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "localnet", "run", str(path), "--runs-dir", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "pwned" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spec error: {path}"), result.stderr
    assert not (tmp_path / "r").exists()
