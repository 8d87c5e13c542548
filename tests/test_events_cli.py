"""``pgtide events work|publish|ls|retry`` and the events section of ``pgtide status``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from events_helpers import wait_for
from pgtide_testing import CliRunner

import pgtide

APP = """
import pgtide

events = pgtide.Events(poll_interval=0.05)


@events.handler("greet")
def greet(event):
    return {"hello": event.payload["who"]}


@events.handler("explode", retries=0)
def explode(event):
    raise RuntimeError("kaboom")
"""


def test_publish_ls_retry_and_status(cli: CliRunner, dsn: str) -> None:
    env = {"PGTIDE_DSN": dsn}
    out = cli("events", "publish", "greet", '{"who": "ada"}', env=env)
    assert out.returncode == 0, out.stderr
    published = json.loads(out.stdout)  # piped: JSON lines
    assert published["name"] == "greet" and published["payload"] == {"who": "ada"}
    out = cli("events", "publish", "note", "plain words", "--key", "k1", env=env)
    assert json.loads(out.stdout)["payload"] == "plain words"

    out = cli("events", "ls", "--state", "pending", env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["note", "greet"]
    assert rows[0]["key"] == "k1"

    out = cli("events", "ls", "--state", "sleeping", env=env)
    assert out.returncode == 1
    assert "unknown event state 'sleeping'" in out.stderr and len(out.stderr.splitlines()) == 1

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgtide.events SET state = 'dead' WHERE id = %s", (published["id"],))
    out = cli("events", "retry", str(published["id"]), env=env)
    assert out.returncode == 0, out.stderr
    assert pgtide.Events(dsn=dsn).get(published["id"]).state == "pending"  # type: ignore[union-attr]
    out = cli("events", "retry", "999999", env=env)
    assert out.returncode == 1 and "no done, failed or dead event with id 999999" in out.stderr

    out = cli("status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    section = json.loads(out.stdout)["events"]
    assert section == [
        {
            "table": "pgtide.events",
            "pending": 2,
            "running": 0,
            "done": 0,
            "failed": 0,
            "dead": 0,
            "cancelled": 0,
            "waiting": 0,
            "unhandled": 2,
            "workers": 0,
        }
    ]


def test_work_runs_the_app_and_stops_on_ctrl_c(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(APP)
    events = pgtide.Events(dsn=dsn)
    ok = events.publish("greet", {"who": "grace"})
    bad = events.publish("explode")
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "events", "work", "myapp.tasks:events", "-c", "2"],
        cwd=tmp_path,
        env={**os.environ, "PGTIDE_DSN": dsn},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: events.get(ok).state == "done", what="greet done")  # type: ignore[union-attr]
        wait_for(lambda: events.get(bad).state == "dead", what="explode dead")  # type: ignore[union-attr]
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    assert events.get(ok).result == {"hello": "grace"}  # type: ignore[union-attr]
    assert f"event name=greet id={ok} attempt=1 outcome=done" in err
    assert f"event name=explode id={bad} attempt=1 outcome=dead" in err
    assert "stopped" in err
    events.close()


def test_work_with_a_bad_target_is_one_clear_line(cli: CliRunner, dsn: str, tmp_path: Path) -> None:
    out = cli("events", "work", "no_such_module:events", env={"PGTIDE_DSN": dsn})
    assert out.returncode == 1
    assert "cannot import module 'no_such_module'" in out.stderr
    (tmp_path / "notevents.py").write_text("events = 42\n")
    out = cli("events", "work", "notevents:events", env={"PGTIDE_DSN": dsn})
    assert out.returncode == 1
    assert "notevents:events is a int, not a pgtide.Events" in out.stderr
    out = cli("events", "work", "notevents", env={"PGTIDE_DSN": dsn})
    assert "name the object as module:attribute" in out.stderr


ASYNC_APP = """
import pgtide.aio

events = pgtide.aio.Events(poll_interval=0.05)


@events.handler("greet")
async def greet(event):
    return {"hello": event.payload}
"""


def test_work_runs_an_asyncio_app(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "asyncapp.py").write_text(ASYNC_APP)
    events = pgtide.Events(dsn=dsn)
    ok = events.publish("greet", "linus")
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "events", "work", "asyncapp:events"],
        cwd=tmp_path,
        env={**os.environ, "PGTIDE_DSN": dsn},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: events.get(ok).state == "done", what="greet done")  # type: ignore[union-attr]
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    assert events.get(ok).result == {"hello": "linus"}  # type: ignore[union-attr]
    assert "stopped" in err
    events.close()


def test_purge_command(cli: CliRunner, dsn: str) -> None:
    events = pgtide.Events(dsn=dsn)
    events.publish("x")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgtide.events SET state = 'done', finished_at = now() - interval '8 days'"
        )
    out = cli("events", "purge", "--older-than", "7d", env={"PGTIDE_DSN": dsn})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"deleted": 1}
    out = cli("events", "purge", "--older-than", "soon", env={"PGTIDE_DSN": dsn})
    # (issue 12: durations use the one syntax of every pgtide command)
    assert out.returncode != 0 and "is not a duration" in out.stderr
    events.close()


SLOW_APP = """
import asyncio, pathlib, time
import pgtide{aio}

events = pgtide{aio}.Events(poll_interval=0.05)


@events.handler("slow")
{prefix}def slow(event):
    pathlib.Path(f"started-{{event.id}}").touch()
    {sleep}(1.0)
    return "finished"
"""


@pytest.mark.parametrize(
    ("flavour", "sig"),
    [("blocking", signal.SIGTERM), ("blocking", signal.SIGINT), ("asyncio", signal.SIGTERM)],
    ids=["blocking-SIGTERM", "blocking-SIGINT", "asyncio-SIGTERM"],
)
def test_work_stops_on_sigterm_finishing_the_running_event_and_giving_back_the_rest(
    tmp_path: Path, dsn: str, flavour: str, sig: signal.Signals
) -> None:
    """As systemd, Docker or Kubernetes stop it: exit 0, the running event done, the claimed
    ones not started pending again at once (not left to the 30 s lease), no attempt counted."""
    fill = (
        {"aio": ".aio", "prefix": "async ", "sleep": "await asyncio.sleep"}
        if flavour == "asyncio"
        else {"aio": "", "prefix": "", "sleep": "time.sleep"}
    )
    (tmp_path / "slowapp.py").write_text(SLOW_APP.format(**fill))
    events = pgtide.Events(dsn=dsn)
    first, *rest = events.publish_many("slow", list(range(5)))
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgtide", "events", "work", "slowapp:events", "-c", "1"],
        cwd=tmp_path,
        env={**os.environ, "PGTIDE_DSN": dsn},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / f"started-{first}").exists(), what="the first handler")
        assert events.get(rest[0]).state == "running"  # type: ignore[union-attr]  # claimed
        began = time.monotonic()
        worker.send_signal(sig)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert time.monotonic() - began < 10
    done = events.get(first)
    assert done is not None and (done.state, done.attempts, done.result) == ("done", 1, "finished")
    with psycopg.connect(dsn) as conn:
        back = conn.execute(
            "SELECT state, attempts, lease_owner, lease_expires, run_after <= now() "
            "FROM pgtide.events WHERE id = ANY(%s)",
            (rest,),
        ).fetchall()
        assert back == [("pending", 0, None, None, True)] * 4
        assert conn.execute("SELECT count(*) FROM pgtide.event_workers").fetchone() == (0,)
    assert not any((tmp_path / f"started-{i}").exists() for i in rest)
    events.close()


def test_show_cancel_pause_resume_schedule_and_retry_dead(cli: CliRunner, dsn: str) -> None:
    env = {"PGTIDE_DSN": dsn}
    with pgtide.Events(dsn=dsn) as events:
        dead = events.publish("boom")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgtide.events SET state = 'dead', attempts = 1, "
                "error = E'Traceback (most recent call last):\\n  File x\\nValueError: nope' "
                "WHERE id = %s",
                (dead,),
            )
        out = cli("events", "show", str(dead), env=env)
        assert out.returncode == 0, out.stderr
        assert "Traceback" in out.stdout and "ValueError: nope" in out.stdout
        out = cli("events", "retry", "--dead", "--json", env=env)
        assert json.loads(out.stdout) == {"retried": 1}

        waiting = events.publish("later")
        out = cli("events", "cancel", str(waiting), "--json", env=env)
        assert json.loads(out.stdout) == {"id": waiting, "state": "cancelled"}
        out = cli("events", "cancel", str(waiting), env=env)
        assert out.returncode == 1 and "already ended" in out.stderr

        assert cli("events", "pause", "report", env=env).returncode == 0
        assert events.status()["paused"] == ["report"]
        assert cli("events", "resume", "report", env=env).returncode == 0
        assert events.status()["paused"] == []

        out = cli(
            "events",
            "schedule",
            "add",
            "report",
            "0 3 * * *",
            "--tz",
            "Europe/Paris",
            "--id",
            "nightly",
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["next_at"].endswith(("01:00:00+00:00", "02:00:00+00:00"))
        out = cli("events", "schedule", "ls", "--json", env=env)
        assert json.loads(out.stdout)["cron"] == "0 3 * * *"
        assert cli("events", "schedule", "rm", "nightly", env=env).returncode == 0
        out = cli("events", "schedule", "rm", "nightly", env=env)
        assert out.returncode == 1 and "no schedule 'nightly'" in out.stderr
