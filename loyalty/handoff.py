"""After-commit hand-offs to Celery, gathered per process and sent together.

A purchase that earns points queues a "points earned" message; queuing one
Celery task cost 0.8 ms of CPU on the bench machine (kombu's publish), more
than a tenth of the whole purchase, and a broker that hangs held the till for
its socket timeout. So the services hand their row ids to a ``Coalescer``: the
first id starts a timer of ``LOYALTY_HANDOFF_WINDOW_SECONDS`` (0.2 s) in a
background thread, and when it fires every id gathered meanwhile goes to the
workers in one call. The request never waits for the broker.

Nothing is lost if the process dies or the broker is down before the timer
fires: the rows are committed, and the every-minute sweeps send what is due.
With the window set to 0, inside a Celery task, and with
Celery's ``task_always_eager`` (tests), ids are handed off at once in the
caller's thread, as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable

from celery import current_app, current_task
from django.conf import settings

logger = logging.getLogger(__name__)

_ALL: weakref.WeakSet[Coalescer] = weakref.WeakSet()


class Coalescer:
    def __init__(self, name: str, send: Callable[[list[int]], None]) -> None:
        self.name = name
        self.send = send
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # held for a whole flush: a flush waits for one in flight
        self._ids: list[int] = []
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()
        _ALL.add(self)

    def add(self, ids: list[int]) -> None:
        window = settings.LOYALTY_HANDOFF_WINDOW_SECONDS
        if window <= 0 or current_app.conf.task_always_eager or current_task:
            # Inside a Celery task (batch jobs, retries) at once: no one waits
            # on it, it hands off in bulk already, and a worker's child process
            # may end with os._exit before a timer fires.
            self.send(list(ids))
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's timer is not ours
                self._pid, self._ids, self._timer = os.getpid(), [], None
            self._ids.extend(ids)
            if self._timer is None:
                self._start()

    def flush(self) -> None:
        """Hand off what is gathered now (the timer calls it; so does exit).

        The timer counts as running until the send returns: ids added meanwhile
        wait and go out together right after it, so a broker that hangs holds
        one thread per coalescer, not one more every window. A flush that
        finds the timer's send in flight waits for it, so once ``flush``
        returns, everything added before it has been handed off."""
        with self._sending:
            with self._lock:
                ids, self._ids = self._ids, []
            try:
                if ids:
                    self.send(ids)
            except Exception:  # send() logs broker errors itself; anything else must not kill the timer thread silently
                logger.exception(
                    "%s: handing off %s id(s) failed; the periodic sweep will send them", self.name, len(ids)
                )
            finally:
                with self._lock:
                    self._timer = None
                    if self._ids and self._pid == os.getpid():
                        self._start()

    def _start(self) -> None:
        self._timer = threading.Timer(settings.LOYALTY_HANDOFF_WINDOW_SECONDS, self.flush)
        self._timer.daemon = True
        self._timer.name = f"handoff-{self.name}"
        self._timer.start()


@atexit.register
def flush_all() -> None:
    """Hand off everything gathered in this process now (at exit; tests)."""
    for coalescer in list(_ALL):
        if coalescer._pid == os.getpid():
            coalescer.flush()
