"""Progress of long work (calibration, auto candidates, evaluation, benchmark, engine builds, predict).

Bars are drawn on stderr when it is a terminal and progress is not turned off (``--no-progress``);
otherwise nothing is drawn, and the manager's one line per finished stage is the whole log (what CI
logs want: no carriage returns, no bar fragments). stdout is never written, so ``--json`` output
stays clean. Passes get bars through :meth:`convert.base.RunContext.bar`, commands through :func:`bar`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def wanted(no_progress: bool = False) -> bool:
    """Whether bars should be drawn: stderr is a terminal and ``--no-progress`` was not given."""
    return not no_progress and sys.stderr.isatty()


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True):
    """A progress bar on stderr (tqdm); when not ``enabled`` it only passes the items through.

    Args:
        iterable: What to iterate over (or None, then call ``update``).
        total: Number of steps (default: ``len(iterable)`` when it has one).
        desc: What is being done, e.g. ``calibrate: calibration images``.
        enabled: Draw it (see :func:`wanted`).
    """
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                file=sys.stderr)
