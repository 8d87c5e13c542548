"""``pgtide track|untrack|follow|prune|consumers|status`` through the real command."""

from __future__ import annotations

import json

import psycopg
from pgtide_testing import CliRunner


def test_track_follow_prune_status(dsn: str, cli: CliRunner) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, v text)")
    assert cli("track", "orders", "--dsn", dsn).returncode == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
        conn.execute("DELETE FROM orders WHERE id = 1")
    out = cli("follow", "--consumer", "cli", "--timeout", "0.5", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(c["op"], c["row"], c["old"]) for c in lines] == [
        ("insert", {"id": 1, "v": "a"}, None),
        ("insert", {"id": 2, "v": "b"}, None),
        ("delete", None, {"id": 1, "v": "a"}),
    ]
    again = cli("follow", "-c", "cli", "--timeout", "0.3", "--dsn", dsn)
    assert again.stdout == ""  # acknowledged as it went
    replay = cli("follow", "-c", "other", "--from", "end", "--timeout", "0.3", "--dsn", dsn)
    assert replay.stdout == ""
    status = cli("status", "--json", "--dsn", dsn)
    sections = json.loads(status.stdout)
    feed = sections["consumers"]
    assert {row["consumer"]: row["pending_changes"] for row in feed} == {"cli": 0, "other": 0}
    pruned = cli("prune", "--json", "--dsn", dsn)
    assert json.loads(pruned.stdout) == {"deleted": 3}
    listed = cli("consumers", "ls", "--json", "--dsn", dsn)
    assert [json.loads(x)["name"] for x in listed.stdout.splitlines()] == ["cli", "other"]
    assert "dropped" in cli("consumers", "drop", "other", "--dsn", dsn).stdout
    unknown = cli("consumers", "drop", "other", "--dsn", dsn)
    assert unknown.returncode == 1 and "no consumer named 'other'" in unknown.stderr
    assert "no longer tracking" in cli("untrack", "orders", "--dsn", dsn).stdout


def test_unknown_table_is_one_clear_line(dsn: str, cli: CliRunner) -> None:
    out = cli("track", "public.nope", "--dsn", dsn)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "pgtide: error: table public.nope does not exist; create it first, or check the "
        "spelling (names are case-sensitive; write 'schema.table' outside schema public)"
    ]
    bad = cli("follow", "-c", "x", "--table", "nope", "--timeout", "0", "--dsn", dsn)
    assert bad.returncode == 1 and "not tracked" in bad.stderr
