"""The documentation against the code: the tutorial's commands run, in order, as a reader would type them; the spec
reference (generated at build time by docs/hooks/localnet_docs.py) covers every field of the schema; every page is
in the site's navigation; and the commands the README and the pages show name real commands, options, spec files
and spec keys."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import localnet
from localnet.cli import main
from localnet.spec import schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _hook():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (path,) = config["hooks"]
    spec = importlib.util.spec_from_file_location("localnet_docs_hook", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _hook()


# -- the spec reference ------------------------------------------------------------------------------------------

def _schema_classes():
    return {obj for obj in vars(schema).values()
            if dataclasses.is_dataclass(obj) and obj.__module__ == schema.__name__}


def test_the_reference_reaches_every_schema_dataclass():
    assert {cls for cls, _ in hook.sections()} == _schema_classes()


def test_every_schema_field_has_a_row_and_a_description():
    page = hook.render_spec_reference()
    parts = re.split(r"^## .*\{#(\w+)\}$", page, flags=re.M)
    tables = dict(zip(parts[1::2], parts[2::2]))
    missing = []
    for cls in _schema_classes():
        table = tables[cls.__name__.lower()]
        for field in dataclasses.fields(cls):
            key = hook.yaml_key(field)
            rows = [line for line in table.splitlines() if line.startswith(f"| `{key}` |")]
            assert len(rows) == 1, (cls.__name__, key)
            if not hook.description(cls, field):
                missing.append(f"{cls.__name__}.{field.name}")
    assert not missing, ("fields with neither a comment in schema.py nor a line in the hook's DESCRIPTIONS: "
                         + ", ".join(missing))


def test_descriptions_name_only_fields_that_exist():
    keys = {(cls.__name__, hook.yaml_key(f)) for cls in _schema_classes() for f in dataclasses.fields(cls)}
    stale = [(cls, key) for cls, entries in hook.DESCRIPTIONS.items() for key in entries if (cls, key) not in keys]
    assert not stale
    assert set(hook.SECTION_INTROS) <= {cls.__name__ for cls in _schema_classes()}


def test_rows_show_the_fields_defaults_and_choices():
    """Read back independently of the hook's formatting helpers: a plain default and every choice appear in the
    field's row."""
    page = hook.render_spec_reference()
    for cls in _schema_classes():
        for field in dataclasses.fields(cls):
            (row,) = [line for line in page.split(f"{{#{cls.__name__.lower()}}}")[1].split("\n## ")[0].splitlines()
                      if line.startswith(f"| `{hook.yaml_key(field)}` |")]
            cells = [c.strip() for c in row.strip("|").split(" | ")]
            default = field.default
            if default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                assert cells[2] == "**required**", row
            elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
                assert cells[2] == f"`{default}`", row
            choices = field.metadata.get("choices")
            for choice in (choices() if callable(choices) else choices or ()):
                assert f"`{choice}`" in cells[3], (row, choice)
    assert "`ldrl`" in page and "`conv2d`" in page and "`fixed_feedback`" in page  # registries, read at build time


def test_the_cli_reference_lists_every_command_and_option():
    page = hook.render_cli_reference()
    for name, command in main.commands.items():
        assert f"## `localnet {name}`" in page
        for param in command.params:
            for opt in getattr(param, "opts", ()):
                if opt.startswith("--"):
                    assert opt in page, (name, opt)


def test_the_hook_fills_in_the_generated_pages():
    for page, marker in (("spec-reference.md", hook.SPEC_MARKER), ("cli.md", hook.CLI_MARKER)):
        text = (DOCS / page).read_text()
        assert marker in text
        out = hook.on_page_markdown(text, None, None, None)
        assert marker not in out and len(out) > 2 * len(text)


# -- the site ----------------------------------------------------------------------------------------------------

def _nav_pages(items):
    for item in items:
        for value in (item.values() if isinstance(item, dict) else [item]):
            if isinstance(value, list):
                yield from _nav_pages(value)
            else:
                yield value


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = list(_nav_pages(config["nav"]))
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(set(nav)) == len(nav)


def test_the_readme_stays_short():
    assert len(README.read_text().splitlines()) <= 250


def test_the_readme_and_the_results_page_show_the_same_results_table():
    def first_table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("| run | spec |"))
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
        return lines[start:end]
    readme = first_table(README.read_text())
    assert len(readme) == 11 and readme == first_table((DOCS / "results.md").read_text())


def test_the_readmes_links_point_at_files():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


# -- commands on the pages ---------------------------------------------------------------------------------------

def _commands(text):
    """Each `localnet ...` command of a Markdown text: from bash blocks (with `\\` continuations joined and
    `for v in a b; do ...; done` loops expanded) and from inline code spans."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        logical = []
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if not line:
                continue
            if logical and logical[-1].startswith("for ") and not re.search(r"\bdone\s*$", logical[-1]):
                logical[-1] += " " + line
            else:
                logical.append(line)
        lines += logical
    lines += [m.replace("\n", " ") for m in re.findall(r"(?<!`)`((?:mpiexec -n \d+ |COLUMNS=\d+ )?localnet [^`]+)`",
                                                      text)]
    out = []
    for line in lines:
        loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.*?);? done", line)
        if loop:
            var, values, body = loop.groups()
            for value in values.split():
                out += [part.strip().replace(f"${var}", value) for part in body.split(";") if part.strip()]
        else:
            out.append(line)
    return [c for c in out if re.search(r"(^|\s)localnet\s", c)]


def _check_command(line):
    """The command exists, its options exist, its spec file exists and its --set/--grid key paths load."""
    words = shlex.split(re.sub(r"<[^<>]*>", "<placeholder>", line))  # `runs/<run A>` and the like
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)  # environment assignments
    if words[:1] == ["mpiexec"]:
        words = words[3:]
    if words[:4] == ["python", "-m", "mpi4py.futures", "-m"]:
        words = words[4:]
    assert words[0] == "localnet", line
    words = words[1:]
    while words and words[0].startswith("--"):  # group options: --threads N
        assert words.pop(0) in ("--threads", "--version", "--help"), line
        if words and not words[0].startswith("-"):
            words.pop(0)
    if not words or words[0] == "<placeholder>":
        return None  # `localnet --threads N`, `localnet <command> --help`
    assert words and words[0] in main.commands, line
    command = main.commands[words[0]]
    known = {opt for p in command.params for opt in getattr(p, "opts", ())} | {"--help", "-h"}
    spec, overrides = None, []
    args = words[1:]
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            assert name in known, f"{line}: {name} is not an option of `localnet {words[0]}`"
            param = next(p for p in command.params if name in getattr(p, "opts", ()))
            takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
            if takes_value and "=" not in word:
                i += 1
                value = args[i] if i < len(args) else ""
                if name == "--set":
                    overrides.append(value)
                elif name == "--grid":
                    key, _, values = value.partition("=")
                    first = values if "[" in values or "{" in values else values.split(",")[0]
                    overrides.append(f"{key}={first}")
                elif name == "--backend":
                    overrides.append(f"backend={value}")
        elif word.endswith((".yaml", ".yml")) and "<" not in word and "$" not in word:
            spec = word
        i += 1
    usable = [o for o in overrides if "<" not in o]
    for path in _braces(spec) if spec and spec.startswith("specs/") else ():
        assert (ROOT / path).is_file(), f"{line}: no file {path}"
        localnet.load_spec(ROOT / path, usable)  # a SpecError names the key that does not exist
    return words[0]


def _braces(word):
    """Brace expansion, as the shell does it: specs/x-{dtp,bp}.yaml is two files."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [w for part in match.group(1).split(",")
            for w in _braces(word[:match.start()] + part + word[match.end():])]


def _pages():
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "CONTRIBUTING.md"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_on_the_pages_are_real(page):
    commands = _commands(page.read_text())
    if page.name in ("README.md", "tutorial.md", "cli.md", "results.md"):
        assert commands, "found no commands: the extraction is broken"
    for line in commands:
        _check_command(line)


def test_the_command_check_catches_what_drifts():
    for bad in ("localnet rn specs/quickstart.yaml", "localnet run specs/quickstart.yaml --sett x=1",
                "localnet run specs/no-such.yaml", "localnet run specs/quickstart.yaml --set rule.nmae=dtp",
                "localnet sweep specs/quickstart.yaml --grid train.epoch=1,2"):
        with pytest.raises((AssertionError, localnet.SpecError)):
            _check_command(bad)
    assert _commands("```bash\nfor s in dtp bp; do\n  localnet run specs/fashion-mnist-$s.yaml; done\n```") == [
        "localnet run specs/fashion-mnist-dtp.yaml", "localnet run specs/fashion-mnist-bp.yaml"]


# -- the tutorial, run -------------------------------------------------------------------------------------------

def _tutorial():
    text = (DOCS / "tutorial.md").read_text()
    files = dict(re.findall(r'```yaml title="([^"]+)"\n(.*?)```', text, re.S))
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    shown = [block.strip() for block in re.findall(r"```text\n(.*?)```", text, re.S)
             if block.startswith("verdict")]
    return files, blocks, shown


def test_the_tutorial_runs(tmp_path):
    files, blocks, shown = _tutorial()
    assert list(files) == ["first.yaml"] and len(blocks) >= 6 and len(shown) == 2
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    bin_dir = tmp_path / ".bin"  # `localnet` is this checkout's, whatever else is installed
    bin_dir.mkdir()
    shim = bin_dir / "localnet"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m localnet "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCALNET_RUNS", "LOCALNET_THREADS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200", MPLBACKEND="Agg",
               LOCALNET_NO_DOWNLOAD="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    output = ""
    for block in blocks:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
        output += done.stdout
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(list((tmp_path / "runs").glob("*-first-dtp-*"))) == 1
    for verdict in shown:  # the verdicts the page shows are the ones the audit printed
        assert verdict in output
    assert "chosen on validation" in output
