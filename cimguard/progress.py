"""Progress of long runs (Monte Carlo chips, solver passes, training batches) on a terminal or in a log.

On a terminal a tqdm bar redraws in place.  Under a pipe or in a CI log a redrawn
bar is noise (carriage returns) and tqdm's default prints nothing useful, so
:class:`LogProgress` writes one whole line, formatted by tqdm, at most every
:data:`LOG_INTERVAL` seconds (``CIMGUARD_PROGRESS_INTERVAL`` overrides it), plus a
last line when the work ends, and nothing at all for work shorter than one interval.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 5.0
INTERVAL_ENV = "CIMGUARD_PROGRESS_INTERVAL"


def log_interval() -> float:
    """Seconds between progress lines in a log (``CIMGUARD_PROGRESS_INTERVAL`` or :data:`LOG_INTERVAL`)."""
    text = os.environ.get(INTERVAL_ENV)
    try:
        value = float(text) if text else LOG_INTERVAL
    except ValueError:
        return LOG_INTERVAL
    return value if value >= 0 else LOG_INTERVAL


class LogProgress:
    """A progress report for logs: the ``tqdm`` calls cimguard uses, one line per interval."""

    def __init__(self, total: int | None, desc: str, unit: str, *, interval: float | None = None,
                 file: TextIO | None = None, iterable: Iterable | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.disable = False
        self.interval = log_interval() if interval is None else interval
        self.file = file
        self._iterable = iterable
        self._postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._printed = False

    def __iter__(self) -> Iterator:
        for item in self._iterable or ():
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._print(now)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self._printed and not self.disable:
            self._print(time.monotonic())  # where it ended
        self.disable = True

    def line(self, elapsed: float) -> str:
        """The progress line after ``elapsed`` seconds (tqdm's meter without the bar)."""
        postfix = f", {self._postfix}" if self._postfix else ""
        if self.total:
            form = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}{postfix}]"
        else:
            form = "{desc}: {n_fmt} {unit} [{elapsed}{postfix}]"
        return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit,
                                 bar_format=form.replace("{postfix}", postfix.replace("{", "{{").replace("}", "}}")))

    def _print(self, now: float) -> None:
        stream = self.file or sys.stderr
        stream.write(self.line(now - self._start) + "\n")
        stream.flush()
        self._last = now
        self._printed = True


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool, *, iterable: Iterable | None = None,
                 initial: int = 0):
    """A tqdm bar on a terminal, :class:`LogProgress` lines otherwise, nothing when ``enabled`` is False."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, initial=initial)
    bar = LogProgress(total, desc, unit, iterable=iterable)
    bar.n = initial
    return bar
