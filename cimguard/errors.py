"""The one exception type the CLI turns into a one-line message."""

from __future__ import annotations


class CimguardError(Exception):
    """A problem with the user's input or environment, reported as one line.

    Raise it with a message that names the thing at fault (the file, the option,
    the operator) and, where possible, what to do instead.  The CLI prints
    ``Error: <message>`` and exits with status 1; it never shows a traceback for it.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
