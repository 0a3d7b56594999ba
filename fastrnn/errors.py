"""Errors a user can cause. The CLI turns each into one line on stderr and a non-zero exit."""

import signal


class FastrnnError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug)."""

    exit_code = 1


class CorpusError(FastrnnError):
    """A corpus input or CORPUS.h5 file that cannot be used."""


class CheckpointError(FastrnnError):
    """A checkpoint that is missing, corrupt, or does not fit the request."""


class FileError(FastrnnError):
    """A file or directory that cannot be read or written: permissions, a full disk, an I/O error, a directory
    that went away."""


class ConfigError(FastrnnError):
    """Options that do not fit together or with the data."""


class VocabError(FastrnnError):
    """Text with characters outside a model's vocabulary."""


class DivergenceError(FastrnnError):
    """Training produced a NaN/inf or exploding loss."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where the work cannot wait for a clean stop (a second signal, or start-up): stop at once.
    The CLI exits with 128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def os_reason(exc):
    """The reason an OSError gives, without Python's decoration: 'No space left on device'."""
    return exc.strerror or str(exc) or type(exc).__name__


def in_chain(exc, match):
    """The first exception of the chain `exc` was raised during or from (itself first, as a traceback shows them)
    for which match(e) is true, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if match(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return None
