"""Exceptions that the CLI turns into one clear line and a non-zero exit."""


class EpslError(Exception):
    """A user-facing error: bad input, missing data, an unsafe or mismatched checkpoint."""


def check_progress(progress: object) -> None:
    """One meaning of ``progress`` everywhere: None or a callable given the examples (or
    attacks) done, e.g. ``tqdm(...).update``; a bool from older code is refused at once."""
    if progress is not None and not callable(progress):
        raise EpslError(f"progress is a callable given the examples done (e.g. tqdm().update) "
                        f"or None, not {progress!r}")


class UnknownNameError(EpslError, KeyError):
    """A name that no registry holds (an architecture, dataset, attack, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
