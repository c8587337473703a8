"""Progress output: bars on a terminal, plain lines elsewhere.

A progress bar redraws itself with ``\\r``; in a log file every redraw would land as a line of its
own. So bars show only when stderr is a terminal (``PVAE_PROGRESS=1`` forces them, ``0`` hides
them), and per-epoch lines are printed either way.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def on_terminal() -> bool:
    forced = os.environ.get("PVAE_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable=None, *, progress: bool = True, **kwargs) -> tqdm:
    """A tqdm bar, disabled unless ``progress`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (progress and on_terminal()), leave=False, **kwargs)


def say(line: str) -> None:
    """One line of output that does not break a live bar."""
    if on_terminal():
        tqdm.write(line)
    else:
        print(line, flush=True)
