"""Where the database is, and how pgtide connects to it.

This module is the only place that opens connections. It resolves the database from the
sources listed in :func:`resolve` (first match wins), masks passwords wherever a DSN is shown,
and turns connection failures into one clear :class:`~pgtide.errors.ConnectionFailed` that names
the source and the host.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg import conninfo as _conninfo

from .errors import ConfigError, ConnectionFailed

ENV_FILES = ("pgtide.env", ".env")
"""Env files read from the working directory, in this order."""

ENV_FILE_VARIABLE = "PGTIDE_ENV_FILE"
"""Names an env file at any path (such as a ``jumbo.env`` kept as it is), read instead of
``pgtide.env`` and ``.env``; ``pgtide --env-file PATH`` sets it."""

DSN_KEYS = ("PGTIDE_DSN", "DATABASE_URL")
"""Environment variables (and env-file keys) that hold a whole connection string."""

PART_KEYS = {
    "DATABASE_HOST": "host",
    "DATABASE_PORT": "port",
    "DATABASE_USERNAME": "user",
    "DATABASE_PASSWORD": "password",
    "DATABASE_NAME": "dbname",
}
"""Env-file keys that give a connection piece by piece (the jumbo.env convention)."""

POOLER_KEY = "PGTIDE_POOLER"
"""Set to ``transaction`` when pgtide connects through a transaction-pooling proxy (PgBouncer
with ``pool_mode = transaction``, and the like); see :func:`pooled`."""

DEFAULT_CONNECT_TIMEOUT = 10
APPLICATION_NAME = "pgtide"

_URL_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^:/@?#]*):(?P<secret>[^@]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&#]*)", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)")
_QUOTED = re.compile(r'"[^"]*"')
MASK = "***"


def mask_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by ``***``; works on URLs and key=value strings."""
    if "://" in dsn:
        masked = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", dsn)
        return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", masked)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", dsn)


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    """Remove every known secret from a message that came from libpq or the server."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, MASK)
    return message


@dataclass(frozen=True)
class Resolved:
    """A database chosen by :func:`resolve`: the DSN and the source that chose it.

    The connection string is parsed once, here; its ``repr`` and ``str`` never show the
    password.
    """

    dsn: str
    source: str
    detail: str = ""
    params: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.params and self.dsn:
            object.__setattr__(self, "params", _parse(self.dsn, self.source))

    @property
    def masked(self) -> str:
        """The DSN with its password masked (the libpq environment for the ``PG*`` source)."""
        if not self.dsn and self.params:
            return " ".join(f"{k}={MASK if k == 'password' else v}" for k, v in self.params.items())
        return mask_dsn(self.dsn)

    @property
    def target(self) -> str:
        """Where the connection goes, as ``host:port/dbname`` (or a socket directory)."""
        p = self.params
        host = p.get("host") or p.get("hostaddr") or "localhost"
        port = p.get("port") or "5432"
        db = p.get("dbname") or p.get("user") or ""
        where = f"{host}:{port}" if not host.startswith("/") else f"socket {host}"
        return f"{where}/{db}" if db else where

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.params.get("password", ""),) if s)

    def describe(self) -> str:
        """One line for people: the masked DSN and where it came from."""
        origin = f"{self.source} ({self.detail})" if self.detail else self.source
        return f"{self.masked}  [from {origin}]"

    def __repr__(self) -> str:
        return f"Resolved(dsn={self.masked!r}, source={self.source!r})"

    __str__ = describe


def _parse(dsn: str, source: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in _conninfo.conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError as exc:
        # libpq quotes pieces of the string; keep only punctuation, as they may hold a secret
        reason = _QUOTED.sub(lambda m: m[0] if len(m[0]) == 3 else '"…"', str(exc).strip())
        raise ConfigError(
            f"{source} does not hold a valid PostgreSQL connection string ({reason}); "
            "use postgresql://user@host:5432/dbname or 'host=... dbname=...'"
        ) from None


def _libpq_env() -> dict[str, str]:
    names = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGDATABASE": "dbname"}
    params = {key: os.environ[env] for env, key in names.items() if os.environ.get(env)}
    if os.environ.get("PGPASSWORD"):
        params["password"] = os.environ["PGPASSWORD"]
    return params


def _from_env_file(path: Path) -> Resolved | None:
    from dotenv import dotenv_values

    try:
        values = {k: v for k, v in dotenv_values(path).items() if v}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {exc}") from None
    for key in DSN_KEYS:
        if key in values:
            return Resolved(values[key], path.name, detail=f"key {key}")
    parts = {PART_KEYS[k]: v for k, v in values.items() if k in PART_KEYS}
    if "host" in parts or "dbname" in parts:
        return Resolved(_conninfo.make_conninfo(**parts), path.name, detail="DATABASE_* keys")
    return None


DsnLike: TypeAlias = (
    "str | Mapping[str, Any] | psycopg.Connection[Any] | psycopg.AsyncConnection[Any]"
    " | Resolved | None"
)
"""What ``dsn=`` accepts everywhere: a connection string, a dict of libpq keywords (such as
``{"host": ..., "dbname": ...}``), a psycopg connection (its parameters are reused), or None."""


def resolve(dsn: DsnLike = None, *, start_embedded: bool = True) -> Resolved:
    """Choose the database, first match wins.

    An explicit ``dsn``; ``PGTIDE_DSN``; ``DATABASE_URL``; libpq's ``PG*`` variables when
    ``PGHOST`` or ``PGDATABASE`` is set; the env file named by ``PGTIDE_ENV_FILE``, else
    ``pgtide.env`` then ``.env`` in the working directory; otherwise the embedded PostgreSQL,
    started if needed (unless ``start_embedded`` is false).
    """
    if isinstance(dsn, Resolved):
        return dsn
    found = _find(_explicit(dsn))
    if found is None:
        from . import embedded

        if not start_embedded:
            return Resolved("", "embedded", detail="not started")
        server = embedded.ensure_running()
        return Resolved(server.dsn, "embedded", detail=str(server.home))
    return found


def _explicit(dsn: object) -> str | None:
    """The connection string of an explicit ``dsn=`` of any accepted kind."""
    if dsn is None or isinstance(dsn, str):
        return dsn or None
    if isinstance(dsn, psycopg.Connection | psycopg.AsyncConnection):
        options = {
            o.keyword.decode(): o.val.decode()
            for o in dsn.pgconn.info
            if o.val is not None and o.keyword.decode() not in _NOT_REUSED
        }
        return _conninfo.make_conninfo(**options)
    if isinstance(dsn, Mapping):
        try:
            return _conninfo.make_conninfo(**{str(k): v for k, v in dsn.items() if v is not None})
        except psycopg.ProgrammingError:
            raise ConfigError(
                f"dsn dict has keys libpq does not know ({', '.join(map(str, dsn))}); use "
                "libpq keywords such as host, port, user, password, dbname"
            ) from None
    raise ConfigError(
        f"dsn must be a connection string, a dict of libpq keywords or a psycopg connection, "
        f"not {type(dsn).__name__}; for example dsn='postgresql://user@host/db'"
    )


_NOT_REUSED = frozenset({"fallback_application_name", "replication"})


def _find(dsn: str | None) -> Resolved | None:
    if dsn:
        return Resolved(dsn, "dsn argument")
    for key in DSN_KEYS:
        if os.environ.get(key):
            return Resolved(os.environ[key], key)
    if os.environ.get("PGHOST") or os.environ.get("PGDATABASE"):
        return Resolved("", "PG* environment variables", params=_libpq_env())
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{ENV_FILE_VARIABLE} names {path}, which is not a file; fix the path or unset it"
            )
        return _from_env_file(path)
    for name in ENV_FILES:
        path = Path.cwd() / name
        if path.is_file():
            found = _from_env_file(path)
            if found is not None:
                return found
    return None


def dsn(dsn: DsnLike = None) -> str:
    """The connection string pgtide will use (starting the embedded server if it is the one)."""
    return resolve(dsn).dsn


def pooled() -> bool:
    """Whether pgtide's connections go through a transaction-pooling proxy
    (``PGTIDE_POOLER=transaction``).

    Such a proxy gives each transaction whichever server connection is free, so nothing may
    outlive a transaction: pgtide then prepares no statements, sets nothing for a session,
    and polls instead of LISTENing (a notification would reach whichever client holds that
    server connection then). What needs a session of its own (a Listener, the WAL relay,
    backfill runners) refuses to start, naming the fix: a direct connection.
    """
    value = os.environ.get(POOLER_KEY, "").strip().lower()
    if value in ("", "none", "session"):
        return False
    if value == "transaction":
        return True
    raise ConfigError(
        f"{POOLER_KEY}={value!r} is not a pool mode pgtide knows; set it to 'transaction' when "
        "connecting through a transaction-pooling proxy (PgBouncer's pool_mode = transaction), "
        "else unset it"
    )


def needs_session(what: str) -> None:
    """Refuse to start ``what`` behind a transaction pooler (see :func:`pooled`)."""
    if pooled():
        raise ConfigError(
            f"{what} needs a session of its own, which a transaction-pooling proxy does not "
            f"keep ({POOLER_KEY}=transaction): give it a DSN that reaches PostgreSQL directly "
            f"(or through a session-mode pool), with {POOLER_KEY} unset for that process"
        )


def _connect_kwargs(resolved: Resolved, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = resolved.params
    kwargs.setdefault("application_name", APPLICATION_NAME)
    if pooled():
        kwargs["prepare_threshold"] = None  # a prepared statement lives in one server session
    if "connect_timeout" not in params:
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return kwargs


def _failure(resolved: Resolved, exc: Exception) -> ConnectionFailed:
    reason = _scrub(
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        resolved.secrets,
    )
    origin = f"{resolved.source} ({resolved.detail})" if resolved.detail else resolved.source
    return ConnectionFailed(
        f"cannot connect to PostgreSQL at {resolved.target} (chosen by {origin}): {reason}; "
        f"check that the server is running and reachable, or change {resolved.source}",
        source=resolved.source,
        target=resolved.target,
    )


def connect(
    dsn: DsnLike = None, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Open a blocking connection to the resolved database (autocommit by default)."""
    resolved = resolve(dsn)
    try:
        return psycopg.Connection.connect(
            resolved.dsn, autocommit=autocommit, **_connect_kwargs(resolved, kwargs)
        )
    except psycopg.OperationalError as exc:
        raise _failure(resolved, exc) from None


async def aconnect(
    dsn: DsnLike = None, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """Open an asyncio connection to the resolved database (autocommit by default)."""
    resolved = dsn if isinstance(dsn, Resolved) else await asyncio.to_thread(resolve, dsn)
    try:
        return await psycopg.AsyncConnection.connect(
            resolved.dsn, autocommit=autocommit, **_connect_kwargs(resolved, kwargs)
        )
    except psycopg.OperationalError as exc:
        raise _failure(resolved, exc) from None


def backoff_delay(attempt: int, initial: float, maximum: float, factor: float = 2.0) -> float:
    """The delay before retry number ``attempt`` (0 first): exponential, capped, with jitter.

    Half the ceiling is fixed and half is random, so that many clients that failed together
    do not retry together. The one backoff rule of pgtide (reconnects, event retries).
    """
    ceiling = maximum
    if attempt < 64:  # beyond that any factor > 1 has long passed the maximum
        ceiling = min(maximum, initial * factor ** max(0, attempt))
    return random.uniform(ceiling / 2, ceiling)


@dataclass
class Backoff:
    """Exponential backoff with full jitter, for reconnect loops.

    ``next()`` gives the next delay; ``reset()`` after a success starts over.
    """

    initial: float = 0.05
    maximum: float = 5.0
    factor: float = 2.0
    attempt: int = 0

    def next(self) -> float:
        delay = backoff_delay(self.attempt, self.initial, self.maximum, self.factor)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next()
