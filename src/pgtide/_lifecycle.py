"""The one shape of ``with``/``async with`` for pgtide's objects: start on entry when the
object runs in the background, close on exit, whatever the feature."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self


class Closable(ABC):
    """``with obj:`` closes it at the end of the block."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runnable(Closable):
    """``with obj:`` starts it in the background, then closes it at the end of the block."""

    @abstractmethod
    def start(self) -> None:
        """Run in the background."""

    def __enter__(self) -> Self:
        self.start()
        return self


class AsyncClosable(ABC):
    """``async with obj:`` closes it at the end of the block."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the object holds."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRunnable(AsyncClosable):
    """``async with obj:`` starts it as a background task, then closes it at the end."""

    @abstractmethod
    async def start(self) -> None:
        """Run in the background."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self
