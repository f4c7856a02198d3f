"""Exceptions that the CLI turns into one clear line and a non-zero exit."""


class EpslError(Exception):
    """A user-facing error: bad input, missing data, an unsafe or mismatched checkpoint."""
