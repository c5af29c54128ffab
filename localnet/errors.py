"""One exception hierarchy, so the CLI can turn any expected failure into one clear line."""


def short_repr(value, limit=60):
    """repr() cut to `limit` characters: one line, escapes included, whatever a hostile file put in a name."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text) -> str:
    """`text` with every character a terminal would act on (control and format characters: escape sequences,
    line breaks, bidirectional overrides) written as its backslash escape: a name or message read from a file
    can then neither rewrite the terminal nor turn one line of output into two."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _key(part):
    """A key path element as written, unless it is long or holds a line break or other unprintable character."""
    text = str(part)
    return text if text.isprintable() and len(text) <= 60 else short_repr(part)


class LocalnetError(Exception):
    """Base of every error localnet raises on purpose; the CLI prints it without a traceback."""


class LocalnetWarning(UserWarning):
    """A warning localnet gives on purpose (a setting that silently ruins a run); the CLI prints it as one line."""


class SpecError(LocalnetError):
    """A spec that cannot describe a runnable network: names file, line, key path, expected and found."""

    def __init__(self, message, *, file=None, line=None, path=(), expected=None, found=None):
        self.file, self.line, self.path = file, line, tuple(path)
        self.expected, self.found = expected, found
        self.detail = message
        super().__init__(self._format())

    def _format(self):
        where = str(self.file) if self.file else "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        key = ".".join(_key(p) for p in self.path) or "<top>"
        msg = f"{where}: {key}: {self.detail}"
        if self.expected is not None:
            msg += f"; expected {self.expected}"
        if self.found is not None:
            msg += f", found {self.found}"
        return msg


class GraphError(LocalnetError):
    """The channels of a network do not form a valid graph (missing producer, kind/shape mismatch, cycle)."""


class DataError(LocalnetError):
    """A data set is missing, corrupt, or fails its checksum; the message names where localnet looked."""


class RunError(LocalnetError):
    """A run directory is missing, incomplete or does not match what was asked of it."""


class DiskFull(RunError):
    """A run directory's file system (or the user's quota) is full: the run stops, and resumes once there is room."""


class Interrupted(LocalnetError):
    """Training stopped on request (SIGINT or SIGTERM) after writing a checkpoint at its current position."""


class LocalityError(LocalnetError):
    """A layer tried to reach state that is not its own or not in its inbox."""
