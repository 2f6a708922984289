"""The load generator of bench/compare.py, in a process of its own so that the client's
CPU is not the server's: drives one PushService (Herald or an echo) and prints JSON lines.

    python bench/load.py --target 127.0.0.1:50051 --mode unary --requests 10000 --concurrency 32
    python bench/load.py --target 127.0.0.1:50051 --mode batch --requests 10000 --batch 500 --concurrency 2
    python bench/load.py --target 127.0.0.1:50051 --mode rate --rate 1000 --duration 10

Modes: `unary` and `batch` are closed loops (a fixed number of calls in flight); `rate`
is an open loop (calls sent at fixed intended times, whatever the answers do; latency
from each call's intended send time; each call's deadline is its intended time plus
--deadline; a CANCELLED before the deadline is counted as shed: gRPC core dropping calls
that wait too many for the server to take them). Every call is an `order.shipped` with a fresh request_id and dedup key.

Output: {"event": "ready", "accepted": <warm-up decisions accepted>} after the optional
user load and the warm-up, then (after a line on stdin when --wait) {"event": "done", ...}
with the measured phase's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import KEY, USERS, load_users, percentile, shipped

from herald.v1 import push_pb2, push_pb2_grpc, types_pb2

Stub = push_pb2_grpc.PushServiceStub


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) or math.isnan(seconds) else round(seconds * 1000, 3)


def refused(answer: push_pb2.PushResponse) -> bool:
    return answer.outcome != types_pb2.ACCEPTED or answer.HasField("error")


async def closed_loop(stubs: list[Stub], args: argparse.Namespace, total: int, run: str) -> dict[str, Any]:
    """`total` decisions, `args.concurrency` calls in flight (unary calls or batches)."""
    size = args.batch if args.mode == "batch" else 1
    starts = iter(range(0, total, size))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    not_accepted = 0

    async def client(stub: Stub) -> None:
        nonlocal not_accepted
        for start in starts:
            began = time.perf_counter()
            try:
                if args.mode == "batch":
                    items = [shipped(i, run, args.users) for i in range(start, min(start + size, total))]
                    batch = push_pb2.PushBatchRequest(requests=items)
                    answer = await stub.PushBatch(batch, metadata=KEY, timeout=args.call_timeout)
                    answers = list(answer.responses)
                else:
                    request = shipped(start, run, args.users)
                    answers = [await stub.Push(request, metadata=KEY, timeout=args.call_timeout)]
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - began)
            if args.expect_accepted:
                not_accepted += sum(1 for a in answers if refused(a))

    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(stubs[k % len(stubs)]) for k in range(args.concurrency)))
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    latencies.sort()
    calls = math.ceil(total / size)
    failed = sum(errors.values())
    return {
        "calls": calls,
        "decisions": total,
        "accepted": total - failed * size - not_accepted,
        "not_accepted": not_accepted,
        "errors": dict(errors),
        "seconds": seconds,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "client_cpu_s": cpu,
    }


async def fixed_rate(stubs: list[Stub], args: argparse.Namespace, run: str) -> dict[str, Any]:
    """Open loop: call i is due at t0 + i / rate. One sender per channel, each spawning a
    task per call at its due time; latency and deadline count from the due time."""
    total = max(1, round(args.rate * args.duration))
    latencies: list[float] = []  # from the intended send time; inf: deadline missed
    lags: list[float] = []  # how late the client started each call
    outcome: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    last_answer = 0.0

    async def call(stub: Stub, i: int, due: float) -> None:
        nonlocal last_answer
        now = time.perf_counter()
        lags.append(now - due)
        budget = due + args.deadline - now
        if budget <= 0:
            outcome["unsent"] += 1
            latencies.append(math.inf)
            return
        try:
            answer = await stub.Push(shipped(i, run, args.users), metadata=KEY, timeout=budget)
            outcome["not_accepted" if args.expect_accepted and refused(answer) else "served"] += 1
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            # CANCELLED past the deadline: the server's deadline timer fired (and reset the
            # stream) before this busy client's own did. Before it: gRPC core shed the call
            # because too many were waiting for the server's application to take them
            # (grpc.server.max_pending_requests).
            cancelled = code == grpc.StatusCode.CANCELLED
            if code == grpc.StatusCode.DEADLINE_EXCEEDED or (cancelled and time.perf_counter() >= due + args.deadline):
                outcome["deadline"] += 1
                latencies.append(math.inf)
                return
            if cancelled:
                outcome["shed"] += 1
            else:
                outcome["refused" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else code.name] += 1
        last_answer = time.perf_counter()
        latencies.append(last_answer - due)

    async def sender(k: int, t0: float) -> None:
        for i in range(k, total, len(stubs)):
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(call(stubs[k], i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    cpu = time.process_time()
    t0 = time.perf_counter() + 0.05
    await asyncio.gather(*(sender(k, t0) for k in range(len(stubs))))
    while tasks:
        await asyncio.gather(*list(tasks))
    cpu = time.process_time() - cpu
    window = max(args.duration, last_answer - t0)
    latencies.sort()
    lags.sort()
    answered = outcome["served"] + outcome["refused"] + outcome["not_accepted"]  # the application answered
    lag_p99 = percentile(lags, 0.99)
    return {
        "offered": total,
        "offered_per_s": total / args.duration,
        "answered": answered,
        "answered_per_s": answered / window,
        "served": outcome.pop("served", 0),
        "refused": outcome.pop("refused", 0),
        "shed": outcome.pop("shed", 0),
        "deadline": outcome.pop("deadline", 0),
        "unsent": outcome.pop("unsent", 0),
        "not_accepted": outcome.pop("not_accepted", 0),
        "errors": {code: n for code, n in outcome.items() if n},
        "window_s": window,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "lag_p99_ms": ms(lag_p99),
        "lag_max_ms": ms(lags[-1]),
        "client_behind": lag_p99 > args.max_lag / 1000,
        "client_cpu_s": cpu,
    }


async def drive(args: argparse.Namespace) -> None:
    run = args.run or uuid.uuid4().hex[:8]
    # Separate connections: channels to one target otherwise share a subchannel (one socket).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    try:
        stubs = [Stub(channel) for channel in channels]
        if args.load_users:
            await load_users(channels[0], args.users)
        warm = await closed_loop(stubs, args, args.warmup, f"{run}-warm") if args.warmup else {"accepted": 0}
        emit("ready", accepted=warm["accepted"])
        if args.wait and not await asyncio.to_thread(sys.stdin.readline):
            return  # stdin closed: the caller gave up
        if args.mode == "rate":
            result = await fixed_rate(stubs, args, f"{run}-rate")
        else:
            result = await closed_loop(stubs, args, args.requests, f"{run}-{args.mode}")
        emit("done", mode=args.mode, **result)
    finally:
        for channel in channels:
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the PushService")
    parser.add_argument("--mode", choices=["unary", "batch", "rate"], default="unary")
    parser.add_argument("--requests", type=int, default=10_000, help="decisions in a closed loop")
    parser.add_argument("--concurrency", type=int, default=32, help="calls (or batches) in flight, closed loop")
    parser.add_argument("--batch", type=int, default=500, help="requests a PushBatch (mode batch)")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels (connections) the calls spread over")
    parser.add_argument("--rate", type=float, default=1000, help="calls/s offered (mode rate)")
    parser.add_argument("--duration", type=float, default=10, help="seconds offered (mode rate)")
    parser.add_argument("--call-timeout", type=float, default=60, help="seconds a closed-loop call may take")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds from each call's intended send time")
    parser.add_argument("--max-lag", type=float, default=10, help="ms: the client fell behind if p99 lag exceeds it")
    parser.add_argument("--users", type=int, default=USERS, help="distinct user ids (bench-0 …)")
    parser.add_argument("--load-users", action="store_true", help="upsert the users first (ProfileService)")
    parser.add_argument("--warmup", type=int, default=500, help="decisions before the measured phase")
    parser.add_argument("--expect-accepted", action="store_true", help="count answers that are not ACCEPTED")
    parser.add_argument("--run", default="", help="request_id prefix (default: random)")
    parser.add_argument("--wait", action="store_true", help="after 'ready', wait for a line on stdin")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
