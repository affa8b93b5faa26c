"""Progress of long loops (sweeps, training grids): units/s and an ETA on the terminal or in the build's log,
never inside a book page.

Inside a notebook kernel `sys.stderr` is the page; `sys.__stderr__` is the process's own stderr, which the
book build and `atlas VERB` forward to the terminal (or to the log it is redirected to). When that is not a
terminal, each update is written as its own line at most every `log_every` seconds, so a log reads as a
sequence of timestamps instead of one line rewritten in place.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into one line per update."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(total: int, desc: str, unit: str = "unit", enabled: bool = True, log_every: float = 30.0) -> tqdm:
    stream = sys.__stderr__ or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, smoothing=0.05, dynamic_ncols=tty,
                file=stream if tty else _Lines(stream), mininterval=0.5 if tty else log_every, ncols=None if tty else 100)
