"""Spec loading: valid specs build, every invalid one gives one SpecError naming file, line, key and what was
expected — never another exception."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import localnet
from localnet.errors import SpecError
from localnet.spec import dump_spec, load_spec

SPECS = sorted(Path(__file__).resolve().parent.parent.joinpath("specs").glob("*.yaml"))

MINIMAL = {
    "name": "t",
    "data": {"name": "digits"},
    "network": {"layers": [{"name": "h1", "size": 8}, {"name": "out", "size": 10, "activation": "linear"}]},
}


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def error_of(source, overrides=()):
    with pytest.raises(SpecError) as info:
        load_spec(source, overrides)
    return info.value


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_load_and_round_trip(path):
    spec = load_spec(path)
    again = load_spec(yaml.safe_load(dump_spec(spec)))
    assert again == spec


def test_defaults_are_filled_in():
    spec = load_spec(MINIMAL)
    assert spec.rule.name == "dtp" and spec.dtype == "float32" and spec.network.layers[0].activation == "tanh"
    assert spec.optimizer.forward.type == "adam"


GOOD = """\
name: t
data:
  name: digits
network:
  layers:
    - name: h1
      size: 8
    - name: out
      size: 10
      activation: linear
rule:
  name: dtp
  target_step: 0.5
"""


@pytest.mark.parametrize("old,new,line,key,expected", [
    ("      size: 8", "      size: -3", 7, "network.layers.0.size", ">= 1"),
    ("      size: 8", "      size: eight", 7, "network.layers.0.size", "an integer"),
    ("      activation: linear", "      activation: softplus", 10, "network.layers.1.activation", "'tanh'"),
    ("  target_step: 0.5", "  target_step: 0.5\n  step_size: 1", 14, "rule.step_size", "target_step"),
    ("  name: dtp", "  name: xyz", 12, "rule.name", "'dtp'"),
    ("    - name: out", "    - name: h1", 8, "network.layers.1.name", "unique layer names"),
    ("    - name: out", "    - name: loss", 8, "network.layers.1.name", "other than"),
    ("  target_step: 0.5", "  target_step: .nan", 13, "rule.target_step", "a finite number"),
    ("  name: digits", "  name: imagenet", 3, "data.name", "'fashion-mnist'"),
])
def test_errors_name_file_line_key_and_expectation(tmp_path, old, new, line, key, expected):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    exc = error_of(path)
    text = str(exc)
    assert text.startswith(f"{path}:{line}: {key}:"), text
    assert expected in text
    assert exc.line == line


def test_missing_required_key_names_its_parent_line(tmp_path):
    path = write(tmp_path, GOOD.replace("      size: 8\n", ""))
    exc = error_of(path)
    assert exc.path == ("network", "layers", 0, "size") and exc.line == 6
    assert "missing required key" in str(exc)


def test_duplicate_keys_are_errors_not_silently_overwritten(tmp_path):
    exc = error_of(write(tmp_path, GOOD.replace("  target_step: 0.5", "  target_step: 0.5\n  target_step: 0.7")))
    assert "duplicate key" in str(exc) and exc.line == 14


def test_python_tags_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    text = GOOD.replace("name: t", f"name: !!python/object/apply:os.system ['touch {marker}']")
    exc = error_of(write(tmp_path, text))
    assert "unsupported YAML tag" in str(exc) and exc.line == 1
    assert not marker.exists()


@pytest.mark.parametrize("text,message", [
    ("", "spec is empty"),
    ("- 1\n- 2\n", "a spec is a mapping"),
    ("name: [unclosed\n", "invalid YAML"),
    ("name: t\ndata: {name: digits}\nnetwork: {layers: []}\n", "at least one layer"),
])
def test_degenerate_files(tmp_path, text, message):
    assert message in str(error_of(write(tmp_path, text)))


def test_missing_file_is_a_spec_error(tmp_path):
    assert "not found" in str(error_of(tmp_path / "nope.yaml"))


def test_chain_and_channels_together_are_refused():
    data = copy.deepcopy(MINIMAL)
    data["network"]["chain"] = ["input", "h1", "out", "loss"]
    data["network"]["channels"] = [{"from": "input", "to": "h1", "kind": "activation"}]
    assert "either `chain` or `channels`" in str(error_of(data))


def test_absurd_sizes_are_refused_before_allocation():
    data = copy.deepcopy(MINIMAL)
    data["network"]["layers"][0]["size"] = 10**9
    assert "<= " in str(error_of(data))
    data["network"]["layers"] = [{"name": f"h{i}", "size": 1 << 20} for i in range(3)]
    assert "too large" in str(error_of(data))


def test_overrides_by_key_index_and_layer_name():
    spec = load_spec(MINIMAL, ["train.epochs=3", "network.layers.h1.size=5", "network.layers.1.activation=tanh",
                               "rule.target_step=0.25", "optimizer.forward.betas=[0.8, 0.9]"])
    assert spec.train.epochs == 3 and spec.network.layers[0].size == 5
    assert spec.network.layers[1].activation == "tanh" and spec.rule.target_step == 0.25
    assert spec.optimizer.forward.betas == (0.8, 0.9)


@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("2E3", 2000.0), ("1.5e-3", 1.5e-3), ("1.0e5", 1e5),
                                        ("5e+1", 50.0)])
def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path, text, value):
    # YAML 1.1 (PyYAML) would read `1e-4` as a string; a spec reads it as YAML 1.2 does
    from_file = load_spec(write(tmp_path, GOOD.replace("target_step: 0.5", f"target_step: {text}")))
    from_override = load_spec(MINIMAL, [f"optimizer.forward.lr={text}"])
    assert from_file.rule.target_step == value and from_override.optimizer.forward.lr == value


def test_scalars_that_only_look_like_exponents_stay_strings(tmp_path):
    for text in ("1e", "e5", "1e-4x"):
        assert "expected a number" in str(error_of(write(tmp_path, GOOD.replace("0.5", text))))


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown key"),
    ("network.layers.h9.size=5", "no such list item"),
    ("train.epochs", "key.path=value"),
    ("train.epochs=-1", ">= 0"),
    ("optimizer.forward={type:sgd}", "unknown key (a space is missing after ':')"),  # YAML's key 'type:sgd'
])
def test_bad_overrides(override, message):
    exc = error_of(MINIMAL, [override])
    assert message in str(exc)


# -- hypothesis: random specs, valid and not -------------------------------------------------------------------

layer_st = st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in ("input", "loss")),
     "size": st.integers(1, 40)},
    optional={"activation": st.sampled_from(["linear", "tanh", "sigmoid", "relu", "step", "stochastic_binary"]),
              "bias": st.booleans()})

valid_spec_st = st.builds(
    lambda layers, rule, first, step, dtype: {
        "name": "h", "data": {"name": "digits"}, "dtype": dtype,
        "network": {"layers": layers + [{"name": "zz_out", "size": 10, "activation": "linear"}]},
        "rule": {"name": rule, "first_target": first, "target_step": step}},
    st.lists(layer_st, min_size=1, max_size=4, unique_by=lambda d: d["name"]),
    st.sampled_from(["dtp", "tp", "bp"]), st.sampled_from(["output", "last_hidden"]),
    st.floats(0, 10), st.sampled_from(["float32", "float64"]))


@settings(max_examples=60, deadline=None)
@given(valid_spec_st)
def test_random_valid_specs_load_and_build(data):
    spec = load_spec(data)
    net = localnet.build(spec, n_features=64, n_classes=10)
    assert list(net.layers) == [layer["name"] for layer in data["network"]["layers"]]


junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _leaf_paths(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaf_paths(v, path + (i,))
    yield path


@settings(max_examples=200, deadline=None)
@given(valid_spec_st, st.data(), junk)
def test_random_corruptions_give_a_spec_error_or_a_valid_spec(data, draw, value):
    paths = [p for p in _leaf_paths(data) if p]
    path = draw.draw(st.sampled_from(paths))
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    try:
        spec = load_spec(data)
    except SpecError as exc:
        assert str(exc).startswith("<dict>")
        return
    try:  # what loads must also build, or fail as one SpecError (a graph check, e.g. the output's size)
        localnet.build(spec, n_features=64, n_classes=10)
    except SpecError as exc:
        assert str(exc).startswith("<dict>")
