"""The pages behind the audit's warnings, shipped inside the package so that an installed epsl
can show them: ``epsl explain CODE`` prints one, :func:`explain` returns it.

Each page is ``epsl/warning_pages/<code>.md``, package data read with :mod:`importlib.resources`
(a wheel, an editable install and a source tree alike). Its first line is the Markdown title
``# Warning `code`: what fired``; :func:`titles` reads the part after the colon.

Example::

    >>> from epsl.explain import explain, titles
    >>> explain("steps").splitlines()[0]
    '# Warning `steps`: more PGD steps break many more examples'
    >>> titles()["unbounded"]
    'unbounded ε does not reach 0% accuracy'
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

from epsl.errors import EpslError

__all__ = ["explain", "titles", "warning_codes"]

PAGES = "warning_pages"  # folder inside the epsl package; not "warnings", to avoid any clash


def _pages() -> dict[str, Traversable]:
    folder = resources.files("epsl").joinpath(PAGES)
    return {page.name.removesuffix(".md"): page for page in folder.iterdir()
            if page.name.endswith(".md")}


def warning_codes() -> tuple[str, ...]:
    """The codes that have a page, sorted."""
    return tuple(sorted(_pages()))


def explain(code: str) -> str:
    """The Markdown page of the audit warning ``code`` (what fired, why it matters, what to do).

    Raises:
        EpslError: ``code`` has no page; the message lists the codes that do.
    """
    page = _pages().get(code)
    if page is None:
        raise EpslError(f"no warning page for {code!r}; known codes: {', '.join(warning_codes())}")
    return page.read_text(encoding="utf-8")


def titles() -> dict[str, str]:
    """Code -> the one-line title of its page (the Markdown title after ``Warning `code`:``)."""
    return {code: explain(code).splitlines()[0].partition(": ")[2].strip()
            for code in warning_codes()}
