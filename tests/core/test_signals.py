"""SIGTERM stops a blocking run() as Ctrl-C does; handlers are restored after."""

from __future__ import annotations

import os
import signal
import threading

import pytest

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
