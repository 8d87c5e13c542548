"""Events: rows dispatched to handlers by name, with results, retries and many workers.

The blocking face is :class:`Events` (``pgtide.Events``); the asyncio face is
``pgtide.aio.Events``. Both share one core (:mod:`._core`) and one worker (:mod:`._worker`).
"""

from ._core import EventRecord
from ._model import STATES, Event, HandlerSpec
from ._sync import Events

__all__ = ["STATES", "Event", "EventRecord", "Events", "HandlerSpec"]
