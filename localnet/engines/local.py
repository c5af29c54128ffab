"""The in-process engine: runs each phase over the schedule and routes messages along channels.

Each node gets, per phase, an `Inbox` of what its declared channels delivered (read-only payloads, every read
recorded in `self.audit`); what it returns is routed on. A node that writes into a received array fails with a
LocalityError naming it; `check_isolation` scans every node for references to another (localnet/isolation.py).

With two workers (`localnet.threads`), work that no message waits for runs beside the chain of messages. In a
training step, as soon as a layer's forward pass is done, its first feedback gradient (which reads only its own
input, f and g, none of which changes before its feedback training); as soon as it has sent its message down, the
rest of its feedback training and its weight-gradient product. In a feedback-only pass, a layer's feedback training
starts as soon as its forward pass is done. The optimiser steps of `update` are shared between the two. Each job
touches only its own layer's state, and the engine joins a job before anything that reads what it writes (a job not
yet started is taken over instead of waited for), so the numbers are the serial engine's, bit for bit, and no
forward parameter changes before `update` (an error in the backward phase leaves them as they were).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import LocalityError, LocalnetError
from ..graph import INPUT, NetworkGraph
from ..isolation import check_isolation
from ..messages import BACKWARD_KINDS, FORWARD_KINDS, KINDS, NO_PROVENANCE, Audit, Inbox, Outbox
from ..threads import cores, layout, set_blas


def _plain(out):
    """A plain dict a node returned, as an Outbox with no provenance, lag or base."""
    tagged = Outbox()
    tagged.update(out)
    return tagged


class LocalEngine:
    def __init__(self, graph: NetworkGraph, nodes: dict, workers: int | None = None, blas: int | None = None):
        """`workers`: job threads (default: the layout `threads.layout` picks); `blas`: BLAS threads per job
        (default: the cores shared out between the job threads)."""
        self.graph, self.nodes = graph, nodes
        self.audit = Audit()
        # DTP-DRL's feedback training reads the feedback maps above, which their own feedback training changes:
        # those layers train their feedback maps one after another, in the serial order
        self._feedback_reads_above = self.feedback_reads_above(graph, nodes)
        if workers is None:
            workers, self.blas = layout(self.runs_beside(graph, nodes))
        else:
            self.blas = max(1, cores() // workers)
        self.blas = blas or self.blas
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="localnet") if workers > 1 else None
        self._feedback_jobs, self._update_jobs = {}, []  # name -> job; jobs: (future, name, phase, method)
        declared = {name: frozenset(c.kind for c in graph.inbound(name, KINDS)) for name in nodes}
        self._forward = [(name, graph.inbound(name, FORWARD_KINDS), declared[name]) for name in graph.forward_order]
        self._backward = [(name, graph.inbound(name, BACKWARD_KINDS), declared[name])
                          for name in graph.backward_order if name != INPUT]
        self._sent = {"forward": {}, "backward": {}}  # phase -> node -> its outbox this step
        self.inboxes = {"forward": {}, "backward": {}}  # phase -> node -> its inbox this step (for the audit)

    @staticmethod
    def runs_beside(graph, nodes) -> bool:
        """Whether the engine lays this net out on two job threads (localnet/threads.py): where it has work to run
        beside its chain of messages and that work pays for the BLAS threads it takes from the chain's products —
        each layer's feedback training (unless it reads the maps above), or, where some family's products are too
        small to split across BLAS threads, each layer's weight gradients too. Never where the backend runs
        everything on one stream."""
        if any(getattr(getattr(node, "k", None), "ONE_THREAD", False) for node in nodes.values()):
            return False
        if len(graph.layers) >= 2 and not all(getattr(nodes[n], "products_split", True) for n in graph.layers):
            return True
        return not LocalEngine.feedback_reads_above(graph, nodes) and len(graph.feedback_layers) >= 2

    @staticmethod
    def feedback_reads_above(graph, nodes) -> bool:
        """Whether some layer's feedback training reads the feedback maps above it (DTP-DRL's round trips)."""
        return any(nodes[name].feedback_service == "round_trip" for name in graph.feedback_layers)

    # -- routing -----------------------------------------------------------------------------------------------
    def _run(self, phase, schedule, call, train):
        sent, audit, inboxes, nodes = self._sent[phase], self.audit, self.inboxes[phase], self.nodes
        for name, channels, declared in schedule:
            messages = []
            for c in channels:
                out = sent[c.sender]
                if type(out) is not Outbox:  # a node may return a plain dict: no provenance, lag or base
                    out = _plain(out)
                key = out.key(c.kind, c.receiver)  # addressed to this receiver, or to every one
                lag = out.lags.get(key, 0) if out.lags else 0
                reference = self._reference(c, out, key, lag) if c.displacement else None
                messages.append(c.deliver(out[key], out.provenance.get(key, NO_PROVENANCE), reference, train, lag))
            inboxes[name] = inbox = Inbox(name, phase, messages, audit, declared)
            try:
                sent[name] = call(nodes[name], inbox)
            except ValueError as exc:
                self._refuse_write(name, phase, inbox, exc)
                raise
            for m in messages:  # numpy lets a view be made writable again when its memory's owner is
                if isinstance(m.payload, np.ndarray) and m.payload.flags.writeable:  # (device arrays have no flag)
                    raise LocalityError(f"layer {name!r} made the {m.kind} it received from {m.sender!r} writable "
                                        f"in the {phase} phase; what a node receives is read-only")

    def _reference(self, c, out, key, lag):
        """(the receiver's activation as the sender saw it, the receiver's own activation of the same step): a
        target crosses a displacement channel as ĥ minus the first and arrives as the second plus that."""
        seen = out.bases.get(key)
        if seen is None:
            seen = self.inboxes["forward"][c.sender].messages(c.receiver)[0].payload
        own = self._sent["forward"][c.receiver]["activation"] if not lag else self.nodes[c.receiver].output_of(lag)
        return seen, own

    @staticmethod
    def _refuse_write(name, phase, inbox, exc):
        """A write into a read-only (received) array becomes a LocalityError naming the node, the phase and what
        it had received; any other ValueError passes."""
        if "read-only" not in str(exc):
            return
        got = (", ".join(f"{m.kind} from {m.sender!r}" for m in inbox.messages())
               if inbox is not None else "its kept input")
        raise LocalityError(f"layer {name!r} tried to write into a read-only array in the {phase} phase "
                            f"({exc}); what a node receives ({got or 'nothing'}) is read-only") from None

    def _guarded(self, name, phase, method):
        try:
            return method()
        except ValueError as exc:
            self._refuse_write(name, phase, None, exc)
            raise

    # -- the phases --------------------------------------------------------------------------------------------
    def forward(self, x, y, train, feedback=False, prepare_feedback=False):
        """Forward phase: every node computes its output from what it received and sends it on. With `feedback`,
        then the feedback phase (`train_feedback`), each layer's part started as soon as its input is there.
        With `prepare_feedback` (a training step, whose feedback phase follows its targets), each layer that can
        takes its first feedback gradient beside the chain as soon as its forward pass is done (one thread: where
        it is used, which gives the same numbers)."""
        self.join()
        overlap = feedback and self._pool is not None and not self._feedback_reads_above
        prepare = prepare_feedback and not feedback and self._pool is not None
        set_blas(self.blas)
        self._sent = {"forward": {}, "backward": {}}
        self.inboxes = {"forward": {}, "backward": {}}
        self.nodes[INPUT].feed(x, y)
        if not overlap and not prepare:
            self._run("forward", self._forward, lambda node, inbox: node.forward(inbox, train), train)
            if feedback:
                self.train_feedback()
            return
        nodes = self.nodes
        starts = {name: self._feedback_of(name) if overlap else nodes[name].prepare_feedback
                  for name in self.graph.feedback_layers if overlap or nodes[name].prepares_feedback}

        def forward_then_start_feedback(node, inbox):
            out = node.forward(inbox, train)
            if node.name in starts:
                self._feedback_jobs[node.name] = self._submit(node.name, "feedback", starts[node.name])
            return out
        with self._settled():
            self._run("forward", self._forward, forward_then_start_feedback, train)

    def train_feedback(self):
        """Feedback phase: each layer with a feedback map fits it to its own forward map, alone; a layer with
        direct targets (DDTP) gets the output's response to its perturbed activation (`response_above`)."""
        if self._feedback_jobs:  # first feedback gradients taken beside the forward pass
            self.join()
        set_blas(self.blas)
        for name in self.graph.feedback_layers:
            self._guarded(name, "feedback", self._feedback_of(name))

    def _feedback_of(self, name):
        node = self.nodes[name]
        service = node.feedback_service  # the non-local service its feedback training needs, if any
        if service == "response":  # DDTP
            return lambda: node.train_feedback(self.response_above(name))
        if service == "round_trip":  # DTP-DRL
            return lambda: node.train_feedback(self.round_trip(name))
        return node.train_feedback

    def _path_above(self, name):
        """The layers an activation of `name` passes through on its way to the loss."""
        from ..graph import LOSS
        path, node = [], name
        while True:
            up = [c.receiver for c in self.graph.outbound(node, ("activation",))]
            if not up or up[0] == LOSS:
                return path
            node = up[0]
            path.append(self.nodes[node])

    def response_above(self, name):
        """h -> the output layer's response when `name`'s activation is h: a forward pass through the layers
        above, each computing its own f (no state change, no channel constraints). Non-local by nature; the read
        is recorded in the audit as an activation from the output computed with the forward weights above."""
        from ..messages import Message
        path = self._path_above(name)

        def respond(h):
            for layer in path:
                h = layer.f(h)
            if self.audit.enabled:
                self.audit.record(name, "feedback", Message("activation", path[-1].name if path else name, h,
                                                            frozenset(("W", "b"))))
            return h
        return respond

    def round_trip(self, name):
        """h -> DTP-DRL's round trip of `name`'s activation h: forward through the layers above to the output, then
        back down as DTP targets through their feedback maps, r_{k-1} = h_{k-1} + g_k(r_k) − g_k(h_k), to `name`
        (no state change, no channel constraints). Non-local by nature; recorded in the audit as a target from
        the layer above, computed with the weights and feedback maps of every layer above."""
        from ..messages import Message
        path = self._path_above(name)

        def trip(h):
            for layer in path:
                h = layer.f(h)
            for layer in reversed(path):
                h = layer.relay_down(h)
            if self.audit.enabled and path:  # the top layer's trip is empty: its own f and g only
                self.audit.record(name, "feedback", Message("target", path[0].name, h,
                                                            frozenset(("W", "b", "V", "c"))))
            return h
        return trip

    def backward(self, start_updates=False, feedback=False):
        """Backward phase: the first target (or ℒ's gradient) enters at the top and goes down the schedule.
        With `start_updates` (nothing is to look at the gradients before `update`), each layer's weight-gradient
        product may start as soon as it has sent its message down (no parameter changes before `update`). With
        `feedback`, then the feedback phase, each layer's part started as soon as the layer has sent its target
        down: its feedback map is not read again in this step (DTP-DRL's round trips read the maps above, so
        those run after the whole phase, in the serial order)."""
        self._sent["backward"], self.inboxes["backward"] = {}, {}
        set_blas(self.blas)
        beside = self._pool is not None
        start_updates = start_updates and beside
        starts = set(self.graph.feedback_layers) if feedback and beside and not self._feedback_reads_above else ()
        layers = self.graph.layers

        def backward_then_start_jobs(node, inbox):
            out = node.backward(inbox)
            if node.name in starts:
                self._feedback_jobs[node.name] = self._submit(node.name, "feedback",
                                                              self._after(self._feedback_jobs.get(node.name),
                                                                          self._feedback_of(node.name)))
            if start_updates and node.name in layers:
                self._update_jobs.append(self._submit(node.name, "update", node.prepare_update))
            return out
        with self._settled():
            self._run("backward", self._backward, backward_then_start_jobs, True)
        if feedback and not starts:
            self.train_feedback()

    def update(self):
        """Apply every layer's forward update, once every feedback training that reads a forward map is done."""
        self.join()
        set_blas(self.blas)
        if self._pool is None:
            for name in self.graph.layers:
                self._guarded(name, "update", self.nodes[name].apply_update)
            return
        self._update_jobs = [self._submit(name, "update", self.nodes[name].apply_update) for name in self.graph.layers]
        self.join()

    # -- jobs beside the chain of messages ---------------------------------------------------------------------
    def _submit(self, name, phase, method):
        return self._pool.submit(self._guarded, name, phase, method), name, phase, method

    def _take(self, job):
        """Wait for `job` (or None), or run it here if the worker has not started it."""
        if job is not None:
            future, name, phase, method = job
            if future.cancel():
                self._guarded(name, phase, method)
            else:
                future.result()

    def _after(self, job, method):
        """`method`, run once `job` (a job started earlier, or None) is done."""
        if job is None:
            return method

        def then():
            self._take(job)
            return method()
        return then

    @contextlib.contextmanager
    def _settled(self):
        """On an error, wait for the other jobs before it surfaces: no job may still change a layer while the
        caller looks at the network (the divergence guard, a checkpoint)."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(BaseException):
                self.join()
            raise

    def join(self):
        """Wait for every job started and not yet joined: after it, every layer's state is the serial engine's."""
        jobs = [*self._feedback_jobs.values(), *self._update_jobs]  # independent of each other by now
        self._feedback_jobs, self._update_jobs = {}, []
        errors = []  # every job is waited for before an error surfaces: none may still change a layer then
        for future, name, phase, method in reversed(jobs):  # take from the back what the worker has not started
            if future.cancel():
                try:
                    self._guarded(name, phase, method)
                except BaseException as exc:
                    errors.append(exc)
        for future, *_ in jobs:
            if not future.cancelled():
                try:
                    future.result()
                except BaseException as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def synchronise(self):
        """Bring every node's state to where `Network.state()` reads it: nothing to do in one process (the MPI
        engine gathers each rank's layers to rank 0 here, before a checkpoint)."""

    # -- channels ----------------------------------------------------------------------------------------------
    def bind_channels(self, seed):
        """Seed every channel's constraints, and tell each layer below a delayed channel how many past steps of
        its own state to keep (the delays along the backward path to it, added up)."""
        for channel in self.graph.channels:
            channel.bind(seed)
        for channel in self.graph.channels:  # targets cross as displacements where either direction is constrained
            up = [c for c in self.graph.outbound(channel.receiver, ("activation",)) if c.receiver == channel.sender]
            channel.displacement = channel.kind == "target" and (
                channel.pipeline is not None or any(c.pipeline is not None for c in up))
        lag = {}
        for name, channels, _ in self._backward:
            lag[name] = max((lag.get(c.sender, 0) + c.delay for c in channels), default=0)
            if lag[name] and hasattr(self.nodes[name], "keep_history"):
                self.nodes[name].keep_history(lag[name])

    def channel_state(self) -> dict:
        """Flat `<sender>><receiver>.<kind>.<key>` -> array for every channel that keeps state (the generator of
        its stochastic constraints, delay queues); empty when none does."""
        return {f"{c.identity}.{k}": v for c in self.graph.channels for k, v in c.state().items()}

    def load_channel_state(self, state: dict):
        """Restore `channel_state()`'s output; every stateful channel must be in it, and nothing else."""
        state = dict(state)
        expected = {c.identity for c in self.graph.channels if c.stateful}
        parts = {}
        for key, value in state.items():
            identity = next((i for i in expected if key.startswith(i + ".")), None)
            if identity is None:
                raise LocalnetError(f"channel state {key!r} belongs to no stateful channel of this network")
            parts.setdefault(identity, {})[key[len(identity) + 1:]] = value
        missing = sorted(expected - set(parts))
        if missing:
            raise LocalnetError(f"no saved state for channel(s) {', '.join(missing)}")
        for c in self.graph.channels:
            if c.stateful:
                c.load_state(parts[c.identity])

    @contextlib.contextmanager
    def channels_preserved(self):
        """Run something (a probe, `Network.targets`) and put every channel's state, and the past steps layers
        keep for delayed messages, back afterwards."""
        saved = self.channel_state()
        kept = {name: node.history.copy() for name, node in self.nodes.items()
                if getattr(node, "history", None) is not None}
        try:
            yield
        finally:
            if saved:
                self.load_channel_state(saved)
            for name, history in kept.items():
                self.nodes[name].history = history

    # -- isolation ---------------------------------------------------------------------------------------------
    def check_isolation(self):
        """LocalityError naming the node and the attribute if any node holds another node, a writable array
        another node holds, or any view of another node's parameters or optimiser state."""
        check_isolation(self.nodes)
