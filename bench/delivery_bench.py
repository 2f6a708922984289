"""Deliveries per second to the fake WeChat provider, and the latency from Push to
delivery, through one `herald serve` process.

The fake WeChat (tests/fakes/wechat.py, a real aiohttp server) runs in this process;
the gateway runs as its own process with the provider pointed at the fake:

    .venv/bin/python bench/delivery_bench.py                 # in-memory store and queue
    .venv/bin/python bench/delivery_bench.py --store redis   # Redis store and stream
    .venv/bin/python bench/delivery_bench.py --store redis --processes 2
    .venv/bin/python bench/delivery_bench.py --store redis --batch 500    # pushed 500 a PushBatch

With --batch the pushes cost the gateway (and this process) little, so the figure is
closer to what delivery alone can do; without it, each message is one unary Push.

Prints one line per measurement. Nothing here asserts on speed. The fake shares this
process's CPU with the gRPC client, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import KEY, free_port, load_users, redis_server, shipped, wait_port  # noqa: E402

from herald.v1 import push_pb2_grpc, types_pb2  # noqa: E402
from herald.v1.push_pb2 import PushBatchRequest  # noqa: E402
from tests.e2e.channels_setup import fakes, policies_for  # noqa: E402


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> None:
    async with fakes() as fake:
        policies = policies_for(workdir, fake)
        units = policies / "business_units.yaml"
        units.write_text(re.sub(r"rate_limit: \{requests: \d+", "rate_limit: {requests: 100000000", units.read_text()))
        port = free_port()
        env = {
            **os.environ,
            **fake.environ(),
            "HERALD_LISTEN": f"127.0.0.1:{port}",
            "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            "HERALD_POLICY_DIR": str(policies),
            "HERALD_DATA_DIR": str(workdir / "var"),
            "HERALD_REDIS_URL": redis_url,
            "HERALD_LOG_LEVEL": "WARNING",
            "HERALD_PROCESSES": str(args.processes),
        }
        with (workdir / "gateway.log").open("wb") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
                [sys.executable, "-m", "gateway.cli.main", "serve"], env=env, cwd=ROOT, stderr=log
            )
        try:
            await asyncio.to_thread(wait_port, port)
            # Connections of their own (not one shared socket), so that with several
            # processes the kernel spreads them.
            options = [("grpc.use_local_subchannel_pool", 1)]
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(4)]
            try:
                await load_users(channels[0])
                stubs = [push_pb2_grpc.PushServiceStub(channel) for channel in channels]
                pushed_at: dict[str, float] = {}
                counter = iter(range(args.messages // args.batch if args.batch else args.messages))

                async def client(stub: push_pb2_grpc.PushServiceStub) -> None:
                    for i in counter:
                        began = time.time()
                        if args.batch:
                            requests = [shipped(k, "deliver") for k in range(i * args.batch, (i + 1) * args.batch)]
                            batch = await stub.PushBatch(PushBatchRequest(requests=requests), metadata=KEY)
                            answers = list(batch.responses)
                        else:
                            answers = [await stub.Push(shipped(i, "deliver"), metadata=KEY)]
                        for answer in answers:
                            if answer.outcome != types_pb2.ACCEPTED:
                                raise SystemExit(f"unexpected decision: {answer}")
                            pushed_at[f"{answer.message_id}.wechat_template"] = began

                began = time.time()
                callers = 2 if args.batch else args.concurrency
                await asyncio.gather(*(client(stubs[n % len(stubs)]) for n in range(callers)))
                while len(fake.wechat.arrived_at) < args.messages:
                    if time.time() - began > 300:
                        raise SystemExit(f"only {len(fake.wechat.arrived_at)} of {args.messages} delivered in 300 s")
                    await asyncio.sleep(0.01)
                last = max(fake.wechat.arrived_at.values())
                latencies = sorted((fake.wechat.arrived_at[k] - t) * 1000 for k, t in pushed_at.items())
                p50 = statistics.median(latencies)
                p95 = latencies[int(len(latencies) * 0.95)]
                p99 = latencies[int(len(latencies) * 0.99)]
                print(
                    f"{args.store:6} {args.processes} process(es) {args.messages / (last - began):8.0f} deliveries/s "
                    f"to the fake WeChat ({args.messages} order.shipped, "
                    + (f"PushBatch of {args.batch}, 2 in flight" if args.batch else f"{args.concurrency} callers")
                    + "); Push→delivery "
                    f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms"
                )
            finally:
                for channel in channels:
                    await channel.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="herald serve --processes (Redis only)")
    parser.add_argument("--batch", type=int, default=0, help="push in PushBatch calls of this many (0: unary Push)")
    args = parser.parse_args()
    # The client and the fake provider on uvloop, as the gateway and bench/load.py are:
    # this process's own overhead is not the gateway's.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        if args.store == "redis":
            with redis_server() as server:
                asyncio.run(run(args, server.url, Path(tmp)))
        else:
            asyncio.run(run(args, "", Path(tmp)))


if __name__ == "__main__":
    main()
