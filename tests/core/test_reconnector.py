"""The one loop for kept connections (``session.Reconnector``) and its policy, with no database.

A scripted :class:`Served` stands for the LISTEN connection: each ``open()`` takes the next
step of its script (``refused``: the server cannot be reached; ``broken``: lost before it is
ready; ``lost``: ready, then lost; ``serve``: ready, then served until stop or restart).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from pgtide.connect import Backoff
from pgtide.errors import ConnectionFailed, PgtideError
from pgtide.session import Lost, Policy, Reconnector

LOG = "pgtide.test.reconnector"


class Script:
    """A :class:`pgtide.session.Served` that follows a script, one step per connection."""

    def __init__(self, *steps: str) -> None:
        self.steps = list(steps)
        self.opened: list[str] = []
        self.closed: list[int] = []
        self.errors: list[str] = []
        self.pauses: list[float] = []
        self.pausing = threading.Event()  # set when a wait begins
        self.back = threading.Event()  # set when a connection is ready again
        self.resumes = 0
        self._woken = threading.Event()
        self.keeper: Reconnector[int] = Reconnector(
            self,
            Policy(
                "tester",
                Backoff(initial=0.004, maximum=0.004),
                logger=logging.getLogger(LOG),
                target="db.example",
                secrets=("s3cret",),
                then="tests again",
            ),
            thread_name="pgtide-test-kept",
            purpose="TEST",
        )

    # -- Served ---------------------------------------------------------------------------

    def open(self) -> int:
        step = self.steps.pop(0) if self.steps else "serve"
        self.opened.append(step)
        if step == "refused":
            raise ConnectionFailed("cannot reach db.example: password s3cret refused")
        return len(self.opened)

    def serve(self, conn: int) -> None:
        step = self.opened[conn - 1]
        if step == "broken":
            raise Lost("no answer from the server within 5 s")
        self.keeper.ready()
        if step == "lost":
            raise psycopg.OperationalError("the server closed the connection")
        while not (self.keeper.stopping or self.keeper.due):
            self._woken.wait()
            self._woken.clear()

    def close(self, conn: int) -> None:
        self.closed.append(conn)

    def failed(self, reason: str) -> None:
        self.errors.append(reason)

    def resumed(self) -> str:
        self.resumes += 1
        self.back.set()
        return "tests again on 1 channel"

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.pausing.set()
        self._woken.wait(seconds)
        self._woken.clear()

    def wake(self) -> None:
        self._woken.set()


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG)


def test_the_first_connection_failing_is_raised_by_start_and_not_retried() -> None:
    script = Script("refused")
    with pytest.raises(ConnectionFailed, match="cannot reach"):
        script.keeper.start()
    assert not script.keeper.running
    assert script.opened == ["refused"] and script.pauses == [] and script.errors == []


def test_failing_before_ready_is_raised_by_start_as_a_pgtide_error() -> None:
    script = Script("broken")
    with pytest.raises(PgtideError, match=r"^tester could not TEST: no answer from the server"):
        script.keeper.start()
    assert not script.keeper.running
    assert script.closed == [1] and script.pauses == []  # closed, and no retry
    assert script.errors == ["no answer from the server within 5 s"]


def test_an_outage_waits_with_backoff_logs_once_then_quietly_and_says_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script("lost", "refused", "refused", "serve")
    script.keeper.start()
    try:
        assert script.back.wait(5)
    finally:
        assert script.keeper.stop()
    assert script.opened == ["lost", "refused", "refused", "serve"]
    assert script.closed == [1, 4]  # the refused attempts had nothing to close
    assert len(script.pauses) >= 3 and all(0 < p <= 0.004 for p in script.pauses)
    assert script.keeper.generation == 4 and script.resumes == 1
    assert script.keeper.policy.backoff.attempt == 0  # reset once ready again
    assert script.errors[0] == "the server closed the connection"
    assert "s3cret" in script.errors[1]  # the status keeps the text; the log masks it
    logged = messages(caplog)
    assert [level for level, _ in logged] == [logging.WARNING] * 2 + [logging.INFO] * 2
    lost, first, again, back = (text for _, text in logged)
    assert lost.startswith("The tester lost its connection to db.example (the server closed")
    assert lost.endswith("it reconnects with backoff and tests again.")
    assert "cannot reconnect to db.example yet (cannot reach db.example: password *** " in first
    assert "s3cret" not in first
    assert again.startswith("The tester still cannot reconnect (attempt 2 failed the same way)")
    assert "reconnected after" in back and back.endswith(
        " s (3 attempts) and tests again on 1 channel."
    )


def test_reconnect_now_reopens_at_once_without_backoff_and_calls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script()
    script.keeper.start()
    reopened = threading.Event()
    try:
        assert script.keeper.reconnect_now(reopened.set)
        assert reopened.wait(5) and script.back.is_set()
    finally:
        assert script.keeper.stop()
    assert script.pauses == [] and script.keeper.generation == 2 and script.closed == [1, 2]
    texts = [text for _, text in messages(caplog)]
    assert texts[0] == "The tester reopens its connection, as restart() asked."
    assert texts[1].startswith("The tester reconnected after ")
    assert not script.keeper.reconnect_now(reopened.set)  # stopped: nothing to wait for


def test_stop_during_a_backoff_wait_is_prompt_and_quiet(caplog: pytest.LogCaptureFixture) -> None:
    script = Script("lost", "refused")
    script.keeper.policy.backoff = Backoff(initial=60.0, maximum=60.0)
    script.keeper.start()
    assert script.pausing.wait(5)  # waiting up to a minute before the next attempt
    began = time.monotonic()
    assert script.keeper.stop(timeout=5)
    assert time.monotonic() - began < 1.0
    assert script.opened == ["lost"] and len(script.pauses) == 1  # no attempt after stop
    assert next(text for _, text in messages(caplog)).startswith("The tester lost its")


def test_stop_while_serving_ends_without_an_outage_line(caplog: pytest.LogCaptureFixture) -> None:
    script = Script()
    script.keeper.start()
    assert script.keeper.stop()
    assert script.closed == [1] and script.pauses == [] and messages(caplog) == []


def test_the_session_rule_raises_what_is_not_an_outage_and_logs_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy("probe", Backoff(initial=0.01, maximum=0.01), logger=logging.getLogger(LOG))
    with pytest.raises(ValueError):
        policy.delay(ValueError("the work's own"), None)
    refused = ConnectionFailed("refused")
    with pytest.raises(ConnectionFailed):
        policy.delay(refused, None)  # never connected: a configuration error
    policy.connected()
    assert 0 < policy.delay(refused, None) <= 0.01
    assert 0 < policy.delay(psycopg.OperationalError("gone\nhint"), None) <= 0.01
    (first, a), (then, b) = messages(caplog)
    assert (first, then) == (logging.WARNING, logging.INFO)  # one warning per outage
    assert a.startswith("probe: database connection lost (refused); retrying in 0.0")
    assert b.startswith("probe: database connection lost (gone); retrying in 0.0")
