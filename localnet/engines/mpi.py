"""The MPI engine: layers on ranks, messages as typed buffers (`mpiexec -n K localnet run SPEC --engine mpi`).

Every rank builds the same Network from the same spec and seed (so every rank holds the same initial parameters),
but during a step a rank runs only the nodes placed on it and never reads another node's state. Rank 0 drives:
it owns the data, the run directory, logging and checkpoints, and runs the training loop; before each phase it
sends every other rank a small command (int64[2]: phase, train flag), and the other ranks (`serve`) run that
phase for their own nodes. `input` is on rank 0; `loss` is on the rank of the layer that feeds it.

What crosses ranks: along a channel whose two ends are on different ranks, the sender's rank sends an int64[2]
header (provenance as a bit mask, lag) and the payload as a contiguous numpy buffer of the channel's dtype
(`Isend`; never a pickled object on the hot path); the receiver's rank learns the batch size from the probed
message size, receives into a fresh buffer and delivers it through the channel (constraints act there, on the
receiver's rank, exactly as in the local engine). Schedules, routing and inboxes are the local engine's.

Same numbers: the arithmetic each node does is the local engine's, in the same order, on the same inputs, so the
parameters after N steps are bit-identical for any K (tests/test_mpi.py checks K = 2 and 3).

Placement (`resolve_placement`): the CLI's `--placement`, else the spec's `placement` section, else contiguous
groups balanced by parameter count. Pipelining (`train.pipeline`): target and gradient channels that cross ranks
deliver the previous step's message (`_late`), so a rank goes on to the next batch instead of waiting for the
targets from above; the numbers are the local engine's with one more step of delay on those channels.

Faults (DESIGN.md §7): every wait polls with a deadline ($LOCALNET_MPI_TIMEOUT seconds, default 30; commands, and
the first step, wait 10x that) and names the rank and channel it waited for. A rank that raises sends its error to
rank 0 and aborts the job after a short grace; rank 0 notices the report in any wait, raises `RankFailed` naming
the rank and its error (the run's summary records it; the last checkpoint is untouched) and aborts every rank. An
error every rank has while building its engine (a bad placement) is agreed on instead (`_agree`): no rank aborts,
rank 0 reports it. hydra passes SIGINT/SIGTERM to every rank and all but rank 0 ignore them: rank 0 checkpoints at
the next batch boundary and stops every rank as at the end of a run (`STOP`), so the job exits 130.

Checkpoints: `synchronise()` (called before a checkpoint) gathers each rank's layer and channel states into rank
0's copies, so rank 0 writes the usual one-file-per-layer checkpoint; the first phase after build or resume
pushes rank 0's states to the other ranks, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import warnings

import numpy as np

from ..errors import GraphError, Interrupted, LocalnetError, LocalnetWarning, SpecError
from ..graph import INPUT, LOSS
from ..messages import BACKWARD_KINDS, FORWARD_KINDS, NO_PROVENANCE, PROVENANCE, Message, Outbox
from ..threads import cores, layout, limit_blas
from .local import LocalEngine

LATE_KINDS = ("target", "gradient")  # what a pipelined schedule delivers a step late where it crosses ranks

_BITS = {tag: 1 << i for i, tag in enumerate(PROVENANCE)}
_TAGS_OF = {}  # bit mask -> frozenset of provenance tags

# message tags
ERROR, LOSS_REPORT, STATE, COMMAND, CHANNEL_BASE = 1, 2, 3, 4, 100
# commands
FORWARD, FEEDBACK, BACKWARD, UPDATE, SYNC, PUSH, STOP, STATS, COLLECT = range(1, 10)
PHASE_NAMES = {FORWARD: "forward", FEEDBACK: "feedback", BACKWARD: "backward", UPDATE: "update", SYNC: "sync",
               PUSH: "push", STOP: "stop", STATS: "stats", COLLECT: "collect"}


class RankFailed(LocalnetError):
    """Another rank raised, died or stopped answering; the message names it and its error."""


class EngineRefused(LocalnetError):
    """Building the engine failed on every rank alike (`_agree`): rank 0 reports it, the others exit quietly."""


def _mask(provenance):
    m = 0
    for tag in provenance:
        m |= _BITS[tag]
    return m


def _provenance(mask):
    tags = _TAGS_OF.get(mask)
    if tags is None:
        tags = _TAGS_OF[mask] = frozenset(t for t, b in _BITS.items() if mask & b) or NO_PROVENANCE
    return tags


def threads_per_rank(comm):
    """BLAS threads for each rank: this machine's cores shared by the ranks on it (at least one), so K ranks on
    K cores do not oversubscribe them. Collective: every rank calls it."""
    from mpi4py import MPI
    return max(1, cores() // comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size())


def timeout_seconds():
    return float(os.environ.get("LOCALNET_MPI_TIMEOUT", "30"))


def auto_placement(spec_layers, sizes, ranks):
    """layer -> rank: contiguous groups in spec order that minimise the largest group's parameter count (exact,
    by dynamic programming; ties go to the split that puts more on the earlier ranks). With fewer layers than
    ranks, the last ranks get none."""
    n = len(spec_layers)
    k = max(1, min(ranks, n))
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    inf = float("inf")
    # best[g][i]: the smallest possible largest group when the first i layers form g groups; cut[g][i]: where
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for g in range(1, k + 1):
        for i in range(g, n + 1):
            for j in range(i - 1, g - 2, -1):  # the last group is layers j..i-1
                cost = max(best[g - 1][j], prefix[i] - prefix[j])
                if cost < best[g][i]:
                    best[g][i], cut[g][i] = cost, j
    placement, i = {}, n
    for g in range(k, 0, -1):
        j = cut[g][i]
        for name in spec_layers[j:i]:
            placement[name] = g - 1
        i = j
    return placement


def resolve_placement(spec, layers, sizes, ranks, override=None):
    """layer -> rank for `ranks` running ranks: the CLI's `--placement` (`override`), else the spec's `placement`
    section, else automatic. A spec placement that needs more ranks than are running is a SpecError naming its
    line, raised alike on every rank (so every rank stops)."""
    if override is not None:
        return parse_placement(override, layers) if isinstance(override, str) else dict(override)
    if spec.placement is None:
        return auto_placement(list(layers), sizes, ranks)
    used = max((r for r, names in enumerate(spec.placement) if names), default=0) + 1
    if used > ranks:
        from ..graph import spec_error
        raise spec_error(spec, ("placement",), f"the placement puts layers on {used} ranks; mpiexec started {ranks}",
                         expected=f"layers on ranks 0..{ranks - 1} (mpiexec -n {ranks})",
                         found=f"layers on rank {used - 1}")
    return {name: rank for rank, names in enumerate(spec.placement) for name in names}


def parse_placement(text, layers):
    """`h1=0,h2=1,...` -> {layer: rank}; every layer must be named."""
    placement = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rank = part.partition("=")
        if name not in layers or not rank.strip().isdigit():
            raise LocalnetError(f"placement {part!r}: expected <layer>=<rank> with a layer of {', '.join(layers)}")
        placement[name] = int(rank)
    missing = [name for name in layers if name not in placement]
    if missing:
        raise LocalnetError(f"placement names no rank for layer(s) {', '.join(missing)}")
    return placement


def parameter_counts(graph, nodes):
    return [sum(v.size for v in nodes[name].parameters().values()) for name in graph.layers]


def engine_factory(spec, comm=None, placement=None):
    """(graph, nodes) -> MPIEngine for `spec`: its placement (`placement`, the CLI's, overrides the spec's) and
    its pipelined schedule (`train.pipeline`)."""
    def factory(graph, nodes):
        from mpi4py import MPI
        world = comm or MPI.COMM_WORLD
        engine, error = None, None
        try:
            layers = resolve_placement(spec, graph.layers, parameter_counts(graph, nodes), world.Get_size(),
                                       placement)
            engine = MPIEngine(graph, nodes, world, layers, pipeline=spec.train.pipeline)
        except LocalnetError as exc:
            error = exc
        _agree(world, error)
        return engine
    return factory


def _agree(comm, error):
    """Collective, once per engine built: whether any rank failed to build its engine (`error`). A bad placement
    fails alike on every rank, and each aborting the job raced (K messages; an MPI_Abort that returned); so no rank
    aborts: every rank raises a SpecError it had as it is (naming its line), else EngineRefused with the first
    failing rank's error; `_run` has rank 0 report it and the others exit quietly."""
    failed = [(r, text) for r, text in enumerate(comm.allgather(None if error is None else str(error))) if text]
    if not failed:
        return
    if isinstance(error, SpecError):
        raise error
    rank, text = failed[0]
    raise EngineRefused(text if error is not None else f"rank {rank} could not build its engine: {text}")


def _abort(comm, code=1):
    """MPI_Abort, then exit: under mpich's hydra it returns when another rank's abort is already ending the job,
    and nothing after it may run as if the job went on."""
    comm.Abort(code)
    os._exit(code)


class MPIEngine(LocalEngine):
    def __init__(self, graph, nodes, comm=None, placement=None, pipeline=False):
        super().__init__(graph, nodes, workers=1)  # one thread per rank: the ranks are the parallelism
        self.blas = None  # BLAS threads per rank are set once for the whole run (`threads_per_rank`)
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if placement is None:
            placement = auto_placement(list(graph.layers), parameter_counts(graph, nodes), self.size)
        bad = {k: r for k, r in placement.items() if not 0 <= r < self.size}
        if bad:
            raise LocalnetError(f"placement puts {bad} on ranks outside 0..{self.size - 1}")
        direct = [n for n in graph.layers if nodes[n].feedback_service == "response"]
        if direct and self.size > 1:
            raise LocalnetError(f"layers {', '.join(direct)} train direct feedback maps (DDTP) on the output's "
                                "response, a forward pass through every layer above them; the MPI engine does "
                                "not support that yet: run DDTP with the local engine")
        top = next(c.sender for c in graph.inbound(LOSS, ("activation",)))
        trips = [n for n in graph.feedback_layers if n != top  # the top layer's round trip is empty
                 and nodes[n].feedback_service == "round_trip"]
        if trips and self.size > 1:
            raise LocalnetError(f"layers {', '.join(trips)} train their feedback maps on the network's round trip "
                                "(DTP-DRL), forward and back through every layer above them; the MPI engine does "
                                "not support that yet: run DTP-DRL with the local engine")
        feeder = next(c.sender for c in graph.inbound(LOSS, ("activation",)))
        self.placement = {INPUT: 0, **placement, LOSS: placement[feeder]}
        self.local = frozenset(n for n, r in self.placement.items() if r == self.rank)
        self.tags = {c.identity: CHANNEL_BASE + 2 * i for i, c in enumerate(graph.channels)}
        # pipelined schedule: targets (gradients) that cross ranks arrive one step late (docs/mpi.md, "Pipelining")
        self.late = frozenset(c.identity for c in graph.channels if pipeline and c.kind in LATE_KINDS
                              and self.placement[c.sender] != self.placement[c.receiver])
        self._in_flight = set()  # late channels into this rank with last step's message not yet received
        self._late_provenance = {}  # late channel -> provenance of the last message it received
        self._deferred = []  # sends on late channels: completed when the receiver takes them, a step later
        self.timeout = timeout_seconds()
        self._out = {phase: {name: [c for c in graph.outbound(name, kinds)
                                    if self.placement[c.receiver] != self.rank]
                             for name in self.local}
                     for phase, kinds in (("forward", FORWARD_KINDS), ("backward", BACKWARD_KINDS))}
        self._pending = []  # (request, buffer, what) of sends not yet complete
        self._pushed = self.rank != 0
        self._loss_pending = False
        self._steps = 0
        self.stats = {"messages": 0, "bytes": 0, "comm_seconds": 0.0}
        fail = os.environ.get("LOCALNET_MPI_FAIL", "")  # "<rank>:<forward call>": inject a failure (tests)
        parts = fail.split(":")
        self._fail_at = int(parts[1]) if fail and int(parts[0]) == self.rank else None
        self._fail_how = parts[2] if len(parts) > 2 else "raise"  # raise | exit (dies without a word)

    # -- waiting, with deadlines -------------------------------------------------------------------------------
    def _wait(self, test, what, timeout=None):
        """Poll `test()` until it is true; RankFailed when another rank reported an error or the deadline
        passes (naming `what` this rank waited for). The first step's waits get a command's deadline, 10x: the
        ranks may be compiling their kernels (numba, no cache yet)."""
        if test():
            return
        began = time.perf_counter()
        if timeout is None:
            timeout = self.timeout * (10 if self._steps <= 1 else 1)
        deadline = began + timeout
        spins = 0
        comm, MPI = self.comm, self.MPI
        while not test():
            spins += 1
            if spins % 64 == 0:
                if comm.Iprobe(MPI.ANY_SOURCE, ERROR):
                    self._remote_failure()
                now = time.perf_counter()
                if now > deadline:
                    raise RankFailed(f"rank {self.rank} waited {now - began:.0f} s for {what}; no answer")
                if spins > 2000:
                    time.sleep(0.0002)
        self.stats["comm_seconds"] += time.perf_counter() - began

    def _remote_failure(self):
        status = self.MPI.Status()
        report = self.comm.recv(source=self.MPI.ANY_SOURCE, tag=ERROR, status=status)
        raise RankFailed(f"rank {status.Get_source()} failed: {report}")

    def _probe(self, source, tag, what, timeout=None):
        status = self.MPI.Status()
        self._wait(lambda: self.comm.Iprobe(source, tag, status), what, timeout)
        return status

    def _finish_sends(self):
        for request, _buffer, what in self._pending:
            self._wait(request.Test, what)
        self._pending = []

    # -- the pipelined schedule --------------------------------------------------------------------------------
    def bind_channels(self, seed):
        """A late channel gets one more step of delay than its spec says, so its queue, its checkpointed state
        and the receiver's kept history are exactly those of a channel with that delay in the local engine."""
        from ..spec import ConstraintSpec
        for c in self.graph.channels:
            if c.identity in self.late:
                c.constraints = (*c.constraints, ConstraintSpec(type="delay", steps=1))
        super().bind_channels(seed)

    def load_channel_state(self, state):
        try:
            super().load_channel_state(state)
        except LocalnetError as exc:
            if not self.late:
                raise
            late = ", ".join(sorted(self.late))
            raise LocalnetError(f"{exc}; a pipelined run's late channels follow its placement (now {late}): "
                                "resume it on the placement it started with") from None

    def _late(self, c, train):
        """The message a late channel delivers this step without waiting for this step's: the delay queue is
        the channel's own queue followed by the message in flight (last step's, received only now). The first
        step, and the first after a resume, take this step's message at once, as the local engine does."""
        queue = c.pipeline.delay.queue
        if c.identity in self._in_flight:
            self._arrive(c, train)
        provenance = self._late_provenance.get(c.identity)
        if provenance is None or not queue:
            payload, provenance, lag = self._receive(c)
            self._late_provenance[c.identity] = provenance
            return c.deliver(payload, provenance, self._remote_reference(c, lag, 0), train, lag)
        if len(queue) == queue.maxlen:  # this step's message, once it arrives, pushes the oldest out
            queue.popleft()
        payload, lag = queue[0]
        self._in_flight.add(c.identity)
        return Message(c.kind, c.sender, payload, provenance, lag + len(queue))

    def _arrive(self, c, train):
        """Receive a late channel's message of the previous step into its delay queue, as `deliver` would have
        queued it then (displaced by the receiver's own activation of that step)."""
        payload, provenance, lag = self._receive(c)
        self._late_provenance[c.identity] = provenance
        arrived = c.arrive(payload, self._remote_reference(c, lag, 1), train)
        c.pipeline.delay.queue.append((np.array(arrived), lag))
        self._in_flight.discard(c.identity)

    def _settle_late(self):
        """Take every late message in flight into its queue and complete every late send (before gathering
        state for a checkpoint, and before stopping): afterwards the channels' state is the local engine's."""
        for c in self.graph.channels:
            if c.identity in self._in_flight and self.placement[c.receiver] == self.rank:
                self._arrive(c, True)
        for request, _buffer, what in self._deferred:
            self._wait(request.Test, what)
        self._deferred = []

    def _remote_reference(self, c, lag, age):
        """For a displacement channel: (0, the receiver's own activation of the message's step), the message
        having crossed as ĥ minus the sender's view of it; None otherwise. `age`: steps since it was sent."""
        if not c.displacement:
            return None
        lag += age
        own = self._sent["forward"][c.receiver]["activation"] if not lag else self.nodes[c.receiver].output_of(lag)
        return np.dtype(c.dtype).type(0), own

    # -- routing -----------------------------------------------------------------------------------------------
    def _receive(self, c):
        source = self.placement[c.sender]
        tag = self.tags[c.identity]
        what = f"the {c.kind} from {c.sender!r} (rank {source}) on channel {c.identity}"
        self._probe(source, tag, what)
        header = np.empty(2, np.int64)
        self.comm.Recv(header, source, tag)
        status = self._probe(source, tag + 1, what)
        dtype = np.dtype(c.dtype)
        per_sample = int(np.prod(c.shape, dtype=np.int64)) * dtype.itemsize
        n = status.Get_count(self.MPI.BYTE) // max(per_sample, 1)
        buffer = np.empty((n, *c.shape), dtype)
        self.comm.Recv(buffer, source, tag + 1)
        return buffer, _provenance(int(header[0])), int(header[1])

    def _send(self, c, out):
        key = out.key(c.kind, c.receiver)
        payload = out[key]
        if payload.shape[1:] != c.shape or payload.dtype != c.dtype:
            raise GraphError(f"channel {c} was handed {payload.dtype} of shape {payload.shape[1:]} per sample")
        lag = out.lags.get(key, 0) if out.lags else 0
        if c.displacement:  # a target crosses as ĥ minus the receiver's activation as this sender saw it
            seen = out.bases.get(key)
            if seen is None:
                seen = self.inboxes["forward"][c.sender].messages(c.receiver)[0].payload
            payload = payload - seen
        payload = np.ascontiguousarray(payload)
        header = np.array([_mask(out.provenance.get(key, NO_PROVENANCE)), lag], np.int64)
        dest, tag = self.placement[c.receiver], self.tags[c.identity]
        what = f"rank {dest} to take the {c.kind} for {c.receiver!r} on channel {c.identity}"
        sends = self._pending
        if c.identity in self.late:  # the receiver takes it a step later: complete it then
            sends = self._deferred = [s for s in self._deferred if not s[0].Test()]
        sends.append((self.comm.Isend(header, dest, tag), header, what))
        sends.append((self.comm.Isend(payload, dest, tag + 1), payload, what))
        self.stats["messages"] += 2
        self.stats["bytes"] += header.nbytes + payload.nbytes

    def _run(self, phase, schedule, call, train):
        from ..errors import LocalityError
        from ..messages import Inbox
        from .local import _plain
        sent, audit, inboxes, nodes = self._sent[phase], self.audit, self.inboxes[phase], self.nodes
        outbound = self._out[phase]
        local = self.local
        for name, channels, declared in schedule:
            if name not in local:
                continue
            messages = []
            for c in channels:
                if c.sender in local:
                    out = sent[c.sender]
                    if type(out) is not Outbox:
                        out = _plain(out)
                    key = out.key(c.kind, c.receiver)
                    payload, provenance = out[key], out.provenance.get(key, NO_PROVENANCE)
                    lag = out.lags.get(key, 0) if out.lags else 0
                    reference = self._reference(c, out, key, lag) if c.displacement else None
                elif c.identity in self.late:
                    messages.append(self._late(c, train))
                    continue
                else:  # on a displacement channel what arrived is the change; the receiver adds its activation
                    payload, provenance, lag = self._receive(c)
                    reference = self._remote_reference(c, lag, 0)
                messages.append(c.deliver(payload, provenance, reference, train, lag))
            inboxes[name] = inbox = Inbox(name, phase, messages, audit, declared)
            try:
                out = sent[name] = call(nodes[name], inbox)
            except ValueError as exc:
                self._refuse_write(name, phase, inbox, exc)
                raise
            for m in messages:
                if m.payload.flags.writeable:
                    raise LocalityError(f"layer {name!r} made the {m.kind} it received from {m.sender!r} writable "
                                        f"in the {phase} phase; what a node receives is read-only")
            if outbound[name]:
                if type(out) is not Outbox:
                    out = _plain(out)
                for c in outbound[name]:
                    self._send(c, out)
        self._finish_sends()

    # -- commands (rank 0 drives) ------------------------------------------------------------------------------
    def _command(self, code, arg=0):
        if self.rank != 0:
            return
        if code not in (FORWARD, FEEDBACK, BACKWARD, UPDATE):
            self._settle_loss()
        if not self._pushed and code != PUSH:
            self._pushed = True
            self.push()
        command = np.array([code, arg], np.int64)
        for r in range(1, self.size):
            self._pending.append((self.comm.Isend(command, r, COMMAND), command,
                                  f"rank {r} to take the {PHASE_NAMES[code]} command"))

    def forward(self, x, y, train, feedback=False, prepare_feedback=False):  # (layers take it in train_feedback)
        self._forward_pass(x, y, train)
        if feedback:
            self.train_feedback()

    def _forward_pass(self, x, y, train):
        self._settle_loss()
        self._command(FORWARD, int(bool(train)))
        self._steps += 1
        if self._fail_at is not None and self._steps == self._fail_at:
            if self._fail_how == "exit":
                os._exit(3)
            if self._fail_how == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {self.rank} (LOCALNET_MPI_FAIL)")
        self._sent = {"forward": {}, "backward": {}}
        self.inboxes = {"forward": {}, "backward": {}}
        if INPUT in self.local:
            self.nodes[INPUT].feed(x, y)
        self._run("forward", self._forward, lambda node, inbox: node.forward(inbox, train), train)
        loss_rank = self.placement[LOSS]
        if loss_rank != 0:  # rank 0 reports the loss: the loss's rank sends (value, correct)
            if self.rank == loss_rank:
                loss = self.nodes[LOSS]
                report = np.array([loss.value, loss.correct], np.float64)
                self.comm.Send(report, 0, LOSS_REPORT)
            elif self.rank == 0:
                self._loss_pending = True
                if not train:  # evaluation reads it at once; a training step at the end of its next phase,
                    self._settle_loss()  # so rank 0 does not wait for the other ranks' forward pass

    def _settle_loss(self):
        """Rank 0: receive the loss value and correct count of the last forward pass, if not yet received."""
        if not self._loss_pending:
            return
        self._loss_pending = False
        loss_rank, loss = self.placement[LOSS], self.nodes[LOSS]
        self._probe(loss_rank, LOSS_REPORT, f"the loss value from rank {loss_rank}")
        report = np.empty(2, np.float64)
        self.comm.Recv(report, loss_rank, LOSS_REPORT)
        loss.value, loss.correct = float(report[0]), int(report[1])

    def train_feedback(self):
        self._command(FEEDBACK)
        self._finish_sends()
        for name in self.graph.feedback_layers:
            if name in self.local:
                self._guarded(name, "feedback", self.nodes[name].train_feedback)
        self._settle_loss()

    def backward(self, start_updates=False, feedback=False):  # (updates wait for `update`: no overlap on ranks)
        self._command(BACKWARD)
        self._sent["backward"], self.inboxes["backward"] = {}, {}
        self._run("backward", self._backward, lambda node, inbox: node.backward(inbox), True)
        self._settle_loss()
        if feedback:
            self.train_feedback()

    def update(self):
        self._command(UPDATE)
        self._finish_sends()
        for name in self.graph.layers:
            if name in self.local:
                self._guarded(name, "update", self.nodes[name].apply_update)
        self._settle_loss()

    # -- state: gather to rank 0, push from it -----------------------------------------------------------------
    def _own_channels(self):
        return [c for c in self.graph.channels if c.stateful and self.placement[c.receiver] == self.rank]

    def synchronise(self):
        """Rank 0's copies of every other rank's layers and channels get those ranks' current state (before a
        checkpoint, or to read parameters)."""
        if self.size == 1:
            return
        self._command(SYNC)
        self._finish_sends()
        self._settle_late()
        if self.rank != 0:
            state = ({n: self.nodes[n].state() for n in self.graph.layers if n in self.local},
                     {c.identity: c.state() for c in self._own_channels()})
            self.comm.send(state, 0, STATE)
            return
        for r in range(1, self.size):
            self._probe(r, STATE, f"the layer states of rank {r}")
            layers, channels = self.comm.recv(source=r, tag=STATE)
            for name, s in layers.items():
                self.nodes[name].load_state(s)
            for c in self.graph.channels:
                if c.identity in channels:
                    c.load_state(channels[c.identity])

    def push(self):
        """Every other rank's layers and channels get rank 0's state of them (after a resume)."""
        self._command(PUSH)
        self._finish_sends()
        if self.rank == 0:
            for r in range(1, self.size):
                layers = {n: self.nodes[n].state() for n in self.graph.layers if self.placement[n] == r}
                channels = {c.identity: c.state() for c in self.graph.channels
                            if c.stateful and self.placement[c.receiver] == r}
                self.comm.send((layers, channels), r, STATE)
        else:
            self._probe(0, STATE, "the layer states from rank 0")
            layers, channels = self.comm.recv(source=0, tag=STATE)
            for name, s in layers.items():
                self.nodes[name].load_state(s)
            for c in self.graph.channels:
                if c.identity in channels:
                    c.load_state(channels[c.identity])

    def collect_layers(self):
        """Rank 0's copies of every other rank's layers get those layers' parameters and what they kept of this
        step (input, pre-activation, output, target, gradients, reconstruction loss): for the diagnostics probe,
        which reads every layer between the backward phase and the update. Pickled: a probe step is rare."""
        if self.size == 1:
            return
        self._command(COLLECT)
        self._finish_sends()
        if self.rank != 0:
            kept = {n: ({k: getattr(self.nodes[n], k) for k in self.nodes[n].STEP_STATE}, self.nodes[n].parameters())
                    for n in self.graph.layers if n in self.local}
            self.comm.send(kept, 0, STATE)
            return
        for r in range(1, self.size):
            self._probe(r, STATE, f"the layers of rank {r} for the diagnostics probe")
            for name, (step, params) in self.comm.recv(source=r, tag=STATE).items():
                layer = self.nodes[name]
                for key, value in step.items():
                    setattr(layer, key, value)
                for key, value in params.items():
                    layer.parameters()[key][...] = value

    def gather_stats(self, reset=False):
        """Rank 0: [each rank's {messages, bytes, comm_seconds}] since the last reset; others: send theirs."""
        self._command(STATS, int(reset))
        self._finish_sends()
        mine = dict(self.stats)
        if reset:
            self.stats = {"messages": 0, "bytes": 0, "comm_seconds": 0.0}
        if self.rank != 0:
            self.comm.send(mine, 0, STATE)
            return None
        every = [mine]
        for r in range(1, self.size):
            self._probe(r, STATE, f"the statistics of rank {r}")
            every.append(self.comm.recv(source=r, tag=STATE))
        return every

    def stop(self):
        if self.rank == 0 and self.size > 1:
            self._command(STOP)
            self._finish_sends()
            self._settle_late()

    def serve(self):
        """The loop of a rank other than 0: run each phase rank 0 commands, until STOP."""
        command = np.empty(2, np.int64)
        while True:
            self._probe(0, COMMAND, "the next command from rank 0", timeout=10 * self.timeout)
            self.comm.Recv(command, 0, COMMAND)
            code, arg = int(command[0]), int(command[1])
            if code == FORWARD:
                self.forward(None, None, bool(arg))
            elif code == FEEDBACK:
                self.train_feedback()
            elif code == BACKWARD:
                self.backward()
            elif code == UPDATE:
                self.update()
            elif code == SYNC:
                self.synchronise()
            elif code == PUSH:
                self.push()
            elif code == STOP:
                self._settle_late()
                return
            elif code == COLLECT:
                self.collect_layers()
            elif code == STATS:
                self.gather_stats(bool(arg))
            else:
                raise RankFailed(f"rank {self.rank} got an unknown command {code} from rank 0")

    # -- failing -----------------------------------------------------------------------------------------------
    def fail(self, exc, grace=10.0):
        """Report `exc` and end the job: rank 0 prints it and aborts every rank; another rank sends it to rank 0,
        waits up to `grace` seconds for rank 0 to abort the job, then aborts it itself. A KeyboardInterrupt (a
        second SIGINT/SIGTERM, mid-step) ends the job with status 130, as it ends `localnet run`."""
        text = f"{type(exc).__name__}: {exc}"
        if self.rank == 0:
            if isinstance(exc, KeyboardInterrupt):
                text = "interrupted; the last checkpoint stays in force"
            print(f"localnet mpi: {text}; stopping all {self.size} ranks", file=sys.stderr, flush=True)
            time.sleep(0.5)  # mpiexec forwards output asynchronously: an abort at once can lose this line
            _abort(self.comm, 130 if isinstance(exc, KeyboardInterrupt) else 1)
        try:
            self.comm.isend(text, 0, ERROR)
        except Exception:  # noqa: BLE001, S110 - reporting is best effort; aborting is not
            pass
        print(f"localnet mpi: rank {self.rank} failed: {text}", file=sys.stderr, flush=True)
        time.sleep(grace)
        _abort(self.comm)


def mpi_network(spec, n_features, n_classes, placement=None):
    """A Network for `spec` whose engine is an MPIEngine on COMM_WORLD."""
    from ..network import Network
    from . import using
    with using(engine_factory(spec, placement=placement)):
        return Network(spec, spec.seed, n_features, n_classes)


def run(spec=None, *, resume_dir=None, runs_root="runs", placement=None, **callbacks):
    """Train (or resume) under mpiexec: rank 0 runs the training loop and returns (summary, run directory);
    every other rank serves its layers and returns (None, None). Any failure stops every rank."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    holder = {"threads": threads_per_rank(comm)}
    with limit_blas(holder["threads"]):
        return _run(comm, holder, spec, resume_dir, runs_root, placement, callbacks)


def bits_note(graph, nodes, rank_threads):
    """The one line to say where this run's numbers may not equal the local engine's (`localnet run` on this
    machine) bit for bit, else None. They do wherever each product runs on as many BLAS threads in both: the rest of
    a step's arithmetic is the same in both, but OpenBLAS and MKL round many products differently on another
    number of threads (docs/mpi.md)."""
    beside = LocalEngine.runs_beside(graph, nodes)
    local = layout(beside)[1]
    if local == rank_threads:
        return None
    same = rank_threads * layout(beside, 2)[0]  # `--threads` for which the local engine gives products as many
    return (f"each rank runs a product on {rank_threads} BLAS thread(s), `localnet run` would run it on {local} for "
            f"this net, and BLAS rounds many products differently on another number of threads: the two may agree "
            f"to rounding only, not bit for bit (`localnet --threads {same} run` gives these numbers exactly)")


def _run(comm, holder, spec, resume_dir, runs_root, placement, callbacks):
    from .. import training
    from . import using

    def factory(graph, nodes):
        engine = holder["engine"] = engine_factory(holder["spec"], comm, placement)(graph, nodes)
        if comm.Get_rank() == 0 and not holder.get("noted"):
            holder["noted"] = True
            note = bits_note(graph, nodes, holder["threads"])
            if note:
                warnings.warn(note, LocalnetWarning, stacklevel=2)
        return engine

    try:
        if comm.Get_rank() != 0:  # rank 0 decides when to stop, and tells the others (hydra signals every rank)
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        if resume_dir is not None:
            from ..runs import RunDir
            checked = RunDir(resume_dir).spec()
        else:
            checked = spec
        holder["spec"] = checked
        if comm.Get_rank() == 0:
            with using(factory):
                try:
                    if resume_dir is None:
                        result = training.train(spec, runs_root=runs_root, **callbacks)
                    else:
                        result = training.resume(resume_dir, **callbacks)
                except Interrupted:  # raised at a batch boundary, checkpointed: the others wait for a command
                    holder["engine"].stop()
                    raise
                holder["engine"].stop()
            return result
        if resume_dir is not None:
            from ..runs import RunDir
            from ..spec import load_spec
            run_dir = RunDir(resume_dir)
            spec = run_dir.spec()
            backend = run_dir.environment().get("backend")
            if spec.backend == "auto" and isinstance(backend, str):
                spec = load_spec(spec, [f"backend={backend}"])
        holder["spec"] = spec
        from ..data import dataset_shape, sample_shape
        n_features, n_classes = sample_shape(spec.data), dataset_shape(spec.data)[1]
        with using(factory):
            from ..network import Network
            Network(spec, spec.seed, n_features, n_classes)
        holder["engine"].serve()
        return None, None
    except BaseException as exc:
        if comm.Get_size() == 1 or isinstance(exc, Interrupted):  # Interrupted: every rank has stopped
            raise
        if os.environ.get("LOCALNET_MPI_TRACEBACK"):
            traceback.print_exc()
        engine = holder.get("engine")
        if engine is None and isinstance(exc, (SpecError, EngineRefused)):  # every rank has it (`_agree`)
            if comm.Get_rank() == 0:
                raise
            sys.exit(2 if isinstance(exc, SpecError) else 1)
        if engine is None:
            print(f"localnet mpi: rank {comm.Get_rank()} failed: {type(exc).__name__}: {exc}; stopping all ranks",
                  file=sys.stderr, flush=True)
            _abort(comm)
        engine.fail(exc)
        raise


def is_root():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank() == 0


def trainer(placement=None):
    """(train, resume) with the signatures of localnet.training's, for rank 0 under the MPI engine."""
    def train(spec, *, runs_root="runs", **callbacks):
        return run(spec, runs_root=runs_root, placement=placement, **callbacks)

    def resume(run_dir, **callbacks):
        return run(None, resume_dir=run_dir, placement=placement, **callbacks)

    return train, resume


BENCH = 5  # message tag: which network the other ranks serve next in `bench` (-1: none, done)


def bench(spec_path, *, steps=200, warmup=20, repeats=3, placement=None, overrides=(), backend=None,
          progress=None):
    """Under `mpiexec -n K`: seconds per training step of `spec_path` with the MPI engine on K ranks, plain and
    pipelined, against the local engine timed in rank 0's process in the same invocation (in the thread layout it
    picks, localnet/threads.py, and in one thread with one BLAS thread); MPI ranks share the machine's cores (`threads_per_rank`). Each
    configuration is timed `repeats` times, interleaved, over `steps` steps after `warmup`; the median is
    reported, with messages, bytes and seconds spent waiting for messages per step and rank. Rank 0 returns the
    report, others None; `progress(text)` hears of each measurement as it ends."""
    from mpi4py import MPI

    from ..data import dataset_shape, sample_shape
    from ..spec import load_spec
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    spec = load_spec(spec_path, list(overrides) + ([f"backend={backend}"] if backend else []))
    n_features, n_classes = sample_shape(spec.data), dataset_shape(spec.data)[1]
    threads = threads_per_rank(comm)  # collective: every rank, once
    nets = {}
    try:
        if size > 1:
            for schedule in ("plain", "pipelined"):
                variant = load_spec(spec, [f"train.pipeline={schedule == 'pipelined'}"])
                nets[schedule] = mpi_network(variant, n_features, n_classes, placement)
        if rank != 0:
            engine = next(iter(nets.values())).engine
            which = np.empty(1, np.int64)
            with limit_blas(threads):
                while True:
                    engine._probe(0, BENCH, "the next benchmark from rank 0", timeout=10 * engine.timeout)
                    comm.Recv(which, 0, BENCH)
                    if which[0] < 0:
                        return None
                    list(nets.values())[int(which[0])].engine.serve()
    except BaseException as exc:
        if size == 1 or not nets:
            raise
        next(iter(nets.values())).engine.fail(exc)
    try:
        return _bench_root(spec, spec_path, nets, threads, steps, warmup, repeats, progress or (lambda text: None))
    except BaseException as exc:
        if not nets:
            raise
        next(iter(nets.values())).engine.fail(exc)


def _bench_root(spec, spec_path, nets, rank_threads, steps, warmup, repeats, progress):
    """Rank 0's part of `bench`: time every configuration and tell the other ranks which network to serve."""
    from mpi4py import MPI

    from ..network import build
    from ..threads import blas_threads
    from ..training import load_data
    from . import using
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    data = load_data(spec)
    n_features, n_classes = data.sample_shape, data.n_classes
    x, y, b = data.train.x, data.train.y, spec.train.batch_size
    n = (len(x) // b) * b
    threads = max(blas_threads(), default=None)
    local_net = build(spec, n_features=n_features, n_classes=n_classes)
    with using(lambda graph, nodes: LocalEngine(graph, nodes, workers=1)):
        one_net = build(spec, n_features=n_features, n_classes=n_classes)
    one_net.engine.blas = 1  # the engine sets BLAS at each phase: one thread, like one rank's share
    configs = [("local", "own layout", local_net, None), ("local", "1 thread", one_net, None)]
    configs += [("mpi", schedule, net, rank_threads) for schedule, net in nets.items()]
    times = {(engine, what): [] for engine, what, _, _ in configs}
    stats = {what: [] for what in nets}

    def timed(net, count, first):
        began = time.perf_counter()
        for i in range(first, first + count):
            start = (i * b) % n
            net.train_step(x[start:start + b], y[start:start + b])
        return time.perf_counter() - began

    for r in range(repeats):
        for engine_name, what, net, limit in configs:
            if engine_name == "mpi":
                index = np.array([list(nets).index(what)], np.int64)
                for dest in range(1, size):
                    comm.Send(index, dest, BENCH)
            with limit_blas(limit):
                if r == 0:
                    timed(net, warmup, 0)
                if engine_name == "mpi":
                    net.engine.gather_stats(reset=True)
                times[(engine_name, what)].append(timed(net, steps, warmup + r * steps) / steps)
                progress(f"repeat {r + 1}: {engine_name}, {what}: {times[(engine_name, what)][-1]:.4f} s/step")
                if engine_name == "mpi":
                    stats[what].append(net.engine.gather_stats(reset=True))
                    net.engine.stop()
    for dest in range(1, size):
        comm.Send(np.array([-1], np.int64), dest, BENCH)
    report = {"spec": str(spec_path), "ranks": size, "backend": local_net.backend.NAME, "batch": b, "steps": steps,
              "repeats": repeats, "blas_threads_at_start": threads, "blas_threads_per_rank": rank_threads,
              "local": {}, "mpi": {}}
    for (engine_name, what), seconds in times.items():
        median = float(np.median(seconds))
        row = {"seconds_per_step": median, "samples_per_second": b / median, "all": seconds}
        if engine_name == "mpi":
            per = stats[what]
            row.update(messages_per_step=float(np.median([sum(s["messages"] for s in p) for p in per])) / steps,
                       bytes_per_step=float(np.median([sum(s["bytes"] for s in p) for p in per])) / steps,
                       wait_seconds_per_step=[float(np.median([p[k]["comm_seconds"] for p in per])) / steps
                                              for k in range(size)])
        report[engine_name][what] = row
    if nets:
        engine = nets["plain"].engine
        report["placement"] = [sorted((n for n in engine.graph.layers if engine.placement[n] == k),
                                      key=engine.graph.layers.index) for k in range(size)]
        report["late_channels"] = sorted(nets["pipelined"].engine.late)
    return report

