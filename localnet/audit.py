"""The locality audit: what each layer used, per phase, in a real step, and a verdict per rule.

`audit(spec)` builds the network, runs one real training step on a small synthetic batch of the spec's input
shape (no data set is read), and reads what the engine recorded: every read a node made from its inbox
(receiver, phase, kind, sender, and the message's provenance, which its sender declared where it computed it).
The sender's weights are then perturbed, one at a time, with its inbox and forward state held fixed, to measure
which of its backward messages depend on them: a message that changes with the sender's forward weights W
carries them to the receiver (weight transport). The verdict comes from these records and measurements, not
from a table of rules.

Categories of what a layer uses:
  activation from below · label · target from above · target from the output (direct, skipping layers) ·
  global loss gradient (∂ℒ, or a first target made from it) · gradient from the layer above ·
  another layer's weights (the message changes with its sender's W: Wᵀ and s' of the layer above)
Verdicts: local · local apart from the first target · non-local (with the layers and the reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import click
import numpy as np

from .graph import LOSS
from .plugins import option as plugin_option

ACTIVATION = "activation from below"
LABEL = "label"
TARGET_ABOVE = "target from above"
TARGET_OUTPUT = "target from the output (direct)"
LOSS_GRADIENT = "global loss gradient"
GRADIENT_ABOVE = "gradient from the layer above"
WEIGHTS = "another layer's weights"
RESPONSE = "the output's response to noise injected here (a forward pass through the layers above)"
ROUND_TRIP = ("the network's round trip of noise injected here (forward through the layers above, back down "
              "through their feedback maps)")
CATEGORIES = (ACTIVATION, LABEL, TARGET_ABOVE, TARGET_OUTPUT, LOSS_GRADIENT, GRADIENT_ABOVE, WEIGHTS, RESPONSE,
              ROUND_TRIP)

# what a sender declares when its message carries its forward weights (or their signs) to the receiver
TRANSPORTED = frozenset({"Wᵀ", "sign(Wᵀ)"})

LOCAL = "local"
FIRST_TARGET = "local apart from the first target"
NON_LOCAL = "non-local"


@dataclass(frozen=True)
class Use:
    """One kind of message a node read in one phase."""

    receiver: str
    phase: str
    kind: str
    sender: str
    provenance: frozenset  # as declared by the sender
    categories: tuple
    first: bool  # the error enters the network here: ∂ℒ itself, or the first target made from it
    measured: dict | None = None  # sender parameter -> whether the message changes with it (backward only)

    def describe(self):
        made = sorted(self.provenance - {"target", "gradient", "data"})
        via = f" ({', '.join(made)})" if made and self.kind != "activation" else ""
        return f"{self.kind} ← {self.sender}{via}"


@dataclass
class AuditReport:
    rule: str
    first_target: str
    layers: tuple
    uses: list
    verdicts: dict  # layer -> (verdict, reason)
    verdict: str
    reason: str
    provenance_checked: list = field(default_factory=list)  # (sender, kind, receiver, declared, measured, ok)
    feedback: dict = field(default_factory=dict)  # layer -> "trained", "fixed" or None (no feedback map)
    constraints: dict = field(default_factory=dict)  # (sender, receiver, kind) -> what the channel does to it

    @property
    def consistent(self):
        return all(ok for *_, ok in self.provenance_checked)

    def categories(self, layer, phase=None):
        return {c for u in self.uses if u.receiver == layer and (phase is None or u.phase == phase)
                for c in u.categories}

    def to_dict(self):
        return {"rule": self.rule, "first_target": self.first_target, "verdict": self.verdict, "reason": self.reason,
                "layers": {name: {"verdict": self.verdicts[name][0], "reason": self.verdicts[name][1],
                                  "uses": [{"phase": u.phase, "kind": u.kind, "sender": u.sender,
                                            "provenance": sorted(u.provenance), "categories": list(u.categories),
                                            "first": u.first, "measured": u.measured}
                                           for u in self.uses if u.receiver == name]}
                           for name in self.layers},
                "provenance_checked": [{"sender": s, "kind": k, "receiver": r, "declared": sorted(d),
                                        "measured": m, "consistent": ok}
                                       for s, k, r, d, m, ok in self.provenance_checked],
                "constraints": {f"{s} -> {r} ({k})": d for (s, r, k), d in self.constraints.items()}}


# -- classification -----------------------------------------------------------------------------------------------
def _above(graph, receiver, sender):
    """Whether `sender` is the node `receiver` sends its activation to (the layer directly above, or the loss)."""
    return any(c.receiver == sender for c in graph.outbound(receiver, ("activation",)))


def classify(graph, receiver, kind, sender, provenance, transports=None, phase="backward"):
    """(categories, first) of one read. `transports`: whether the message changes with its sender's W (measured);
    None falls back to the sender's declaration (Wᵀ in the provenance)."""
    transports = bool(TRANSPORTED & provenance) if transports is None else transports
    if kind == "activation" and phase == "feedback":  # DDTP's DRL: the output's response to a perturbation
        return (RESPONSE,), False
    if kind == "target" and phase == "feedback":  # DTP-DRL: the perturbation's round trip through the layers above
        return (ROUND_TRIP,), False
    if kind == "activation":
        return (ACTIVATION,), False
    if kind == "label" or (provenance and provenance <= {"data"}):  # DRTP: the label itself, sent down
        return (LABEL,), False
    cats = []
    first = "∂ℒ" in provenance or (kind == "target" and "gradient" in provenance)
    if kind == "target":
        direct = receiver in (getattr(graph, "direct_in", None) or {})  # DDTP: the output's displacement
        cats.append(TARGET_ABOVE if _above(graph, receiver, sender) and not direct else TARGET_OUTPUT)
    elif sender == LOSS or "∂ℒ" in provenance:
        first = True
    else:
        cats.append(GRADIENT_ABOVE)
    if first:
        cats.append(LOSS_GRADIENT)
    if transports:
        cats.append(WEIGHTS)
    return tuple(cats), first


def layer_verdict(uses):
    """(verdict, reason) of one layer from what it used."""
    response = [u for u in uses if RESPONSE in u.categories]
    if response:
        return NON_LOCAL, ("its feedback map is trained on the output's response to noise injected at this layer "
                           f"(a forward pass through the layers above to {response[0].sender}, as in Meulemans et "
                           "al.'s DRL); its targets come straight from the output")
    trip = [u for u in uses if ROUND_TRIP in u.categories]
    if trip:
        return NON_LOCAL, ("its feedback map is trained on the round trip of noise injected at its input: forward "
                           f"through the layers from {trip[0].sender} up to the output, and back down through "
                           "their feedback maps (Meulemans et al.'s DRL for DTP)")
    wrong = [u for u in uses if not u.first and WEIGHTS in u.categories]
    if wrong:
        return NON_LOCAL, "; ".join(f"{u.kind} from {u.sender} computed with " + (
            f"the signs of {u.sender}'s W (weight transport of signs)" if "sign(Wᵀ)" in u.provenance else
            f"{u.sender}'s Wᵀ and s'") for u in wrong)
    firsts = [u for u in uses if u.first]
    if firsts:
        parts = []
        for u in firsts:
            if WEIGHTS in u.categories:
                parts.append(f"first target from {u.sender}, ∂ℒ carried through {u.sender}'s Wᵀ and s'")
            elif u.kind == "target":
                parts.append(f"first target from {u.sender}: ĥ = h − η̂ ∂ℒ/∂h")
            elif u.sender != LOSS:
                parts.append(f"the output's error ∂ℒ/∂a, broadcast from {u.sender} (direct)")
            else:
                parts.append(f"the loss gradient ∂ℒ/∂h from {u.sender}")
        return FIRST_TARGET, "; ".join(parts)
    labels = [u for u in uses if u.phase == "backward" and LABEL in u.categories]
    if labels:  # direct random target projection: the label alone, through the layer's own fixed B
        return LOCAL, f"the label from {labels[0].sender}, through its own fixed feedback weights (no error)"
    fed_back = [u for u in uses if GRADIENT_ABOVE in u.categories]
    if fed_back:  # feedback alignment: an error through the sender's own fixed B, not its W
        return LOCAL, "errors from " + ", ".join(u.sender for u in fed_back) + " through their own feedback " \
            "weights (no weight transport)"
    direct = [u for u in uses if TARGET_OUTPUT in u.categories]
    if direct:
        return LOCAL, "targets from " + ", ".join(u.sender for u in direct) + " (direct feedback)"
    return LOCAL, "activations from below and targets from above only"


def rule_verdict(verdicts):
    non_local = [n for n, (v, _) in verdicts.items() if v == NON_LOCAL]
    if non_local and not any("Wᵀ" in verdicts[n][1] for n in non_local):
        by_reason = {}
        for n in non_local:
            by_reason.setdefault(verdicts[n][1], []).append(n)
        return NON_LOCAL, "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    if non_local:
        return NON_LOCAL, (f"{', '.join(non_local)} learn from gradients that carry the layer above's transposed "
                           "weights Wᵀ and the derivative of its non-linearity s' (weight transport)")
    first = [f"{n}: {r}" for n, (v, r) in verdicts.items() if v == FIRST_TARGET]
    direct = [f"{n}: {r}" for n, (v, r) in verdicts.items() if v == LOCAL and "direct" in r]
    if first:
        return FIRST_TARGET, "; ".join(first + direct)
    return LOCAL, "; ".join(direct) or "every layer learns from its own activations and the targets it received"


# -- measuring provenance -----------------------------------------------------------------------------------------
def measure_backward(net, perturbation=0.5, seed=0):
    """{(sender, kind): {param: changed}} for every layer's backward messages of the last step: each of the
    sender's W and V is perturbed in turn and its backward phase re-run on the same inbox and forward state; the
    parameters, the layer's attributes and the channels are restored afterwards."""
    from .messages import Inbox
    engine, rng = net.engine, np.random.default_rng(seed)
    arrays = net.backend.arrays  # parameters and messages may live on a device
    out = {}
    for name, layer in net.layers.items():
        inbox = engine.inboxes["backward"].get(name)
        if inbox is None:
            continue
        quiet = Inbox(name, "probe", inbox.messages())  # no audit: the probe is not part of the step
        saved = dict(vars(layer))
        try:
            base = layer.backward(quiet)
            results = {_kind(key): {} for key in base}
            for key, param in layer.parameters().items():
                if key not in ("W", "V"):
                    continue
                original = arrays.to_host(param)
                try:
                    arrays.assign(param, original + (perturbation * (np.abs(original).mean() + 1e-3)
                                                     * rng.standard_normal(param.shape)).astype(param.dtype))
                    again = layer.backward(quiet)
                finally:
                    arrays.assign(param, original)
                for sent in base:  # a payload addressed to one of several inputs counts for its kind
                    changed = not np.array_equal(arrays.to_host(base[sent]), arrays.to_host(again[sent]))
                    results[_kind(sent)][key] = results[_kind(sent)].get(key, False) or changed
        finally:
            vars(layer).clear()
            vars(layer).update(saved)
        for kind, changed in results.items():
            out[name, kind] = changed
    return out


def _kind(key):
    """The kind of an outbox key: a kind, or (kind, receiver) for a payload addressed to one receiver."""
    return key if isinstance(key, str) else key[0]


# -- the audit ----------------------------------------------------------------------------------------------------
def audit_network(net, x, y, *, measure=True) -> AuditReport:
    """Run one real training step of `net` on (x, y) with the audit on, and classify what was recorded."""
    graph = net.graph
    engine = net.engine
    enabled = engine.audit.enabled
    engine.audit.enabled = True
    engine.audit.clear()
    try:
        if net.spec.rule.schedule == "alternate_epoch" and graph.feedback_layers:
            net.feedback_step(x, y)
        net.train_step(x, y)
        reads = set(engine.audit.reads)
    finally:
        engine.audit.enabled = enabled
    measured = measure_backward(net) if measure else {}
    net.check_isolation()  # raises LocalityError naming the layer and the attribute

    uses = []
    for receiver, phase, kind, sender, provenance in reads:
        m = measured.get((sender, kind)) if phase == "backward" else None
        transports = m.get("W") if m and "W" in m else None
        cats, first = classify(graph, receiver, kind, sender, provenance, transports, phase)
        uses.append(Use(receiver, phase, kind, sender, provenance, cats, first, m))
    order = {name: i for i, name in enumerate(graph.forward_order)}
    phases = {"forward": 0, "feedback": 1, "backward": 2}
    uses.sort(key=lambda u: (order[u.receiver], phases.get(u.phase, 9), u.kind, u.sender))

    checked = []
    for (sender, kind), m in sorted(measured.items(), key=lambda kv: order[kv[0][0]]):
        receivers = [c.receiver for c in graph.outbound(sender, (kind,))]
        declared = next((u.provenance for u in uses if u.sender == sender and u.kind == kind), frozenset())
        ok = all(m[p] == (p == "W" and bool(TRANSPORTED & declared) or p == "V" and "V" in declared) for p in m)
        checked.extend((sender, kind, r, declared, m, ok) for r in receivers)

    layers = tuple(n for n in graph.forward_order if n in net.layers)
    verdicts = {n: layer_verdict([u for u in uses if u.receiver == n and (u.phase == "backward" or
                                  RESPONSE in u.categories or ROUND_TRIP in u.categories)]) for n in layers}
    verdict, reason = rule_verdict(verdicts)
    feedback = {n: (("fixed" if net.layers[n].feedback_fixed else "trained") if net.layers[n].has_feedback else None)
                for n in layers}
    constraints = {(c.sender, c.receiver, c.kind): c.pipeline.describe() for c in graph.channels
                   if c.pipeline is not None}
    return AuditReport(net.spec.rule.name, net.spec.rule.first_target, layers, uses, verdicts, verdict, reason,
                       checked, feedback, constraints)


def audit(spec, *, batch=16, seed=None, measure=True) -> AuditReport:
    """Build `spec`'s network and audit one real step on a synthetic batch of its input shape."""
    from .data import dataset_shape
    from .network import build
    n_features, n_classes = dataset_shape(spec.data)
    net = build(spec, seed=seed)  # the data set's sample shape and classes; the batch below comes flat
    rng = np.random.default_rng([spec.seed if seed is None else seed, 0xA0D1])
    x = rng.random((batch, n_features)).astype(spec.dtype)
    y = rng.integers(0, n_classes, batch)
    return audit_network(net, x, y, measure=measure)


# -- the command --------------------------------------------------------------------------------------------------
def _cell(uses, constraints, empty="no message"):
    if not uses:
        return f"[dim]{empty}[/]"
    lines = []
    for u in uses:
        cats = [c for c in u.categories if c not in (ACTIVATION, LABEL)]
        text = u.describe()
        via = constraints.get((u.sender, u.receiver, u.kind))
        if via:
            text += f" [magenta]\\[{via}][/]"
        if cats:
            text += f": [dim]{'; '.join(cats)}[/]"
        lines.append(text)
    return "\n".join(lines)


def print_report(report, console):
    from rich.markup import escape
    from rich.table import Table
    targets = any(u.kind == "target" for u in report.uses)  # where the first target sits matters only then
    placement = f", first target on the {report.first_target.replace('_', ' ')}" if targets else ""
    table = Table(title=f"locality audit: {report.rule}{placement} (one real step)", show_lines=True)
    for col in ("layer", "forward", "feedback", "backward", "sends down", "verdict"):
        table.add_column(col)
    names = [*report.layers, LOSS]
    for name in names:
        mine = [u for u in report.uses if u.receiver == name]
        sent = sorted({(u.kind, u.receiver, tuple(sorted(u.provenance - {"target", "gradient", "data"})))
                       for u in report.uses if u.sender == name and u.phase == "backward"})
        sends = "\n".join(f"{k} → {r}" + (f" ({', '.join(p)})" if p else "") for k, r, p in sent) or "-"
        verdict = report.verdicts.get(name, ("", ""))[0]
        style = {"local": "green", FIRST_TARGET: "yellow", NON_LOCAL: "red"}.get(verdict, "")
        g = report.feedback.get(name)
        table.add_row(name, _cell([u for u in mine if u.phase == "forward"], report.constraints),
                      _cell([u for u in mine if u.phase == "feedback"], report.constraints,
                            {"trained": "none (trains g)", "fixed": "none (g fixed)"}.get(g, "-")),
                      _cell([u for u in mine if u.phase == "backward"], report.constraints),
                      escape(sends), f"[{style}]{verdict}[/]" if style else (verdict or "-"))
    console.print(table)
    if any(RESPONSE in u.categories for u in report.uses):
        console.print("Feedback phase: each layer with a direct feedback map trains it on the output's response to "
                      "noise injected at the layer (DDTP's difference reconstruction loss); the update phase reads "
                      "no message.", soft_wrap=True)
    elif any(ROUND_TRIP in u.categories for u in report.uses):
        console.print("Feedback phase: each layer trains g on the round trip of noise injected at its input, "
                      "forward to the output and back down through the feedback maps above (DTP-DRL's difference "
                      "reconstruction loss); the update phase reads no message.", soft_wrap=True)
    elif any(v == "trained" for v in report.feedback.values()):
        console.print("The feedback and update phases read no message: a layer trains g on its own f around the "
                      "input it kept from the forward phase, and steps its own optimiser.", soft_wrap=True)
    else:
        console.print("The update phase reads no message: a layer steps its own optimiser"
                      + (" (its feedback map is fixed)." if any(report.feedback.values()) else "."), soft_wrap=True)
    style = {"local": "green", FIRST_TARGET: "yellow", NON_LOCAL: "red"}[report.verdict]
    console.print(f"[bold]verdict ({escape(report.rule)}{escape(placement)}):[/] [{style}]{report.verdict}[/]: "
                  f"{escape(report.reason)}", soft_wrap=True)
    if report.provenance_checked:
        bad = [c for c in report.provenance_checked if not c[-1]]
        if bad:
            for s, k, r, d, m, _ in bad:
                console.print(f"[red]provenance mismatch:[/] {escape(s)} declares {sorted(d)} for its {k} to "
                              f"{escape(r)}, but it changes with {sorted(p for p, v in m.items() if v)}",
                              soft_wrap=True)
        else:
            console.print(f"provenance checked: {len(report.provenance_checked)} backward message(s); each changes "
                          "with its sender's W exactly when it declares Wᵀ (or its signs), and with V exactly when it "
                          "declares V "
                          "(perturbation, inbox held fixed)", soft_wrap=True)
    console.print("isolation: ok (no layer holds another node, another's parameters or optimiser state, or memory "
                  "another may write)", soft_wrap=True)


@click.command(name="audit")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a spec value, e.g. --set rule.name=bp.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Size of the synthetic batch the step runs on.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@plugin_option
def audit_command(spec_path, overrides, batch, as_json, plugins=()):
    """Run one real step of SPEC on a synthetic batch and print, per layer and phase, which messages it used
    (and from whom, computed with what), then a locality verdict for the rule. Exits 1 when a provenance claim
    does not match its measurement."""
    from .cli import _fail_cleanly, console
    from .spec import load_spec

    @_fail_cleanly
    def run():
        spec = load_spec(spec_path, overrides, plugins)
        report = audit(spec, batch=batch)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            print_report(report, console)
        return report

    report = run()
    if not report.consistent:
        raise SystemExit(1)

