"""SIGTERM stops a blocking run() as Ctrl-C does; handlers are restored after."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from pgtide import _signals
from pgtide._signals import stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_calls_stop_once_then_handlers_come_back(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    stopped = threading.Event()
    with stop_on_signals(stopped.set):
        os.kill(os.getpid(), sig)
        assert stopped.wait(5)
    assert signal.getsignal(sig) is before


def test_a_programs_own_handler_is_left_alone() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        stopped = threading.Event()
        with stop_on_signals(stopped.set):
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM] and not stopped.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_changes() -> None:
    results: list[object] = []

    def body() -> None:
        with stop_on_signals(lambda: None):
            results.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert results == [signal.getsignal(signal.SIGTERM)]


@pytest.mark.parametrize("waiting", ["event", "join"])
def test_a_signal_that_lands_on_another_thread_still_stops_a_waiting_main_thread(
    waiting: str,
) -> None:
    """The kernel may deliver SIGINT to any thread; its handler runs in the main thread only
    when that thread runs Python code. A main thread in an untimed wait never did (a worker's
    run() waiting for its plan to end missed a Ctrl-C that a pool thread caught)."""
    stopped = threading.Event()
    sent = threading.Event()
    worker = threading.Thread(target=stopped.wait, args=(30,))  # stands for the work

    main = threading.main_thread().ident
    assert main is not None

    def blocked() -> bool:  # the main thread waits (in Python's wait or join, not past it)
        frame = sys._current_frames().get(main)
        return frame is not None and frame.f_code.co_name in {"wait", "_wait_for_tstate_lock"}

    def other() -> None:  # a thread that is not the main one takes the signal
        while not blocked():
            time.sleep(0.001)
        time.sleep(0.05)  # well inside the wait
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        sent.set()
        stopped.wait(10)
        stopped.set()  # without the fix, the handler never ran: end the test anyway

    began = time.monotonic()
    with stop_on_signals(stopped.set):
        worker.start()
        threading.Thread(target=other, daemon=True).start()
        if waiting == "event":
            _signals.wait(stopped)
        else:
            _signals.join(worker)
    took = time.monotonic() - began
    assert sent.is_set() and took < 5, f"the main thread heard the signal after {took:.1f} s"
