"""Reading a file that may be hostile (a spec, a run directory's files): only a regular file, never by blocking (an
open for reading of a FIFO waits for a writer forever, /dev/zero never ends), optionally never through a final
symbolic link, never more of it than a limit; and JSON with bounded integers and nesting."""

from __future__ import annotations

import errno
import json
import os
import stat

MAX_DIGITS = 64  # the longest integer localnet writes: a generator's 128-bit state, 39 digits


def open_regular(path, limit: int, *, follow=True):
    """`path` opened for binary reading, if it is a regular file of at most `limit` bytes; OSError otherwise
    (FileNotFoundError where it is missing). The open is non-blocking, so a FIFO swapped in after any check is
    refused here, not waited on; with `follow=False`, a symbolic link is refused too."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise OSError(errno.ELOOP, "it is a symbolic link", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file (a folder, FIFO, device or socket)", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"it is larger than {limit} bytes", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, limit: int, *, follow=True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`open_regular`'s checks); a file that grows past the
    limit while it is read is refused too. (A read of n bytes allocates n at once: it asks for the size the file
    has, and for more only if it grew.)"""
    with open_regular(path, limit, follow=follow) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(size + 1)
        if len(data) > size:
            data += fh.read(limit + 1 - len(data))
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"it is larger than {limit} bytes", str(path))
    return data


def _bounded_int(text):
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def parse_json(text):
    """JSON with integers of at most MAX_DIGITS digits (Python's own limit, 4300, would raise deep inside the
    parser, and an int of many thousand digits costs quadratic time); nesting beyond the interpreter's recursion
    limit is refused too. Every failure is a ValueError."""
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None
