"""Listen: callbacks on PostgreSQL NOTIFY channels, decoded payloads, faults survived.

One core (``_core``: registry, bounded queue, connection thread, delivery) and two faces:
:class:`Listener` (blocking, here) and :class:`pgtide.aio.Listener` (asyncio, ``_async``).
"""

from ..channel import Notification, WhenFull
from ._async import AsyncNotificationIterator
from ._async import Listener as AsyncListener
from ._core import APPLICATION_NAME
from ._sync import Listener, NotificationIterator

__all__ = [
    "APPLICATION_NAME",
    "AsyncListener",
    "AsyncNotificationIterator",
    "Listener",
    "Notification",
    "NotificationIterator",
    "WhenFull",
]
