"""The project's error type: library code raises it, the CLI prints it as one line."""


class ModnetBatchError(Exception):
    """A user-facing error whose message names the input, what was expected and the fix."""
