"""The fake FCM in a process of its own, for load tests: a flood of sends then neither
slows the test's own event loop (which measures) nor is slowed by it.

    python -m tests.fakes.standalone --service-account FILE --receipts FILE

writes the service-account key file for the gateway, prints ``READY <url>`` on stdout
once it listens, and appends one line to the receipts file for every send it takes:
``<time.monotonic()> <device token> <message id>``, the time taken as the request
arrives. CLOCK_MONOTONIC is one clock for every process of the machine, so the test
compares it with its own ``time.monotonic()``. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from aiohttp import web

from tests.fakes.push import FakeFcm


class RecordingFcm(FakeFcm):
    receipts: TextIO | None = None

    async def _send(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        response = await super()._send(request)
        if response.status == 200 and self.receipts is not None:
            message = (await request.json())["message"]  # the body read again, from aiohttp's cache
            self.receipts.write(f"{arrived:.6f} {message['token']} {message['data']['message_id']}\n")
        self.sends.clear()  # a long run would otherwise keep every body
        return response


async def serve(service_account: Path, receipts: Path) -> None:
    fake = RecordingFcm()
    url = await fake.start()
    await asyncio.to_thread(service_account.write_bytes, fake.service_account())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    with receipts.open("w", buffering=1) as out:  # a line at a time: the test tails it
        fake.receipts = out
        print(f"READY {url}", flush=True)
        await stopping.wait()
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service-account", type=Path, required=True)
    parser.add_argument("--receipts", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.service_account, args.receipts))
    sys.exit(0)


if __name__ == "__main__":
    main()
