"""Background tasks owned by a block of code: started on entry, cancelled and awaited on exit.

Every lifespan hook that runs a loop (lease watch, replication, mDNS advertising) needs the same
ending: cancel, then wait, so that shutting the server down leaves nothing running against a closed
database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any


@asynccontextmanager
async def running(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for as long as the block lasts."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
