"""Events: rows dispatched to handlers by name, with results, retries and many workers.

The blocking face is :class:`Events` (``pgtide.Events``); the asyncio face is
``pgtide.aio.Events``. Both run one core (:mod:`._core`, statements as ``Io``) and one worker
(:mod:`._worker`). :func:`overview` is what ``pgtide status`` shows about events.
"""

from ._async import Events as AsyncEvents
from ._core import LIVE_WINDOW, EventRecord, Schedule, overview
from ._model import STATES, Event, HandlerSpec
from ._stats import BUCKETS, OUTCOMES, Histogram
from ._sync import Events

__all__ = [
    "BUCKETS",
    "LIVE_WINDOW",
    "OUTCOMES",
    "STATES",
    "AsyncEvents",
    "Event",
    "EventRecord",
    "Events",
    "HandlerSpec",
    "Histogram",
    "Schedule",
    "overview",
]
