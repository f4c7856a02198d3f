"""Exceptions that the CLI turns into one clear line and a non-zero exit."""


class EpslError(Exception):
    """A user-facing error: bad input, missing data, an unsafe or mismatched checkpoint."""


class UnknownNameError(EpslError, KeyError):
    """A name that no registry holds (an architecture, dataset, attack, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
