"""Exceptions that the CLI turns into one clear line and a non-zero exit."""

import errno
import numbers
import os

#: the largest seed: numpy's, torch's and Python's generators all take every integer in
#: [0, 2**63), and a seed is recorded in JSON beside every result
SEED_MAX = 2**63 - 1


class EpslError(Exception):
    """A user-facing error: bad input, missing data, an unsafe or mismatched checkpoint."""


def check_progress(progress: object) -> None:
    """One meaning of ``progress`` everywhere: None or a callable given the examples (or
    attacks) done, e.g. ``tqdm(...).update``; a bool from older code is refused at once."""
    if progress is not None and not callable(progress):
        raise EpslError(f"progress is a callable given the examples done (e.g. tqdm().update) "
                        f"or None, not {progress!r}")


def check_seed(value: object, name: str = "seed") -> None:
    """One meaning of a seed everywhere: an integer in [0, 2**63) (:data:`SEED_MAX`), checked
    before any work, so that no generator refuses it after a long computation; ``name`` is the
    parameter the one-line :class:`EpslError` names (``seed``, ``sample_seed``, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral)\
            or not 0 <= int(value) <= SEED_MAX:
        raise EpslError(f"{name} must be a non-negative integer below 2**63 (got {value!r})")


#: what to do about the errors a path meets most often (the rest say the system's reason)
_PATH_ADVICE = {
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free some space or choose another disk",
    errno.EDQUOT: "free some space or choose another disk",
    errno.ELOOP: "the path runs in a loop of symbolic links; fix or avoid the links",
}


def os_reason(exc: OSError, path: object = None) -> str:
    """The system's reason for ``exc``, met while using ``path`` (default: the one it names),
    and, for the common ones, what to do."""
    where = str(path if path is not None else exc.filename if exc.filename is not None else "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(part) for part in where.split(os.sep)), default=0)
        reason += f" (its longest name has {longest} characters, the whole path {len(where)})"
    advice = _PATH_ADVICE.get(exc.errno or 0)
    return reason + (f"; {advice}" if advice else "")


def path_error(exc: OSError, path: object = None) -> EpslError:
    """One line for an :class:`OSError` met while using a path: the path (``path``, else the
    one the error names) and :func:`os_reason`."""
    where = path if path is not None else exc.filename if exc.filename is not None else ""
    return EpslError(f"{where}: {os_reason(exc, path)}" if where != "" else os_reason(exc))


class UnknownNameError(EpslError, KeyError):
    """A name that no registry holds (an architecture, dataset, attack, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


__all__ = ["EpslError", "SEED_MAX", "UnknownNameError", "check_progress", "check_seed",
           "os_reason", "path_error"]
