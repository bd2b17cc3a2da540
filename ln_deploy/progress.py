"""Progress lines on stderr for steps that can take more than a second."""

from __future__ import annotations

import contextlib
import sys
import time

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


@contextlib.contextmanager
def quieted(enabled: bool = True):
    """Silence progress inside a block (a caller that prints its own, coarser progress)."""
    global _quiet
    before = _quiet
    _quiet = before or enabled
    try:
        yield
    finally:
        _quiet = before


def info(msg: str) -> None:
    if not _quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str):
    """Print ``what...`` before a step and its duration after it; silent with ``--quiet``."""
    t0 = time.perf_counter()
    info(f"[ln-deploy] {what}...")
    yield
    info(f"[ln-deploy] {what}: done in {time.perf_counter() - t0:.1f} s")
