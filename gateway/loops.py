"""Background loops that stop when asked, not only when cancelled.

Cancelling a task while redis-py waits on a socket read with a timeout can lose the
cancellation (Python 3.11's timeout context turns it into a TimeoutError, which the
client retries), leaving the task running. So every loop here watches a stop event
between rounds, and shutdown sets it before anything is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import HeraldError
from gateway.logs import get_logger

log = get_logger(__name__)
# While a loop's step keeps failing (the store is down), at most one line this often.
REPEAT_EVERY = 30.0


class StepFailures:
    """The failures of one loop's steps, logged at a bounded rate: the first at once,
    then at most one ``loop_step_failed`` every ``repeat_every`` seconds, saying how many
    failures since the last line went unlogged (``unlogged``); and ``loop_step_recovered``
    once the step works again, with how many failed and for how long. A store outage is
    then a few lines per loop, not one per loop per round."""

    def __init__(
        self,
        name: str,
        repeat_every: float = REPEAT_EVERY,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
        event: str = "loop_step_failed",
        **context: Any,
    ) -> None:
        self.name = name
        self._event = event
        self._context = context
        self._repeat_every = repeat_every
        self._clock = clock
        self._log = logger if logger is not None else log
        self._since: float | None = None  # when the current run of failures began
        self._logged_at = 0.0
        self._failures = 0
        self._unlogged = 0

    def failed(self, error: str) -> None:
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._logged_at = now
            self._log.warning(self._event, loop=self.name, error=error, **self._context)
        elif now - self._logged_at >= self._repeat_every:
            self._log.warning(
                self._event,
                loop=self.name,
                error=error,
                **self._context,
                unlogged=self._unlogged,
                failing_seconds=round(now - self._since, 1),
            )
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1

    def succeeded(self) -> None:
        if self._since is None:
            return
        self._log.info(
            "loop_step_recovered",
            loop=self.name,
            failures=self._failures,
            failing_seconds=round(self._clock() - self._since, 1),
        )
        self._since, self._failures, self._unlogged = None, 0, 0


async def every(
    seconds: float,
    step: Callable[[], Awaitable[object]],
    stopping: asyncio.Event,
    name: str,
    failures: StepFailures | None = None,
) -> None:
    """Run ``step`` every ``seconds`` until ``stopping`` is set; store faults are logged
    (at a bounded rate: ``StepFailures``) and the loop goes on."""
    failures = failures or StepFailures(name)
    while not stopping.is_set():
        try:
            await step()
        except HeraldError as exc:
            failures.failed(exc.message)
        else:
            failures.succeeded()
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
