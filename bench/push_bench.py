"""Push and PushBatch decisions per second on one gateway process.

Starts `herald serve` as its own process (with the sample policies, rate limits lifted,
logs to a file), loads users, then drives it from this process over gRPC:

    .venv/bin/python bench/push_bench.py                 # in-memory store
    .venv/bin/python bench/push_bench.py --store redis   # a redis-server it starts
    .venv/bin/python bench/push_bench.py --requests 20000 --concurrency 64

Prints one line per measurement. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2  # noqa: E402

KEY = (("authorization", "Bearer hk_logistics_SAMPLE_not_for_production"),)
PROFILE_KEY = (("authorization", "Bearer hk_order_SAMPLE_not_for_production"),)
USERS = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, within: float = 30) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def gateway(redis_url: str, workdir: Path) -> Iterator[tuple[str, str]]:
    policies = workdir / "policies"
    shutil.copytree(ROOT / "policies", policies)
    units = policies / "business_units.yaml"
    units.write_text(re.sub(r"rate_limit: \{requests: \d+", "rate_limit: {requests: 100000000", units.read_text()))
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "HERALD_LISTEN": f"127.0.0.1:{port}",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "HERALD_POLICY_DIR": str(policies),
        "HERALD_DATA_DIR": str(workdir / "var"),
        "HERALD_REDIS_URL": redis_url,
    }
    with (workdir / "gateway.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "serve"], env=env, cwd=ROOT, stderr=log)
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{admin}/metrics"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def shipped(i: int, run: str) -> push_pb2.PushRequest:
    # Basic with a dedup key: the full decision path (dedup, quiet hours, safety cap,
    # reservation), every one accepted and delivered to the sandbox.
    return push_pb2.PushRequest(
        request_id=f"{run}-{i}",
        user_id=f"bench-{i % USERS}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"SF{i:010d}"},
        dedup_key=f"{run}-O-{i}-shipped",
    )


async def load_users(channel: grpc.aio.Channel) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(channel)
    for start in range(0, USERS, 1000):
        requests = [
            profile_pb2.UpsertUserRequest(
                user=profile_pb2.User(
                    user_id=f"bench-{i}",
                    wechat=profile_pb2.WeChatIdentity(openid=f"oBench{i:022d}", following=True),
                    phone=f"+86139{i:08d}",
                )
            )
            for i in range(start, min(start + 1000, USERS))
        ]
        await stub.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=requests), metadata=PROFILE_KEY)


async def unary(channel: grpc.aio.Channel, total: int, concurrency: int, run: str) -> tuple[float, list[float]]:
    stub = push_pb2_grpc.PushServiceStub(channel)
    latencies: list[float] = []
    counter = iter(range(total))

    async def client() -> None:
        for i in counter:
            began = time.perf_counter()
            answer = await stub.Push(shipped(i, run), metadata=KEY)
            latencies.append(time.perf_counter() - began)
            if answer.outcome != types_pb2.ACCEPTED:
                raise SystemExit(f"unexpected decision: {answer}")

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


async def batched(channel: grpc.aio.Channel, total: int, size: int, in_flight: int, run: str) -> float:
    stub = push_pb2_grpc.PushServiceStub(channel)
    starts = iter(range(0, total, size))

    async def client() -> None:
        for start in starts:
            batch = [shipped(i, run) for i in range(start, min(start + size, total))]
            await stub.PushBatch(push_pb2.PushBatchRequest(requests=batch), metadata=KEY)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return time.perf_counter() - began


def redis_commands(url: str) -> int:
    return int(redis.Redis.from_url(url).info("stats")["total_commands_processed"])


def round_trips(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = re.findall(r'herald_store_round_trips_total\{op="(\w+)"\} ([0-9.e+]+)', text)
    return {op: float(value) for op, value in found}


async def measure(target: str, metrics_url: str, args: argparse.Namespace, redis_url: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await load_users(channel)
        await unary(channel, 500, 8, "warmup")
        before = redis_commands(redis_url) if redis_url else 0
        trips_before = round_trips(metrics_url)
        seconds, latencies = await unary(channel, args.requests, args.concurrency, "unary")
        await asyncio.sleep(1)  # let the last deliveries settle
        commands = (redis_commands(redis_url) - before) / args.requests if redis_url else 0
        trips = {op: n - trips_before.get(op, 0) for op, n in round_trips(metrics_url).items()}
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        per_op = ", ".join(
            f"{op} {trips[op] / args.requests:.1f}" for op in sorted(trips) if trips[op] >= args.requests / 10
        )
        extra = f", Redis round trips per request: {per_op}; {commands:.1f} commands per request" if redis_url else ""
        print(
            f"{args.store:6} Push       {args.requests / seconds:8.0f} decisions/s  "
            f"(concurrency {args.concurrency}, p50 {p50:.2f} ms, p99 {p99:.2f} ms{extra})"
        )
        seconds = await batched(channel, args.requests, args.batch, args.batches_in_flight, "batch")
        print(
            f"{args.store:6} PushBatch  {args.requests / seconds:8.0f} decisions/s  "
            f"(batches of {args.batch}, {args.batches_in_flight} in flight)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches-in-flight", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        if args.store == "redis":
            with redis_server() as url, gateway(url, Path(tmp)) as (target, metrics_url):
                asyncio.run(measure(target, metrics_url, args, url))
        else:
            with gateway("", Path(tmp)) as (target, metrics_url):
                asyncio.run(measure(target, metrics_url, args, ""))


if __name__ == "__main__":
    main()
