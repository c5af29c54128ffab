"""Plugins: Python modules that register rules (`localnet.rules.register_rule`) when they are imported.

A spec names its plugins (`plugins: [module, ...]`), a command adds some (`--plugin MODULE`), and an installed
package offers rules through the `localnet.rules` entry point group, one entry point per rule: its name is the
rule's, its value the module that registers it. The spec's list is imported before the rest of the spec is checked
(localnet/spec/__init__.py), and an entry point only when a spec names a rule nobody has registered, so `import
localnet` never imports a plugin. Every module that provided something is written into the resolved spec's
`plugins`, so whatever later reads a run directory imports the same modules.

Importing a module runs its code: a run directory's `plugins` are untrusted text until they pass `MODULE_NAME`,
and even then they import what the Python path holds under those names (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import re

from .errors import LocalnetError, short_repr

GROUP = "localnet.rules"
# a dotted module name, ASCII only: no path, no relative import, nothing but names Python looks up on its path
MODULE_NAME = (r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*",
               "a dotted Python module name (letters, digits and _, not starting with a digit; parts joined by '.')")
_MODULE = re.compile(MODULE_NAME[0])


class PluginError(LocalnetError):
    """A plugin that cannot be named or imported: `what` failed (naming the module), `reason` is the one-line why
    (a SpecError puts them in its message and its `found`)."""

    def __init__(self, what, reason):
        self.what, self.reason = what, reason
        super().__init__(f"{what}: {reason}")


def import_module(name):
    """Import one plugin module by name; any failure (no such module, an error in its code or in a rule it
    registers) is a PluginError naming the module and the exception, never a traceback."""
    if not isinstance(name, str) or not _MODULE.fullmatch(name):
        raise PluginError(f"plugin {short_repr(name)} is not a module name", f"expected {MODULE_NAME[1]}")
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - whatever the plugin's code raised is reported as one line
        raise PluginError(f"cannot import plugin module {name!r}", _one_line(exc)) from None


def load(modules):
    """Import each of `modules`, a command's --plugin values; the error names the option and the module."""
    for name in modules:
        try:
            import_module(name)
        except PluginError as exc:
            raise PluginError(f"--plugin: {exc.what}", exc.reason) from None


def option(command):
    """The `--plugin MODULE` option (repeatable) of every command that reads a spec or a run directory."""
    import click
    return click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
                        help="Import MODULE first, so a spec may name the rules it registers (repeatable); "
                             "`run` and `sweep` record it in each run's spec.")(command)


def provide_rule(name):
    """Import the module of the installed `localnet.rules` entry point named `name`, which registers that rule;
    its module name, or None where no installed distribution has such an entry point."""
    from importlib import metadata  # only for a rule nobody registered: it reads every installed distribution
    found = {}
    for point in metadata.entry_points(group=GROUP, name=name):
        found.setdefault(point.value, point)  # a distribution seen twice on the path is one
    if not found:
        return None
    if len(found) > 1:
        raise PluginError(f"several installed distributions provide rule {name!r}",
                          "; ".join(f"{_distribution(p)} ({p.value})" for p in found.values()))
    (point,) = found.values()
    module = point.value.partition(":")[0].strip()  # `module` or `module:object`; the import registers the rule
    try:
        import_module(module)
    except PluginError as exc:
        raise PluginError(f"entry point {name!r} of {_distribution(point)}: {exc.what}", exc.reason) from None
    return module


def _distribution(point):
    dist = getattr(point, "dist", None)
    return f"distribution {dist.name} {dist.version}" if dist is not None else "an unnamed distribution"


def _one_line(exc):
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())[:300]
