"""Ctrl-C and SIGTERM that no fallback can swallow.

Libraries turn an interrupt into an ordinary exception in places (torch.onnx's capture strategies
catch ``Exception`` and try the next one; C++ callbacks re-raise a ``KeyboardInterrupt`` as a
``RuntimeError``), and ln_deploy's own fallbacks (dynamo, then the legacy exporter) catch
``Exception`` too. So the signal itself is recorded when it arrives: ``fileio`` refuses to commit
any output once one has been received, and the CLI exits with the signal's code (130 for SIGINT,
143 for SIGTERM) whatever the command returned. ``raise_if_interrupted`` lets a fallback stop at
once instead of running to the end first.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_received: int | None = None


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def received() -> int | None:
    """The signal received since ``handling()`` began (None: none)."""
    return _received


def exit_code() -> int | None:
    return None if _received is None else 128 + _received


def raise_if_interrupted(exc: BaseException | None = None) -> None:
    """Re-raise an interrupt that was caught as something else: a signal was received, or ``exc``'s
    cause/context chain holds a KeyboardInterrupt."""
    if _received is not None:
        raise Interrupted(_received)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(signal.SIGINT)
        exc = exc.__cause__ or exc.__context__


def _handler(signum, frame):
    global _received
    _received = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def handling():
    """Record SIGINT/SIGTERM (and raise ``Interrupted``) while the block runs; the previous handlers
    and state come back after it (the CLI runs in-process in tests). Outside the main thread this
    does nothing: only the main thread may install signal handlers."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = _received
    _received = None
    previous = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, _handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = before
