"""Foundation: connection set-up through pgtide's resolver against raw psycopg."""

from __future__ import annotations

import psycopg

from pgtide.connect import connect, resolve

from ._harness import Figure, best_of, rate

SUITE = "foundation"


def run(dsn: str) -> list[Figure]:
    n = 50
    chosen = resolve(dsn)

    def raw() -> None:
        for _ in range(n):
            psycopg.connect(dsn).close()

    def ours() -> None:
        for _ in range(n):
            connect(chosen).close()

    def resolving() -> None:
        for _ in range(n):
            connect(dsn).close()

    return [
        Figure(SUITE, "psycopg.connect", rate(n, best_of(3, raw)), "connections/s"),
        Figure(
            SUITE,
            "pgtide connect (resolved)",
            rate(n, best_of(3, ours)),
            "connections/s",
            baseline="psycopg.connect",
        ),
        Figure(
            SUITE,
            "pgtide connect (resolve each)",
            rate(n, best_of(3, resolving)),
            "connections/s",
            baseline="psycopg.connect",
        ),
    ]
