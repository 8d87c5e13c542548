"""``pgtide install``: create or upgrade pgtide's schema."""

from __future__ import annotations

from .. import schema
from ..connect import resolve
from ._common import DsnOption, JsonOption, console, emit_json


def install(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Create or upgrade schema pgtide in the database (idempotent)."""
    chosen = resolve(dsn)
    version = schema.install(dsn=chosen)
    if as_json:
        emit_json({"schema": schema.SCHEMA, "version": version, "target": chosen.target})
    else:
        console.print(f"schema pgtide is at version {version} on {chosen.target}", highlight=False)
