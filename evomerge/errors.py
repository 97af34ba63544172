"""User-facing errors and the exit codes every command follows.

Every error a user can cause (a bad recipe, an incompatible checkpoint, an
existing output) is an ``EvomergeError`` whose message is one paragraph naming
the file, field or tensor and the fix. The CLI prints it and exits with the
error's ``exit_code``; anything else is a bug: one line, and the traceback with
``--debug``.
"""

# One table for every command (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed: every trial failed, a task failed, a disk filled
EXIT_BAD_INPUT = 2  # refused before any compute: config, recipe, checkpoint, output, a run in use
EXIT_INTERRUPTED = 130  # Ctrl-C; SIGTERM and SIGHUP give 128 + the signal's number


class EvomergeError(Exception):
    """A problem with the user's input, explained in the message."""

    exit_code = EXIT_BAD_INPUT


class RecipeError(EvomergeError):
    """A recipe (or mergekit YAML) that cannot be merged as written."""


class CheckpointError(EvomergeError):
    """A model directory that cannot be read, or sources that do not fit together."""


class OutputExistsError(EvomergeError):
    """The output directory exists and overwriting was not requested."""


class RunFailedError(EvomergeError):
    """The command ran to its end, and what it was asked to produce failed."""

    exit_code = EXIT_FAILED


class DiskFullError(EvomergeError):
    """A write ran out of space; what was being written was discarded."""

    exit_code = EXIT_FAILED
