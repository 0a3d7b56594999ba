"""Errors a user can cause. The CLI turns each into one line on stderr and a non-zero exit."""


class FastrnnError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug)."""

    exit_code = 1


class CorpusError(FastrnnError):
    """A corpus input or CORPUS.h5 file that cannot be used."""


class CheckpointError(FastrnnError):
    """A checkpoint that is missing, corrupt, or does not fit the request."""


class ConfigError(FastrnnError):
    """Options that do not fit together or with the data."""


class VocabError(FastrnnError):
    """Text with characters outside a model's vocabulary."""


class DivergenceError(FastrnnError):
    """Training produced a NaN/inf or exploding loss."""

    exit_code = 3
