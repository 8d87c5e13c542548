"""Awaiting blocking work from asyncio: the one way the asyncio faces run a thread's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def run_in_thread(run: Callable[[], None], stop: Callable[[], None]) -> None:
    """Await ``run()`` in a worker thread. Cancelling the awaiting task calls ``stop()`` and
    waits for ``run`` to return before the cancellation goes on, so no thread is left behind."""
    work = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        stop()
        await asyncio.wait([work])
        failure = None if work.cancelled() else work.exception()
        if failure is not None:
            raise failure from None  # what stopped the work says more than the cancellation
        raise
