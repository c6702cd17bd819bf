"""SIGTERM as a request to stop: the one handler the training loop and the CLIs share.

Kubernetes sends SIGTERM on eviction, preemption, `kubectl delete pod` and node drain, then
SIGKILL after the grace period. The trainer never dies on the signal itself: it sets an
event, and whoever waits on it (the training loop, which saves a checkpoint first; the
metrics linger after a run) stops at a safe point.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_sets(event: threading.Event) -> Iterator[threading.Event]:
    """While inside, SIGTERM sets `event`; the previous handler is restored on the way out.

    Python delivers signals only to the main thread; elsewhere (a test calling the trainer
    from a worker thread) nothing is installed and the event is only set by the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)
