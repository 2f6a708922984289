"""What every fake HTTP provider shares: a real aiohttp server on a free port, an
outage switch (HTTP 503), added latency and a queue of injected answers."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Any

from aiohttp import web


class FakeServer:
    def __init__(self) -> None:
        self.app = web.Application(middlewares=[self._faults])
        self.url = ""
        self.outage = False
        self.latency = 0.0
        self.calls: defaultdict[str, int] = defaultdict(int)
        # route name -> injected answers, used one per call before the normal answer
        self._injected: defaultdict[str, deque[Any]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None

    def inject(self, route: str, answer: Any, times: int = 1) -> None:
        """The next ``times`` calls of ``route`` get ``answer`` instead of the real one."""
        for _ in range(times):
            self._injected[route].append(answer)

    def injected(self, route: str) -> Any | None:
        queue = self._injected[route]
        return queue.popleft() if queue else None

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls[request.path] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.outage:
            return web.Response(status=503, text="service unavailable")
        response: web.StreamResponse = await handler(request)
        return response

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def refuse(self) -> None:
        """Stop listening: connections are refused (a provider that is down hard)."""
        await self.stop()

    async def resume(self) -> None:
        """Listen again on the same port."""
        await self.start(self.port)
