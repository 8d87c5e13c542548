"""``pgtide listen`` and ``pgtide notify``: the real command, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from listen_helpers import listener_backends, wait_until
from pgtide_testing import CliRunner
from rich.console import Console

import pgtide
import pgtide.cli.listen as cli_listen
from pgtide.cli.listen import print_note


def test_notify_sends_and_reports(dsn: str, cli: CliRunner) -> None:
    with pgtide.Listener(dsn=dsn) as listener:
        got: list[object] = []
        listener.subscribe("my ch", lambda note: got.append(note.payload))
        done = cli("notify", "my ch", '{"a": 1}', "--dsn", dsn)
        assert done.returncode == 0, done.stderr
        assert '"my ch"' in done.stdout and "8 bytes" in done.stdout
        done = cli("notify", "my ch", "--json", "--dsn", dsn)  # an empty NOTIFY
        assert json.loads(done.stdout)["bytes"] == 0
        wait_until(lambda: got == [{"a": 1}, ""])


def test_notify_refuses_an_oversized_payload_in_one_line(dsn: str, cli: CliRunner) -> None:
    done = cli("notify", "ch", "x" * 8000, "--dsn", dsn)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "8000 bytes" in done.stderr
    assert "Traceback" not in done.stderr


def test_listen_prints_json_lines_and_exits_0_on_ctrl_c(dsn: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "listen", "orders", "My-Channel", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ},
    )
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()  # a name with capitals: a warning, once
        assert "'My-Channel' has capital letters" in warning and "'my-channel'" in warning
        assert "listening on orders, My-Channel" in proc.stderr.readline()  # LISTEN is active
        assert len(listener_backends(dsn)) == 1
        pgtide.notify("orders", {"id": 7}, dsn=dsn)
        pgtide.notify("My-Channel", "plain text", dsn=dsn)
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        assert (first["channel"], first["payload"]) == ("orders", {"id": 7})
        assert (second["channel"], second["payload"], second["raw"]) == (
            "My-Channel",
            "plain text",
            "plain text",
        )
        assert isinstance(first["pid"], int) and first["received_at"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_listen_on_a_terminal_prints_readable_lines(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = cli("listen", "--help")
    assert done.returncode == 0 and "--json" in done.stdout
    console = Console(record=True, width=120, force_terminal=True)
    monkeypatch.setattr(cli_listen, "console", console)
    print_note(pgtide.Notification("orders", {"id": 1}, '{"id": 1}', 1, datetime.now(UTC)))
    print_note(
        pgtide.Notification("x", "raw", "raw", 1, datetime.now(UTC), error="ValueError: bad")
    )
    text = console.export_text()
    assert "orders" in text and '{"id": 1}' in text and "ValueError: bad" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_listen_stops_gracefully_on_sigterm_as_on_ctrl_c(
    dsn: str, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "listen", "orders", "--json", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert "listening on orders" in proc.stderr.readline()
        pgtide.notify("orders", {"id": 1}, dsn=dsn)
        assert json.loads(proc.stdout.readline())["payload"] == {"id": 1}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err  # not 143 (killed by SIGTERM) nor 130
        assert "Traceback" not in err and out == ""
        wait_until(lambda: not listener_backends(dsn), what="the connection to close")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
