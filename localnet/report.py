"""`localnet report RUN_DIR...` with several runs: one table comparing them (Markdown, optionally HTML), the numbers
read back from each run directory as training wrote them (summary.json, metrics.jsonl, spec.yaml)."""

from __future__ import annotations

import html
import shlex
import statistics
from dataclasses import dataclass

from .constraints import layer_constraint
from .errors import RunError, printable
from .runs import RunDir
from .spec.names import INPUT_TARGET_LOSSES

# what the run is; its errors at the last epoch, then at the epoch the validation split picks (an auto-encoder's:
# its losses); its time, the first epoch apart (it includes compiling the numba kernels); the diagnostics
COLUMNS = ("run", "spec", "rule", "backend", "data", "epochs", "train error", "test error",
           "best validation error (epoch)", "test error at best validation", "s, epoch 1",
           "s / epoch from epoch 2 (median)", "angle with backprop at the end")
MISSING = "–"


@dataclass
class RunRow:
    """One run's row: every cell already formatted, MISSING where the run has no such number."""

    cells: dict
    warning: str | None = None


def _percent_error(accuracy):
    return f"{100 * (1 - accuracy):.2f} %" if isinstance(accuracy, (int, float)) else MISSING


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def environment_of(run) -> dict | None:
    """A run's environment.json, or None where it is missing or unreadable: the readers here only describe the run,
    and one damaged file must not stop a table or a plot of many."""
    try:
        environment = run.environment()
    except RunError:
        return None
    return environment if isinstance(environment, dict) else None


def overrides(environment) -> list:
    """The `--set` overrides a run was started with, in order, as its environment.json recorded them."""
    given = environment.get("overrides") if isinstance(environment, dict) else None
    return [o for o in given if isinstance(o, str)] if isinstance(given, list) else []


def described(name, environment) -> str:
    """A run's spec name with the `--set` overrides it was made with, but `name=`: the name already says it."""
    given = [o for o in overrides(environment) if not o.startswith("name=")]
    return name + (f" ({', '.join(given)})" if given else "")


def source(environment) -> str | None:
    """The spec file and overrides a run was made from, as the arguments of `localnet run` that make it again."""
    file = environment.get("spec_file") if isinstance(environment, dict) else None
    if not isinstance(file, str):
        return None
    return shlex.join([file, *(arg for o in overrides(environment) for arg in ("--set", o))])


def row(path) -> RunRow:
    """Read one run directory into a row. An auto-encoder (a loss whose target is the input) has no error rate:
    its error cells give the loss instead. The angle is each layer's at the last diagnostics record. Every cell
    is `printable`: what a run directory says reaches a terminal as text, never as escape sequences."""
    run = RunDir(path)
    run.check()
    spec = run.spec()
    summary = run.summary()
    records, skipped = run.read_metrics()
    epochs = [r for r in records if r.get("kind") != "diagnostics" and isinstance(r.get("epoch"), int)]
    diagnostics = [r for r in records if r.get("kind") == "diagnostics" and isinstance(r.get("layers"), dict)]

    status = summary.get("status", "?")
    label = run.path.name + ("" if status == "completed" else f" ({status})")
    reconstructs = spec.network.loss in INPUT_TARGET_LOSSES
    if reconstructs:
        def error(split, scores=summary):
            loss = scores.get(f"{split}_loss")
            return f"loss {loss:.4g}" if _number(loss) else MISSING
    else:
        def error(split, scores=summary):
            return _percent_error(scores.get(f"{split}_accuracy"))
    chosen = summary.get("best_validation")  # the test score of the parameters the validation split picked
    at_best = error("test", chosen) if isinstance(chosen, dict) else MISSING

    best = MISSING
    key, better = ("val_loss", min) if reconstructs else ("val_accuracy", max)
    scored = [r for r in epochs if _number(r.get(key))]
    if scored:
        top = better(scored, key=lambda r: r[key])  # the first epoch that reaches the best value
        value = f"loss {top[key]:.4g}" if reconstructs else _percent_error(top[key])
        best = f"{value} ({top['epoch']})"

    first = [r["seconds"] for r in epochs if r["epoch"] == 1 and _number(r.get("seconds"))]
    later = [r["seconds"] for r in epochs if r["epoch"] > 1 and _number(r.get("seconds"))]

    angle = MISSING
    if diagnostics:
        last = diagnostics[-1]
        parts = [f"{name} {fields['angle_bp']:.1f}°" for name, fields in last["layers"].items()
                 if isinstance(fields, dict) and _number(fields.get("angle_bp"))]
        if parts:
            angle = ", ".join(parts) + f" (epoch {last.get('epoch', '?')}, batch {last.get('batch', '?')})"

    rule = rule_cell(spec)
    environment = environment_of(run)
    backend = environment.get("backend") if environment else None
    cells = {"run": label, "spec": described(spec.name, environment), "rule": rule,
             "backend": backend if isinstance(backend, str) else MISSING, "data": spec.data.name,
             "epochs": str(epochs[-1]["epoch"]) if epochs else "0",
             "train error": error("train"), "test error": error("test"), "best validation error (epoch)": best,
             "test error at best validation": at_best, "s, epoch 1": f"{first[-1]:.2f}" if first else MISSING,
             "s / epoch from epoch 2 (median)": f"{statistics.median(later):.2f}" if later else MISSING,
             "angle with backprop at the end": angle}
    return RunRow({key: printable(cell) for key, cell in cells.items()}, run.metrics_warning(skipped))


def rule_cell(spec) -> str:
    """The rule and the spec options that make it a different experiment (where the first target sits, which
    feedback maps never train), so that FW-DTP does not read as plain DTP in a comparison."""
    from .rules import get_rule
    rule, r = spec.rule.name, get_rule(spec.rule.name)
    if len(r.first_targets) > 1 and "target" in r.backward_kinds(True):  # where its first target sits matters
        rule += f", first target on {'h_L' if spec.rule.first_target == 'output' else 'h_{L-1}'}"
    fixed = [layer.name for layer in spec.network.layers if layer_constraint(layer, "fixed_feedback")]
    if fixed:
        rule += f", fixed feedback on {', '.join(fixed)}"
    return rule


def markdown(rows) -> str:
    """A GitHub-flavoured Markdown table; a `|` inside a cell is escaped."""
    def line(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"
    out = [line(COLUMNS), line(["---"] * len(COLUMNS))]
    out += [line(r.cells[c] for c in COLUMNS) for r in rows]
    return "\n".join(out) + "\n"


def html_page(rows, title="localnet runs") -> str:
    """A self-contained HTML page holding the same table, every cell escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r.cells[c])}</td>" for c in COLUMNS) + "</tr>\n"
                   for r in rows)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}</style></head>\n"
            f"<body><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></body></html>\n")
