"""The request routers of this process (the gateway's handle makes one), from which the gateway learns the
replica list. Kept apart from router.py: Ray pickles a custom router's module by value, locks included."""

from __future__ import annotations

import threading
import weakref
from typing import Any

_routers: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def add(router: Any) -> None:
    with _lock:
        _routers.add(router)


def replica_ids() -> list[str]:
    """The replicas the routers of this process know, by their unique id."""
    with _lock:
        routers = list(_routers)
    return sorted({rid.unique_id for router in routers for rid in list(router.curr_replicas)})
