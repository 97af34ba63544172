"""User-facing errors.

Every error a user can cause (a bad recipe, an incompatible checkpoint, an
existing output) is an ``EvomergeError`` whose message is one paragraph naming
the file, field or tensor and the fix. The CLI prints it and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class EvomergeError(Exception):
    """A problem with the user's input, explained in the message."""


class RecipeError(EvomergeError):
    """A recipe (or mergekit YAML) that cannot be merged as written."""


class CheckpointError(EvomergeError):
    """A model directory that cannot be read, or sources that do not fit together."""


class OutputExistsError(EvomergeError):
    """The output directory exists and overwriting was not requested."""
