"""The exceptions pgtide raises. Every one derives from :class:`PgtideError`."""

from __future__ import annotations


class PgtideError(Exception):
    """Base class of every error pgtide raises on purpose."""


class ConfigError(PgtideError, ValueError):
    """The configuration names something impossible: a malformed DSN, an unreadable env file."""


class InvalidName(ConfigError):
    """A table or column name pgtide cannot read; the message shows how to write it."""


class ConnectionFailed(PgtideError):
    """The chosen database cannot be reached. The message names the source and the host."""

    def __init__(self, message: str, *, source: str = "", target: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.target = target


class PermissionDenied(PgtideError):
    """The database role lacks a privilege pgtide needs; the message names the GRANTs to run."""

    def __init__(self, message: str, *, role: str = "") -> None:
        super().__init__(message)
        self.role = role


class EmbeddedError(PgtideError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""


class SchemaError(PgtideError):
    """pgtide's schema could not be installed or is missing."""


class PayloadTooLarge(PgtideError, ValueError):
    """A NOTIFY payload is at or over PostgreSQL's 8000-byte limit."""


class IngestError(PgtideError):
    """Ingesting cannot go on: a missing table or column, or SQL the server refuses."""


class EventPayloadError(PgtideError, TypeError):
    """An event's payload (or a handler's result) cannot be stored as JSON."""


class InvalidChannel(PgtideError, ValueError):
    """A NOTIFY channel name PostgreSQL cannot hold (empty, over 63 bytes, or with a NUL)."""


class InvalidPayload(PgtideError, ValueError):
    """A NOTIFY payload that cannot be sent (not encodable, or holding a NUL character)."""


class UnknownSubscriber(PgtideError, LookupError):
    """A subscriber id that is not registered (on the channel named)."""


class FeedError(PgtideError):
    """The change feed cannot do what was asked (see the message for the fix)."""


class UnknownTable(FeedError, LookupError):
    """A table name that does not exist, or is not tracked where that is required."""


class InvalidPosition(FeedError, ValueError):
    """A feed position that cannot be read back, or a start/stop of the wrong kind."""
