"""Rules as plugins (localnet/plugins.py, docs/plugins.md): a spec's `plugins`, `--plugin` on every command, the
`localnet.rules` entry point group, and runs made with a plugin's rule that every command reads again, in real
processes (SIGKILL, resume, eval, report, audit, sweep, MPI), or refuses in one line when the module is gone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from helpers import only_run, stop_at
from localnet import dump_spec, load_spec
from localnet.cli import main
from localnet.errors import Interrupted, SpecError
from localnet.rules import DifferenceTargetPropagation, RULES, unregister_rule
from localnet.runs import RunDir
from localnet.training import StopRequest, train
from test_mpi import mpirun, needs_mpi
from test_signals import wait_for_epochs

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
EXAMPLE = ROOT / "examples" / "localnet-rule-example"
RULE_SOURCE = (EXAMPLE / "localnet_rule_example.py").read_text()
SPEC = """name: plugged
plugins:
  - json
  - {module}
data: {{name: digits}}
network:
  layers:
    - {{name: h1, size: 8}}
    - {{name: out, size: 10, activation: linear}}
rule: {{name: {rule}}}
"""


def make_package(root, package, rule):
    """`<package>.scaled` under `root`: the example plugin's module, registering its rule as `rule`."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "scaled.py").write_text(RULE_SOURCE.replace('"scaled_dtp"', repr(rule)))
    return f"{package}.scaled"


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def write_distribution(root, name, entry_points):
    """An installed distribution as importlib.metadata finds it: a `.dist-info` folder on the path."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[localnet.rules]\n" + "".join(f"{k} = {v}\n"
                                                                          for k, v in entry_points.items()))


@pytest.fixture
def path(tmp_path, monkeypatch):
    """A folder on sys.path (and on PYTHONPATH, for subprocesses); the plugins imported from it are forgotten and
    their rules unregistered afterwards."""
    folder = tmp_path / "path"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    rules = set(RULES)
    yield folder
    for name in set(RULES) - rules:
        unregister_rule(name)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and (Path(file).is_relative_to(folder) or Path(file).is_relative_to(EXAMPLE)):
            del sys.modules[name]


@pytest.fixture
def plugin(path):
    """(module, rule): a fresh plugin module on the path and the name of the rule its import registers."""
    tag = uuid.uuid4().hex[:8]
    return make_package(path, f"rules_{tag}", f"scaled_{tag}"), f"scaled_{tag}"


# -- the spec key ----------------------------------------------------------------------------------------------
def test_plugins_are_imported_before_the_rule_is_checked_and_resolve_again(tmp_path, plugin):
    module, rule = plugin
    assert rule not in RULES
    spec = load_spec(write(tmp_path, SPEC.format(module=module, rule=rule)))
    assert spec.plugins == ("json", module) and spec.rule.name == rule and rule in RULES
    assert load_spec(yaml.safe_load(dump_spec(spec))) == spec  # the resolved spec carries them


def test_a_missing_module_is_a_spec_error_at_its_line(tmp_path):
    path = write(tmp_path, SPEC.format(module="no_such_plugin_xyz", rule="dtp"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == (f"{path}:4: plugins.1: cannot import plugin module 'no_such_plugin_xyz'; expected "
                                 "a module Python can import (installed, or on PYTHONPATH), found "
                                 "ModuleNotFoundError: No module named 'no_such_plugin_xyz'")


@pytest.mark.parametrize("plugins,key,message", [
    ("json", "plugins", "wrong type; expected a list of a string, found 'json' (str)"),
    ("[json, 3]", "plugins.1", "wrong type; expected a non-empty string, found 3 (int)"),
    ("[../evil]", "plugins.0", "invalid name; expected a dotted Python module name"),
    ("[os.path, 'a b']", "plugins.1", "invalid name"),
    ("[json.]", "plugins.0", "invalid name"),
])
def test_plugins_is_a_list_of_module_names(tmp_path, plugins, key, message):
    path = write(tmp_path, SPEC.format(module="json", rule="dtp").replace("plugins:\n  - json\n  - json\n",
                                                                          f"plugins: {plugins}\n"))
    with pytest.raises(SpecError, match="^" + re.escape(f"{path}:2: {key}: {message}")):
        load_spec(path)


def test_an_error_in_a_plugins_code_is_one_line_naming_the_module(tmp_path, path):
    (path / "broken_plugin.py").write_text("import json\nraise RuntimeError('no GPU here,\\n sorry')\n")
    (path / "clashing_plugin.py").write_text("from localnet.rules import DifferenceTargetPropagation, register_rule\n"
                                             "register_rule(type('X', (DifferenceTargetPropagation,), {'name': 'bp'}))\n")
    spec = write(tmp_path, SPEC.format(module="broken_plugin", rule="dtp"))
    with pytest.raises(SpecError, match=r"plugins.1: cannot import plugin module 'broken_plugin'; .*, found "
                                        r"RuntimeError: no GPU here, sorry$"):
        load_spec(spec)
    with pytest.raises(SpecError, match="clashing_plugin'; .* found ValueError: a rule named 'bp' is already"):
        load_spec(spec, ["plugins=[clashing_plugin]"])


def test_an_unknown_rule_says_how_a_plugin_provides_one(tmp_path):
    with pytest.raises(SpecError, match=r"rule.name: unknown name; expected one of 'dtp', .*, or a rule a plugin "
                                        r"registers \(a module in the spec's `plugins` or given with --plugin, or an "
                                        r"installed package's `localnet.rules` entry point\), found 'nope' \(str\)"):
        load_spec(QUICKSTART, ["rule.name=nope"])


# -- --plugin ----------------------------------------------------------------------------------------------------
def test_plugin_option_loads_and_records_the_module(tmp_path, plugin):
    module, rule = plugin
    spec = load_spec(QUICKSTART, [f"rule.name={rule}"], plugins=[module])
    assert spec.plugins == (module,)
    result = CliRunner().invoke(main, ["show", str(QUICKSTART), "--set", f"rule.name={rule}", "--set",
                                       "backend=numpy", "--plugin", module])
    assert result.exit_code == 0, result.output
    assert f"plugins: {module}" in result.output and f"({rule}, backend" in result.output


@pytest.mark.parametrize("args", [
    ["run", "{spec}", "--runs-dir", "{tmp}/runs"], ["run", "--resume", "{tmp}/run"], ["show", "{spec}"],
    ["eval", "{tmp}/run"], ["report", "{tmp}/run"], ["plot", "{tmp}/run"], ["audit", "{spec}"],
    ["sweep", "{spec}", "--runs-dir", "{tmp}/runs"], ["bench", "{spec}", "--no-torch"],
], ids=lambda args: args[0] + (" --resume" if "--resume" in args else ""))
def test_every_command_takes_plugin_and_names_a_missing_one(tmp_path, args):
    args = [a.format(spec=QUICKSTART, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, [*args, "--plugin", "json", "--plugin", "no_such_plugin.rules"])
    assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output
    assert result.output.strip().splitlines()[-1].endswith(
        "--plugin: cannot import plugin module 'no_such_plugin.rules': ModuleNotFoundError: No module named "
        "'no_such_plugin'")
    assert not (tmp_path / "runs").exists()


# -- entry points ------------------------------------------------------------------------------------------------
def test_an_entry_point_provides_an_unknown_rule_and_the_spec_records_its_module(tmp_path, plugin, path):
    module, rule = plugin
    write_distribution(path, "scaled-rules", {rule: module, "never_loaded": "no_such_module_either"})
    spec = load_spec(QUICKSTART, [f"rule.name={rule}"])
    assert spec.rule.name == rule and spec.plugins == (module,)  # the run directory will name it
    assert "no_such_module_either" not in sys.modules


def test_a_broken_or_ambiguous_entry_point_names_its_distribution(tmp_path, path):
    spec = write(tmp_path, SPEC.format(module="json", rule="broken"))
    write_distribution(path, "broken-rules", {"broken": "missing_plugin_module:Rule"})
    with pytest.raises(SpecError, match=rf"^{spec}:10: rule.name: entry point 'broken' of distribution "
                                        r"broken-rules 0.1: cannot import plugin module 'missing_plugin_module', "
                                        r"found ModuleNotFoundError: No module named 'missing_plugin_module'$"):
        load_spec(spec)
    write_distribution(path, "other-rules", {"broken": "another_module"})
    with pytest.raises(SpecError, match="rule.name: several installed distributions provide rule 'broken', found "
                                        "distribution (broken|other)-rules 0.1"):
        load_spec(spec)


def test_the_example_package_works_through_its_entry_point(path, monkeypatch):
    """examples/localnet-rule-example as `pip install` would leave it, without installing it: its source folder
    on the path and a dist-info with the entry points its pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    write_distribution(path, project["name"], project["entry-points"]["localnet.rules"])
    monkeypatch.syspath_prepend(str(EXAMPLE))
    data = yaml.safe_load((EXAMPLE / "scaled-dtp.yaml").read_text())
    assert data.pop("plugins") == ["localnet_rule_example"]
    spec = load_spec(data)
    assert spec.rule.name == "scaled_dtp" and spec.plugins == ("localnet_rule_example",)
    rule = RULES["scaled_dtp"]
    assert isinstance(rule, DifferenceTargetPropagation)

    class Layer:  # x + g(ĥ) − g(h), with g(ĥ) − g(h) = 2
        def g_difference(self, x, h, target):
            return x + 2.0
    assert np.array_equal(rule.target_below(Layer(), np.ones(3), None, None), np.full(3, 1 + 2 * rule.scale))


# -- runs made with a plugin's rule, in real processes -----------------------------------------------------------
def localnet(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "localnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


OVERRIDES = ["backend=numpy", "train.batch_size=8", "network.layers.h1.size=32", "network.layers.h2.size=32"]
SMALL = [arg for override in OVERRIDES for arg in ("--set", override)]


def assert_names_missing_module(done, module):
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"plugins.0: cannot import plugin module '{module}'" in line and "ModuleNotFoundError" in line, line


def test_a_killed_plugin_run_resumes_and_every_command_reads_it(tmp_path, path, plugin):
    module, rule = plugin
    package = path / module.partition(".")[0]
    proc = subprocess.Popen([sys.executable, "-m", "localnet", "run", QUICKSTART, "--runs-dir", tmp_path / "runs",
                             *SMALL, "--set", "train.epochs=6", "--set", f"rule.name={rule}", "--plugin", module],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    run, _ = wait_for_epochs(proc, tmp_path / "runs", 1)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and RunDir(run).summary()["status"] == "running"
    assert RunDir(run).spec().plugins == (module,)

    package.rename(path / "moved")  # the plugin is gone: every reader names it, in one line
    for args in (["run", "--resume", run], ["eval", run], ["report", run, "--table"], ["audit", run / "spec.yaml"]):
        assert_names_missing_module(localnet(*args), module)
    assert RunDir(run).summary()["status"] == "running"

    (path / "moved").rename(package)
    done = localnet("run", "--resume", run)  # no --plugin: the run's spec names it
    assert done.returncode == 0, done.stderr
    assert RunDir(run).summary()["status"] == "completed" and len(RunDir(run).metrics()) == 6
    done = localnet("eval", run)
    assert done.returncode == 0 and "test accuracy" in done.stdout, done.stderr
    done = localnet("report", run, "--table")
    assert done.returncode == 0 and rule in done.stdout, done.stderr
    done = localnet("audit", run / "spec.yaml")
    assert done.returncode == 0 and rule in done.stdout, done.stderr
    done = localnet("sweep", run / "spec.yaml", "--grid", "train.epochs=1", "--jobs", "1",
                    "--runs-dir", tmp_path / "sweep")
    assert done.returncode == 0, done.stdout + done.stderr
    (swept,) = (tmp_path / "sweep").glob("*/*/spec.yaml")
    assert load_spec(swept).plugins == (module,)


@needs_mpi
def test_mpi_ranks_load_the_plugin_from_the_option_and_from_the_run(tmp_path, plugin):
    module, rule = plugin
    runs = tmp_path / "runs"
    args = [QUICKSTART, *SMALL, "--set", "train.epochs=1", "--set", f"rule.name={rule}", "--runs-dir", runs]
    done = mpirun(2, *map(str, args), "--plugin", module)
    assert done.returncode == 0, done.stdout + done.stderr
    run = only_run(runs)
    assert RunDir(run).summary()["status"] == "completed" and RunDir(run).spec().plugins == (module,)
    done = mpirun(2, *map(str, args), "--plugin", "no_such_mpi_plugin")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--plugin: cannot import plugin module 'no_such_mpi_plugin'" in done.stderr
    assert len(list(runs.iterdir())) == 1

    stop = StopRequest()  # a run stopped in its second epoch, resumed on two ranks: each imports the run's plugin
    spec = load_spec(QUICKSTART, [*OVERRIDES, "train.epochs=2", f"rule.name={rule}"], plugins=[module])
    with pytest.raises(Interrupted):
        train(spec, runs_root=tmp_path / "stopped", stop=stop, **stop_at(stop, 2, 3))
    stopped = only_run(tmp_path / "stopped")
    done = mpirun(2, "--resume", str(stopped))
    assert done.returncode == 0, done.stdout + done.stderr
    assert RunDir(stopped).summary()["status"] == "completed" and len(RunDir(stopped).metrics()) == 2
