"""MkDocs hook: pages generated from the code at build time, so that they cannot drift from it.

- `<!-- localnet:spec-reference -->` becomes the spec reference: every section and key of the schema dataclasses
  (`localnet/spec/schema.py`) with its type, default, bounds and choices read from the dataclass fields and their
  `option(...)` metadata, and a description (the comment on the field in schema.py where there is one, else the
  line in DESCRIPTIONS below; tests/test_docs.py checks that every field has one and that DESCRIPTIONS names no
  field that does not exist).
- `<!-- localnet:cli-reference -->` becomes every command of `localnet` with its options, read from the click
  commands themselves.

The repository root goes first on sys.path, so the pages describe this checkout whatever else is installed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPEC_MARKER = "<!-- localnet:spec-reference -->"
CLI_MARKER = "<!-- localnet:cli-reference -->"

# What each key means, where schema.py has no comment on the field. Types, defaults, bounds and choices never
# come from here: they are read from the fields.
DESCRIPTIONS = {
    "Spec": {
        "name": "The run's name: run directories are called `<date>-<time>-<name>-<id>`.",
        "data": "The data set and its splits.",
        "network": "The layers, the loss, the default feedback map and the channels.",
        "rule": "The learning rule and its parameters.",
        "optimizer": "The default optimiser of the forward weights and of the feedback maps.",
        "train": "Epochs, batches, checkpoints and the training schedule's options.",
        "diagnostics": "The non-local probe (angles with backprop and the like); off by default.",
        "seed": "Seeds every layer's generator, every channel's and the data order; same seed, same numbers on "
                "one backend.",
        "dtype": "The floating-point type of parameters, activations and messages.",
        "backend": "The kernels: `numpy` is the reference; `auto` picks the fastest installed (numba; cuda only "
                   "with a real GPU, never the simulator).",
        "description": "Free text, kept in the resolved spec.",
    },
    "DataSpec": {
        "download": "Whether a data set that is found nowhere may be downloaded (also `LOCALNET_NO_DOWNLOAD=1`).",
    },
    "NetworkSpec": {
        "layers": "The layers, in order (see the layer section below); the last one feeds the loss.",
        "loss": "`softmax_cross_entropy` or `mse` against the label; `reconstruction`: ‖h_L − x‖² against the "
                "clean input (auto-encoders: the output has one unit per input feature).",
        "init": "The default initialisation of forward weights; a layer's `init` overrides it.",
        "feedback": "The default feedback map of every layer that needs one; a layer's own `feedback:` replaces "
                    "it whole.",
        "chain": "The order the channels follow, e.g. `[input, h1, h2, out, loss]`; the default is the layers in "
                 "order (or their `inputs`).",
        "channels": "Every channel spelled out instead of `chain`.",
    },
    "LayerSpec": {
        "name": "The layer's name (also its checkpoint file's and a step of `--set` key paths).",
        "type": "The layer's family.",
        "inputs": "The nodes whose activations the layer takes (`input` or layers listed before it), in order; by "
                  "default the layer listed before it.",
        "size": "Units of a `dense` layer.",
        "channels": "Output channels of a `conv2d` block.",
        "kernel": "A `conv2d` block's square kernel size.",
        "stride": "A `conv2d` block's stride.",
        "padding": "A `conv2d` block's zero padding.",
        "pool": "A `conv2d` block's optional pooling after the activation.",
        "pool_size": "The pooling window (and stride) of a `conv2d` block.",
        "activation": "The non-linearity s of h = s(a); `step` and `stochastic_binary` train with a "
                      "straight-through surrogate derivative.",
        "bias": "Whether the layer has a forward bias b.",
        "init": "This layer's forward initialisation (default: `network.init`).",
        "optimizer": "This layer's forward optimiser, replacing `optimizer.forward` for it.",
        "feedback": "This layer's feedback map, replacing `network.feedback` for it.",
    },
    "FeedbackSpec": {
        "activation": "The non-linearity s̄ of g(h) = s̄(h V + c).",
        "init": "The initialisation of V.",
        "bias": "Whether g has a bias c.",
        "optimizer": "This map's optimiser, replacing `optimizer.feedback`.",
        "noise": "This map's own σ, replacing `rule.feedback_noise` (Ernoult et al. set it per layer).",
        "iterations": "This map's own feedback steps per batch, replacing `rule.feedback_iterations`.",
    },
    "ChannelSpec": {
        "from": "The sending node: a layer, or `input` or `loss`.",
        "to": "The receiving node.",
        "kind": "What the channel carries.",
        "constraints": "Constraints on this channel, applied after the network's and the sending layer's.",
    },
    "ConstraintSpec": {
        "type": "The constraint (see Constraints).",
        "kind": "Limit a message constraint to channels of this kind.",
        "std": "`noise`: the standard deviation of the Gaussian noise added (with `relative: true`, in units of "
               "each sample's RMS of what crosses: for a target, of its displacement).",
        "bits": "`quantize`: bits per value (2^bits − 1 levels symmetric about 0).",
        "range": "`quantize`: clip to ±range instead of scaling by each sample's largest magnitude.",
        "p": "`drop`: the probability that a sample's message is lost.",
        "steps": "`delay`: how many steps late messages arrive.",
        "scale": "`fixed_feedback`: V and c are drawn from U(±scale).",
    },
    "RuleSpec": {
        "name": "The rule (see Rules); a rule registered with `localnet.rules.register_rule` adds its name.",
        "target_step": "η̂ in the first target ĥ = h − η̂ ∂ℒ/∂h.",
        "first_target": "`output`: the first target is set on h_L; `last_hidden` (Lee et al. 2015): the output "
                        "layer learns from ℒ and the first target is set on h_{L-1}.",
        "feedback_noise": "σ of the noise feedback training corrupts with.",
        "feedback_iterations": "Feedback training steps per batch.",
        "schedule": "`alternate_batch`: targets through g as it was, then feedback training, then the forward "
                    "update, on each batch; `alternate_epoch` (Lee et al.'s code): a feedback-only pass, then a "
                    "forward-only pass, per epoch; `feedback_first` (Ernoult et al.'s code): g trained on the "
                    "batch first, then targets through the new g.",
        "feedback_noise_decay": "τ > 0: σ / (1 + (e − 1)/τ) in epoch e (from 1); 0: constant.",
    },
    "OptimizersSpec": {
        "forward": "The optimiser of every layer's forward weights (a layer's `optimizer` overrides it).",
        "feedback": "The optimiser of every feedback map (a feedback map's `optimizer` overrides it).",
    },
    "OptimizerSpec": {
        "type": "`sgd`, `rmsprop` (eps inside the square root, optionally centered) or `adam` (eps outside). "
                "States flush to zero below the smallest normal number.",
        "lr": "The learning rate (the schedule's maximum).",
        "momentum": "`sgd` and `rmsprop`: momentum.",
        "betas": "`adam`: the decay rates of the first and second moments.",
        "alpha": "`rmsprop`: the decay rate of the squared-gradient average.",
        "eps": "The term that keeps the division finite.",
        "centered": "`rmsprop`: divide by the variance rather than the raw second moment (Graves 2013).",
        "weight_decay": "L2 weight decay added to the gradient.",
        "schedule": "`constant`, or `cosine`: PyTorch's CosineAnnealingLR stepped once per epoch, "
                    "min_lr + (lr − min_lr)(1 + cos(π (e − 1)/T))/2 in epoch e.",
        "schedule_epochs": "T of the cosine schedule (default: `train.epochs`).",
        "min_lr": "The cosine schedule's minimum.",
    },
    "TrainSpec": {
        "epochs": "Training epochs (passes over the training split).",
        "batch_size": "Samples per training batch.",
        "shuffle": "Reshuffle the training split each epoch (from the data-order generator).",
        "eval_batch_size": "Samples per batch when evaluating.",
        "checkpoint_every": "Write a checkpoint every N epochs, and always at the end and when stopped by SIGINT "
                            "or SIGTERM; 0: only then.",
        "input_noise": "σ of Gaussian noise added to training inputs only (not to evaluation's, nor to a "
                       "reconstruction loss's target).",
        "eval_samples": "Evaluate stochastic units by the mean of this many sampled passes' output probabilities; "
                        "0: one pass with the units' mean activations.",
    },
    "DiagnosticsSpec": {
        "every": "Measure every N-th learning batch; 0: off, at no cost.",
    },
}


# A sentence or two above a section's table, where the keys need one.
SECTION_INTROS = {
    "Spec": "A spec is one YAML mapping with these keys; `name`, `data` and `network` are required.",
    "LayerSpec": "One item of `network.layers`. Which keys apply depends on `type`: `dense` needs `size`; "
                 "`conv2d` needs `channels` and `kernel` and takes `stride`, `padding`, `pool` and `pool_size`; "
                 "`flatten` and `add` have no parameters. See [Writing specs](spec.md) for conv blocks and graphs.",
    "ConstraintSpec": "One item of a `constraints:` list, on a channel, a layer (every channel out of it, or its "
                      "own weights) or the network (every channel). Message constraints: `noise` (`std`), "
                      "`quantize` (`bits`, optional `range`), `sign`, `drop` (`p`), `delay` (`steps`; targets and "
                      "gradients only), each optionally for one `kind`. Layer constraints: `fixed_feedback` "
                      "(optional `scale`), `sign_constrained`. See [Constraints](constraints.md).",
    "ChannelSpec": "One item of `network.channels`: a directed channel between two nodes (layers, or the "
                   "reserved nodes `input` and `loss`).",
    "OptimizerSpec": "An optimiser, wherever one is given: `optimizer.forward`, `optimizer.feedback`, a layer's "
                     "`optimizer` or a feedback map's.",
}


# -- the schema, read from the dataclasses -----------------------------------------------------------------------

def _schema():
    from localnet.spec import schema
    return schema


def yaml_key(field) -> str:
    return field.metadata.get("alias") or field.name


def _dataclasses_in(tp):
    """The schema dataclasses a field's type mentions (inside Optional, tuples and unions)."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for arg in typing.get_args(tp) for c in _dataclasses_in(arg)]


def _children(cls):
    """[(field, nested dataclass, whether it is a list item)] of a schema dataclass."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        listed = typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp))
        out.extend((field, sub, listed) for sub in _dataclasses_in(tp))
    return out


def sections():
    """[(dataclass, [every YAML path where it appears])], breadth first from Spec, each dataclass once."""
    schema = _schema()
    where = {schema.Spec: ["(top level)"]}

    def walk(cls, prefix):
        for field, sub, listed in _children(cls):
            path = f"{prefix}{yaml_key(field)}" + ("[]" if listed else "")
            paths = where.setdefault(sub, [])
            if path not in paths:
                paths.append(path)
            walk(sub, path + ".")

    walk(schema.Spec, "")
    order, i = [schema.Spec], 0
    while i < len(order):
        for _, sub, _ in _children(order[i]):
            if sub not in order:
                order.append(sub)
        i += 1
    return [(cls, where[cls]) for cls in order]


def all_fields():
    """{(class name, field name)} of every field of every schema dataclass reachable from Spec."""
    return {(cls.__name__, f.name) for cls, _ in sections() for f in dataclasses.fields(cls)}


def source_comments(cls) -> dict:
    """{field name: comment text} from schema.py: a comment on the field's line, or the comment lines right
    above it."""
    source = inspect.getsource(cls)
    comments = {}  # line number -> text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    (node,) = ast.parse(source).body
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            parts, n = [], stmt.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#") and n in comments:
                parts.insert(0, comments[n])
                n -= 1
            if stmt.lineno in comments and not lines[stmt.lineno - 1].strip().startswith("#"):
                parts.append(comments[stmt.lineno])
            if parts:
                found[stmt.target.id] = " ".join(parts)
    return found


def _plural(text: str) -> str:
    head, sep, tail = text.partition(" ")
    plural = {"mapping": "mappings", "string": "strings", "integer": "integers", "number": "numbers",
              "boolean": "booleans"}.get(head)
    return (plural + sep + tail) if plural else text


def type_text(tp) -> str:
    """A field's type in words, with a link to the section of a nested mapping."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return f"[mapping](#{tp.__name__.lower()})"
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return text + (" or null" if len(rest) < len(args) else "")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return "list of " + _plural(type_text(args[0]))
        if len(set(args)) == 1:
            return f"list of {len(args)} " + _plural(type_text(args[0]))
        return "list of " + ", ".join(type_text(a) for a in args)
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _choices(field):
    choices = field.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return tuple(choices) if choices else ()


def default_text(field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return f"[its defaults](#{type(value).__name__.lower()})"
    else:
        return "**required**"
    if value is None:
        return "–"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _number(value) -> str:
    return f"{value:,}".replace(",", " ") if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def allowed_text(field) -> str:
    meta = field.metadata
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {_number(meta['gt'])}")
    if meta.get("ge") is not None:
        parts.append(f"≥ {_number(meta['ge'])}")
    if meta.get("le") is not None:
        parts.append(f"≤ {_number(meta['le'])}")
    choices = _choices(field)
    if choices:
        parts.append(", ".join(f"`{c}`" for c in choices))
    if meta.get("pattern"):
        parts.append(meta["pattern"][1])
    return "; ".join(parts)


_LINKS = {"(docs/mpi.md)": "(see [MPI](mpi.md))", "docs/mpi.md": "[MPI](mpi.md)"}


def description(cls, field, comments=None) -> str:
    """DESCRIPTIONS' line for the field, else its comment in schema.py; '' when it has neither."""
    comments = source_comments(cls) if comments is None else comments
    text = DESCRIPTIONS.get(cls.__name__, {}).get(yaml_key(field)) or comments.get(field.name) or ""
    for old, new in _LINKS.items():
        if old in text:
            text = text.replace(old, new)
            break
    if text[:1].isascii() and text[:1].islower():
        text = text[0].upper() + text[1:]
    if text and not text.endswith((".", ")")):
        text += "."
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_spec_reference() -> str:
    out = []
    for cls, paths in sections():
        paths = sorted(paths, key=lambda p: (p.count("."), len(p)))
        title = "Top level" if paths == ["(top level)"] else f"`{paths[0]}`"
        out.append(f"## {title} {{#{cls.__name__.lower()}}}\n")
        if len(paths) > 1:
            out.append("Also at " + ", ".join(f"`{p}`" for p in paths[1:]) + ".\n")
        intro = SECTION_INTROS.get(cls.__name__)
        if intro:
            out.append(intro + "\n")
        out.append(f"Schema: `{cls.__name__}`.\n")
        out.append("| key | type | default | allowed | meaning |")
        out.append("|---|---|---|---|---|")
        hints = typing.get_type_hints(cls)
        comments = source_comments(cls)
        for field in dataclasses.fields(cls):
            out.append("| " + " | ".join(_cell(c) for c in (
                f"`{yaml_key(field)}`", type_text(hints[field.name]), default_text(field), allowed_text(field),
                description(cls, field, comments))) + " |")
        out.append("")
    return "\n".join(out)


# -- the command line, read from click ---------------------------------------------------------------------------

def render_cli_reference() -> str:
    import click
    from localnet.cli import main

    out = []
    ctx = click.Context(main, info_name="localnet")
    out.append("## `localnet`\n")
    out.append("```text\n" + main.get_help(ctx).strip() + "\n```\n")
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        out.append(f"## `localnet {name}`\n")
        out.append("```text\n" + command.get_help(sub).strip() + "\n```\n")
    return "\n".join(out)


# -- the MkDocs hook ---------------------------------------------------------------------------------------------

def on_page_markdown(markdown, page, config, files):
    if SPEC_MARKER in markdown:
        markdown = markdown.replace(SPEC_MARKER, render_spec_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, render_cli_reference())
    return markdown
