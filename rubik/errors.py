"""Errors that mean the user asked for something wrong; the CLI prints them as one line."""


class RubikError(ValueError):
    """A user-facing error whose message names the problem and the fix."""
