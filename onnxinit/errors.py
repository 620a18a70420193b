"""Errors the CLI turns into one clear line and an exit code."""


class OnnxInitError(Exception):
    """Bad input or an impossible request: the CLI prints the message and exits 2."""

    exit_code = 2
