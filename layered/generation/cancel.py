"""Cancelling a generation from outside it: a caller's stop signal that decoding loops check every step.

A server whose client left cannot close a blocking ``generate`` call (it runs on a worker thread)
nor a stream that is blocked inside ``next()`` (waiting for a sentence to finish). Instead it runs
the call inside :func:`cancel_on`; the generators read :func:`stop_signal` when their decoding starts
(on the calling thread) and stop at the next decoding step once the event is set. A stopped
``generate`` returns the text decoded so far; a stopped stream ends early. Code that never uses
:func:`cancel_on` is unaffected.

A context variable, so concurrent requests on different threads each have their own signal.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_CANCEL: ContextVar[threading.Event | None] = ContextVar("layered_generation_cancel", default=None)
_NEVER = threading.Event()  # never set: what a call without a signal checks


@contextmanager
def cancel_on(event: threading.Event) -> Iterator[threading.Event]:
    """Generations started inside this block (on this thread) stop within one decoding step of ``event.set()``."""
    token = _CANCEL.set(event)
    try:
        yield event
    finally:
        _CANCEL.reset(token)


def stop_signal() -> threading.Event:
    """The stop signal of the calling context (an event that is never set when there is none)."""
    return _CANCEL.get() or _NEVER
