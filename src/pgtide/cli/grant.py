"""``pgtide grant ROLE``: give a least-privilege role what pgtide's features need."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import grants, schema
from ..connect import resolve
from ..session import run, using
from ._common import DsnOption, JsonOption, console, emit_json


def grant(
    role: Annotated[str, typer.Argument(help="The role to grant to (it must exist).")],
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--feature",
            help="Only what this feature needs: listen, feed, events or ingest (repeatable).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the GRANTs without running them.")
    ] = False,
    dsn: DsnOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant ROLE exactly what pgtide needs (run it as the owner of schema pgtide).

    USAGE on schema pgtide, and SELECT, INSERT, UPDATE, DELETE on the tables of the chosen
    features (all by default). Installing the schema, and tracking a table (which creates
    triggers on it), stay with the owners.
    """
    chosen = resolve(dsn)
    with using(chosen) as conn:
        texts = [s.as_string(conn) for s in grants.statements(role, features)]
        if not dry_run:
            schema.ensure(conn)
            run(conn, grants.grant(role, features))
    if as_json:
        emit_json({"role": role, "granted": not dry_run, "statements": texts})
        return
    for text in texts:
        console.print(f"{text};", highlight=False, soft_wrap=True)
    if not dry_run:
        console.print(f"[green]granted[/] to {role}", highlight=False)
