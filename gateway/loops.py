"""Background loops that stop when asked, not only when cancelled.

Cancelling a task while redis-py waits on a socket read with a timeout can lose the
cancellation (Python 3.11's timeout context turns it into a TimeoutError, which the
client retries), leaving the task running. So every loop here watches a stop event
between rounds, and shutdown sets it before anything is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from gateway.errors import HeraldError
from gateway.logs import get_logger

log = get_logger(__name__)


async def every(seconds: float, step: Callable[[], Awaitable[object]], stopping: asyncio.Event, name: str) -> None:
    """Run ``step`` every ``seconds`` until ``stopping`` is set; store faults are logged
    and the loop goes on."""
    while not stopping.is_set():
        try:
            await step()
        except HeraldError as exc:
            log.warning("loop_step_failed", loop=name, error=exc.message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)


async def stop_tasks(tasks: list[asyncio.Task[None]], stopping: asyncio.Event, within: float) -> None:
    """Ask the loops to stop, wait up to ``within`` seconds, then cancel what is left."""
    stopping.set()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        log.warning("loop_cancelled", loop=task.get_name())
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=within)
