"""The stop mark between a runner and its ServerApp (:data:`~fedstrat.app.rundir.STOP_FILE`).

A runner that stops a run before its end (SIGTERM, Ctrl-C, an error, a timeout) stops the
SuperNodes or Ray workers first; a round under way then ends with failed replies, and were it
recorded, the resumed run would lose that round's training. So the runner writes the mark
*before* it stops a process (:func:`marking_stop`) and the ServerApp records no round while the
mark is there (:func:`stop_requested`); the next run of the directory removes it first
(:func:`clear_stop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedstrat.app.rundir import STOP_FILE

__all__ = ["clear_stop", "marking_stop", "stop_requested"]


def clear_stop(run_dir: str | Path) -> None:
    """Remove the mark a stopped run left (a new run or resume of ``run_dir`` starts)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


@contextmanager
def marking_stop(run_dir: str | Path) -> Iterator[None]:
    """Write the mark if the body raises (any exception, KeyboardInterrupt included), before
    the caller's clean-up stops processes."""
    mark = Path(run_dir) / STOP_FILE
    try:
        yield
    except BaseException:
        if mark.parent.is_dir():
            mark.touch()
        raise


def stop_requested(run_dir: str | Path) -> bool:
    """Whether the runner is stopping the run in ``run_dir``."""
    return (Path(run_dir) / STOP_FILE).exists()
