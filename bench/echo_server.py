"""The ceilings bench/compare.py measures Herald against: Herald's own gRPC service with
nothing behind it.

    python bench/echo_server.py --listen 127.0.0.1:50061                      # bare echo
    python bench/echo_server.py --listen 127.0.0.1:50061 --redis-url redis://…  # + EVALSHA

Bare: Push answers an empty PushResponse, PushBatch an empty PushResponse per item.
With --redis-url: Push first awaits one EVALSHA on the user's hash (HINCRBY of a counter),
PushBatch sends one EVALSHA per item in a single pipeline (one round trip a batch).
Same grpc.aio server, options and event loop as `herald serve`. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import grpc
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herald.v1 import push_pb2, push_pb2_grpc

# One write on a per-user hash: the smallest stand-in for a decision's state change.
SCRIPT = "return redis.call('HINCRBY', KEYS[1], 'pushes', 1)"


class Echo(push_pb2_grpc.PushServiceServicer):
    async def Push(self, request: push_pb2.PushRequest, context: grpc.aio.ServicerContext) -> push_pb2.PushResponse:
        return push_pb2.PushResponse()

    async def PushBatch(
        self, request: push_pb2.PushBatchRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.PushBatchResponse:
        return push_pb2.PushBatchResponse(responses=[push_pb2.PushResponse() for _ in request.requests])


class EchoRedis(Echo):
    def __init__(self, client: redis.asyncio.Redis, sha: str) -> None:
        self.client = client
        self.sha = sha

    async def Push(self, request: push_pb2.PushRequest, context: grpc.aio.ServicerContext) -> push_pb2.PushResponse:
        await self.client.evalsha(self.sha, 1, f"bench:user:{request.user_id}")
        return push_pb2.PushResponse()

    async def PushBatch(
        self, request: push_pb2.PushBatchRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.PushBatchResponse:
        pipe = self.client.pipeline(transaction=False)
        for item in request.requests:
            pipe.evalsha(self.sha, 1, f"bench:user:{item.user_id}")
        await pipe.execute()
        return push_pb2.PushBatchResponse(responses=[push_pb2.PushResponse() for _ in request.requests])


async def serve(listen: str, redis_url: str) -> None:
    # The other methods answer UNIMPLEMENTED (the generated base class's defaults), which
    # the type stubs declare abstract.
    servicer: Echo = Echo()  # type: ignore[abstract]
    client = None
    if redis_url:
        client = redis.asyncio.Redis.from_url(redis_url)
        sha = await client.script_load(SCRIPT)
        servicer = EchoRedis(client, sha)  # type: ignore[abstract]
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    push_pb2_grpc.add_PushServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"echo_server: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    if client is not None:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--redis-url", default="", help="one EVALSHA per item on this Redis; empty: bare echo")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.listen, args.redis_url))


if __name__ == "__main__":
    main()
