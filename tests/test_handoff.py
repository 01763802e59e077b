"""loyalty/handoff.py: after-commit hand-offs gathered and sent from a background thread."""

from __future__ import annotations

import threading
import time

import pytest
from django.test import override_settings as django_override_settings

from loyalty.celery import app
from loyalty.handoff import Coalescer


class override_settings(django_override_settings):  # noqa: N801 - used as a decorator like Django's
    """Django settings, and Celery's eager flag (Celery read the settings once)."""

    def enable(self) -> None:
        super().enable()
        self._eager = app.conf.task_always_eager
        app.conf.task_always_eager = self.options.get("CELERY_TASK_ALWAYS_EAGER", self._eager)

    def disable(self) -> None:
        app.conf.task_always_eager = self._eager
        super().disable()


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[int], str]] = []
        self.done = threading.Event()
        self.fail = fail

    def __call__(self, ids: list[int]) -> None:
        self.calls.append((ids, threading.current_thread().name))
        self.done.set()
        if self.fail:
            raise RuntimeError("broker exploded")


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.2, CELERY_TASK_ALWAYS_EAGER=False)
def test_ids_within_the_window_go_out_together_from_another_thread() -> None:
    recorder = Recorder()
    coalescer = Coalescer("test", recorder)
    started = time.monotonic()
    coalescer.add([1])
    coalescer.add([2, 3])
    assert recorder.calls == []  # the caller did not wait for the broker
    assert recorder.done.wait(5)
    assert time.monotonic() - started >= 0.19
    assert recorder.calls == [([1, 2, 3], "handoff-test")]
    # The next id starts a new window.
    recorder.done.clear()
    coalescer.add([4])
    assert recorder.done.wait(5)
    assert recorder.calls[-1][0] == [4]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.2, CELERY_TASK_ALWAYS_EAGER=True)
def test_eager_mode_hands_off_at_once_in_the_caller() -> None:
    recorder = Recorder()
    Coalescer("eager", recorder).add([7])
    assert recorder.calls == [([7], threading.current_thread().name)]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0, CELERY_TASK_ALWAYS_EAGER=False)
def test_window_zero_hands_off_at_once() -> None:
    recorder = Recorder()
    Coalescer("zero", recorder).add([8, 9])
    assert recorder.calls == [([8, 9], threading.current_thread().name)]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_a_failing_send_is_logged_and_the_next_window_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(fail=True)
    coalescer = Coalescer("failing", recorder)
    coalescer.add([1])
    assert recorder.done.wait(5)
    deadline = time.monotonic() + 5
    while "handing off 1 id(s) failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "failing: handing off 1 id(s) failed" in caplog.text
    recorder.done.clear()
    coalescer.add([2])
    assert recorder.done.wait(5)
    assert [ids for ids, _thread in recorder.calls] == [[1], [2]]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=30, CELERY_TASK_ALWAYS_EAGER=False)
def test_a_forked_child_does_not_count_on_the_parents_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    recorder = Recorder()
    coalescer = Coalescer("fork", recorder)
    coalescer.add([1])  # the parent's sender waits out the window
    parent_sender = coalescer._thread
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a child after fork (its threads are gone)
    coalescer.add([2])
    assert coalescer._thread is not parent_sender  # the child started its own
    assert coalescer._thread.is_alive()
    assert coalescer._ids == [2]  # the parent's ids are the parent's to send
    coalescer.flush()
    assert recorder.calls[-1][0] == [2]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_one_sender_thread_serves_every_window() -> None:
    """A thread per window cost each hand-off Celery's per-thread set-up again."""
    recorder = Recorder()
    coalescer = Coalescer("reused", recorder)
    for n in range(3):
        recorder.done.clear()
        coalescer.add([n])
        assert recorder.done.wait(5)
    assert [ids for ids, _thread in recorder.calls] == [[0], [1], [2]]
    assert {thread for _ids, thread in recorder.calls} == {"handoff-reused"}
    assert len([t for t in threading.enumerate() if t.name == "handoff-reused"]) == 1


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=30, CELERY_TASK_ALWAYS_EAGER=False)
def test_inside_a_celery_task_hands_off_at_once() -> None:
    """A worker's child process may exit (os._exit) before a window closes."""
    from celery import shared_task

    recorder = Recorder()
    coalescer = Coalescer("in-task", recorder)

    @shared_task(name="tests.handoff_probe")
    def probe() -> None:
        coalescer.add([5])

    probe.apply()  # runs in this thread as a task: current_task is set
    assert recorder.calls == [([5], threading.current_thread().name)]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_a_hanging_send_holds_one_thread_and_what_came_meanwhile_goes_out_next() -> None:
    """A broker that hangs (each send blocks for its timeouts) must not pile up a thread per window."""
    release = threading.Event()
    calls: list[list[int]] = []

    def slow_send(ids: list[int]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            release.wait(5)

    coalescer = Coalescer("hanging", slow_send)
    coalescer.add([1])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    for n in range(2, 12):  # ten more windows' worth while the first send hangs
        coalescer.add([n])
        time.sleep(0.02)
    running = [t for t in threading.enumerate() if t.name == "handoff-hanging"]
    assert len(running) == 1
    assert calls == [[1]]
    release.set()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [[1], list(range(2, 12))]


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_adds_from_many_threads_are_each_handed_off_once() -> None:
    received: list[int] = []
    lock = threading.Lock()

    def send(ids: list[int]) -> None:
        with lock:
            received.extend(ids)

    coalescer = Coalescer("threads", send)

    def add_many(start: int) -> None:
        for n in range(start, start + 200):
            coalescer.add([n])

    threads = [threading.Thread(target=add_many, args=(k * 1000,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 5
    while len(received) < 1600 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(received) == sorted(k * 1000 + n for k in range(8) for n in range(200))


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_a_flush_waits_for_the_send_in_flight() -> None:
    """flush_all() (at exit; tests) returns only when everything added before
    it is handed off, even when the sender thread took it and is still sending."""
    from loyalty.handoff import flush_all

    sending, release, finished = threading.Event(), threading.Event(), []

    def slow(ids: list[int]) -> None:
        sending.set()
        release.wait(5)
        finished.extend(ids)

    coalescer = Coalescer("slow", slow)
    coalescer.add([7])
    assert sending.wait(5)  # the sender thread's send is in flight
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    flush_all()
    assert finished == [7]
    assert time.monotonic() - started >= 0.25


class _SenderKilled(BaseException):
    """Not an ``Exception``: ``flush`` lets it end the sender thread."""


@override_settings(LOYALTY_HANDOFF_WINDOW_SECONDS=0.05, CELERY_TASK_ALWAYS_EAGER=False)
def test_a_sender_thread_that_died_is_replaced_and_nothing_waits_for_it(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[int]] = []
    done = threading.Event()

    def send(ids: list[int]) -> None:
        calls.append(ids)
        done.set()
        if ids == [1]:
            raise _SenderKilled()

    coalescer = Coalescer("dying", send)
    hook = threading.excepthook
    threading.excepthook = lambda args: None  # the thread's death is what is under test, not noise
    try:
        coalescer.add([1])
        assert done.wait(5)
        first = coalescer._thread
        first.join(5)
        assert not first.is_alive()
        done.clear()
        coalescer.add([2, 3])  # would wait forever on a dead sender
        assert done.wait(5)
    finally:
        threading.excepthook = hook
    assert calls == [[1], [2, 3]]
    assert coalescer._thread is not first
    assert coalescer._thread.is_alive()
    assert "dying: the sender thread had ended; starting another" in caplog.text
