"""A campaign over a million users on Redis, decided by `herald serve`: users decided per
second, the time from start to COMPLETED, peak memory, Redis commands per decided user,
and a ceiling measured in the same run.

    .venv/bin/python bench/campaign_bench.py                        # 1,000,000 users, 1 process
    .venv/bin/python bench/campaign_bench.py --processes 2          # herald serve --processes 2
    .venv/bin/python bench/campaign_bench.py --users 20000          # a quick look (~15 s)
    .venv/bin/python bench/campaign_bench.py --audience untagged    # no tag: every user is read
    .venv/bin/python bench/campaign_bench.py --audience everyone    # a 1,000,000-user audience

In order:

1. a redis-server of its own on a free port, `--save '' --appendonly no` (nothing is
   written to disk: a bench, not a deployment);
2. --users users loaded straight into Redis in Herald's stored format: each profile
   encoded by gateway.store.codec and written with the commands RedisStore.upsert_user
   sends (HSET and PEXPIRE of the user's hash, SADD to the audience indexes
   herald:{T}:users and herald:{T}:tg:<tag>), pipelined through Herald's own Redis
   client; timed apart, not part of the figures. 60% of the users carry the tag d11, half
   live in 浙江, every 7th is also tagged vip; all are recent big buyers (tier champion)
   with an app-push device token;
3. `herald serve --processes N`, HERALD_DELIVER=false (the figure is deciding, not
   delivering), on the sample policies with the business units' rate limits lifted and
   marketing's quiet hours exempt (at night they would drop every decision: the hour of
   the run must not change the path measured);
4. a double11.presale campaign created and started through CampaignService, and
   GetCampaign polled until it is COMPLETED (progress lines on stderr);
5. the gateway's peak RSS (VmHWM of each of its processes, summed), Redis's
   used_memory_peak, INFO commandstats and CPU seconds of both;
6. the ceiling: the least Redis work a decided user needs, done by a tight loop in this
   process with Herald's client stack (gateway.store.redis.Connection): SSCAN of the
   same index --chunk entries at a time, one pipelined HGETALL a user read, the audience
   checked on the fields it names, one EVALSHA (a SET) a user in it.

Nothing here asserts on speed. The gateway, Redis and this process share the machine's
cores, and other work may too: the load beside each figure says how busy it was.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import redis

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import (  # noqa: E402
    child_env,
    machine_busy_seconds,
    machine_lines,
    redis_command_calls,
    redis_server,
)
from common import tree_cpu_seconds as cpu_of  # noqa: E402
from targets import Server, bench_policies, herald_server  # noqa: E402

from gateway.config import from_env  # noqa: E402
from gateway.policy.loader import load_policy  # noqa: E402
from gateway.store import codec, keys  # noqa: E402
from gateway.store.redis.connection import Command, Connection, Script  # noqa: E402
from gateway.store.redis.store import ms  # noqa: E402
from gateway.store.shards import shard_of, tags  # noqa: E402
from gateway.values.domain import Platform, PushProvider  # noqa: E402
from gateway.values.profiles import DeviceToken, Rfm  # noqa: E402
from herald.v1 import campaign_pb2, campaign_pb2_grpc  # noqa: E402

MARKETING_KEY = (("authorization", "Bearer hk_marketing_SAMPLE_not_for_production"),)
TAG = "d11"
PROVINCE = "浙江"
AUDIENCES = {
    "tagged": f"tags any [{TAG}] and province = {PROVINCE}",  # read from the d11 index only
    "untagged": f"province = {PROVINCE}",  # every user is read
    "everyone": "tier = champion",  # every user is read, and every user is in it
}
LOAD_BATCH = 2000  # users a pipeline while loading
LOAD_IN_FLIGHT = 3


# --- the users -----------------------------------------------------------------------
def tagged(n: int) -> bool:
    return n % 5 < 3  # 60%


def in_province(n: int) -> bool:
    return n % 2 == 0


def user_id(n: int) -> str:
    return f"cb-{n}"


def user_tags(n: int) -> tuple[str, ...]:
    return tuple(sorted(([TAG] if tagged(n) else []) + (["vip"] if n % 7 == 0 else [])))


def in_audience(n: int, audience: str) -> bool:
    return audience == "everyone" or (in_province(n) and (audience == "untagged" or tagged(n)))


def audience_size(users: int, audience: str) -> int:
    return sum(1 for n in range(users) if in_audience(n, audience))


def index_size(users: int, audience: str) -> int:
    """The index entries the runner reads: the d11 tag's, or every user's."""
    return sum(1 for n in range(users) if tagged(n)) if audience == "tagged" else users


def user_patch(n: int, bought: datetime) -> dict[str, Any]:
    """User n's profile sections, as ProfileService's UpsertUser (no update mask) hands
    them to the store: every contact section, and tags and attributes since they are set
    (gateway.api.convert.profile_patch)."""
    patch: dict[str, Any] = {
        "wechat": None,
        "phone": f"+86139{n:08d}",
        "email": "",
        "device_tokens": (DeviceToken(f"tok-{n}", Platform.ANDROID, PushProvider.FCM),),
        "timezone": "Asia/Shanghai",
        "locale": "",
        "rfm": Rfm(last_purchase_at=bought, orders_in_period=6, spend_in_period_minor=300_000),
    }
    labels = user_tags(n)
    if labels:
        patch["tags"] = labels
    patch["attributes"] = {"province": PROVINCE if in_province(n) else "江苏"}
    return patch


def load_commands(first: int, count: int, shard_tags: Sequence[str], now: datetime, ttl_ms: int) -> list[Command]:
    """What RedisStore.upsert_user writes for users first … first+count-1 (its trailing
    HGETALL, the read back, left out), the SADDs of a pipeline grouped a key: the same
    sets, fewer commands."""
    bought = now.replace(microsecond=0) - timedelta(days=5)
    commands: list[Command] = []
    index: dict[str, list[str]] = {}
    for n in range(first, first + count):
        uid = user_id(n)
        tag = shard_tags[shard_of(uid, len(shard_tags))]
        patch = user_patch(n, bought)
        key = keys.user(tag, uid)
        fields = codec.encode_patch(patch, now)
        commands.append(("HSET", key, *(item for pair in fields.items() for item in pair)))
        commands.append(("PEXPIRE", key, ttl_ms))
        index.setdefault(keys.members(tag), []).append(uid)
        for label in patch.get("tags") or ():
            index.setdefault(keys.labelled(tag, label), []).append(uid)
    commands += [("SADD", name, *members) for name, members in index.items()]
    return commands


async def load_users(url: str, users: int, shards: int, now: datetime, ttl: timedelta) -> None:
    connection = Connection(url)
    shard_tags = tags(shards)
    pending: set[asyncio.Future[list[Any]]] = set()
    shown = time.perf_counter()
    try:
        for first in range(0, users, LOAD_BATCH):
            commands = load_commands(first, min(LOAD_BATCH, users - first), shard_tags, now, ms(ttl))
            pending.add(asyncio.ensure_future(connection.run("bench_load", commands)))
            await asyncio.sleep(0)  # the pipeline goes out while the next one is encoded
            if len(pending) >= LOAD_IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    future.result()
            if time.perf_counter() - shown > 5:
                shown = time.perf_counter()
                progress(f"  loading: {first + LOAD_BATCH:,} of {users:,} users")
        for future in asyncio.as_completed(pending):
            await future
    finally:
        await connection.close()


# --- processes -----------------------------------------------------------------------
def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def tree_pids(root: int) -> list[int]:
    """The process and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as file:
                    text = file.read()
            except OSError:
                continue
            parents[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents and pid not in tree:
            tree.append(pid)
            todo.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def status_kib(pid: int, name: str) -> int:
    """A figure of /proc/<pid>/status in KiB (VmHWM: the peak resident set; VmRSS: now)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def policies_for_bench(folder: Path) -> Path:
    """The sample policies, the units' rate limits lifted (as compare.py) and marketing's
    quiet hours exempt."""
    bench_policies(folder)
    categories = folder / "categories.yaml"
    text = categories.read_text()
    changed = re.sub(r"(\n  marketing:\n(?:    .*\n)*?    quiet_hours: )\{[^}]*\}", r"\1{mode: exempt}", text, count=1)
    if changed == text:
        raise SystemExit("bench: policies/categories.yaml has no marketing quiet_hours line to lift; update the bench")
    categories.write_text(changed)
    return folder


# --- measurements --------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    at: float
    gateway_cpu: float
    redis_cpu: float
    own_cpu: float
    busy: float
    commands: dict[str, int]


def snapshot(gateway: int, redis_pid: int, url: str) -> Snapshot:
    return Snapshot(
        time.perf_counter(),
        cpu_of(gateway),
        cpu_of(redis_pid),
        own_cpu_seconds(),
        machine_busy_seconds(),
        redis_command_calls(url),
    )


def command_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    calls = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n > 0}


@dataclass
class Run:
    """What one campaign run measured."""

    campaign: Any = None  # campaign_pb2.Campaign, COMPLETED
    observed_s: float = 0.0  # StartCampaign's call to the poll that saw COMPLETED
    before: Snapshot | None = None
    after: Snapshot | None = None
    rss_before_kib: int = 0
    hwm_kib: list[int] = field(default_factory=list)  # each gateway process's VmHWM
    redis_memory: dict[str, Any] = field(default_factory=dict)
    redis_hwm_kib: int = 0
    redis_loaded: int = 0  # used_memory once the users are loaded, before the gateway starts
    loadavg_after: str = ""


def row(campaign: Any, variant: str) -> Any:
    return next(r for r in campaign.funnel if r.variant == variant)


async def run_campaign(server: Server, args: argparse.Namespace, scanned_total: int, run: Run) -> None:
    """Create, start and follow the campaign until it is COMPLETED."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        campaign_id = f"bench-{int(time.time())}"
        spec = campaign_pb2.CampaignSpec(
            campaign_id=campaign_id,
            scenario="double11.presale",
            audience=AUDIENCES[args.audience],
            variants=[campaign_pb2.Variant(name="A", weight=1)],
            params={"deposit": "50", "discount": "150"},
        )
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=spec), metadata=MARKETING_KEY)
        get = campaign_pb2.GetCampaignRequest(campaign_id=campaign_id)
        began = time.perf_counter()
        await stub.StartCampaign(campaign_pb2.CampaignAction(campaign_id=campaign_id), metadata=MARKETING_KEY)
        shown = began

        def line(p: Any) -> str:
            return (
                f"scanned {p.scanned:,} of {scanned_total:,}  decided {p.matched:,} "
                f"({p.matched / (time.perf_counter() - began):,.0f}/s)  shards done {p.shards_done}/{p.shards}"
            )

        while True:
            await asyncio.sleep(0.2)
            got = await stub.GetCampaign(get, metadata=MARKETING_KEY)
            now = time.perf_counter()
            if got.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED:
                run.campaign, run.observed_s = got, now - began
                progress(f"  {now - began:6.1f} s  COMPLETED: {line(got.progress)}")
                return
            if got.state != campaign_pb2.CAMPAIGN_STATE_RUNNING:
                raise RuntimeError(f"the campaign is {campaign_pb2.CampaignState.Name(got.state)}, not running")
            if now - began > args.timeout:
                raise RuntimeError(f"the campaign did not complete within {args.timeout:.0f} s: {got.progress}")
            if now - shown >= args.progress_every:
                shown = now
                progress(f"  {now - began:6.1f} s  {line(got.progress)}")


@dataclass(frozen=True)
class Ceiling:
    decided: int
    read: int
    seconds: float
    commands: dict[str, int]
    in_flight: int
    chunk: int


CEILING_WRITE = Script("bench_ceiling", "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1")


async def ceiling(url: str, shards: int, audience: str, in_flight: int, chunk: int) -> Ceiling:
    """The least Redis work of a campaign's decisions, by a tight loop with Herald's
    client stack: each shard's index read `chunk` at a time (SSCAN), one HGETALL a user
    read, the audience checked on the tags and attributes fields, one EVALSHA (a SET,
    ten minutes) a user in it; `in_flight` shards at once."""
    connection = Connection(url, scripts=[CEILING_WRITE])
    await connection.load_scripts()
    shard_tags = tags(shards)
    tags_of, attributes_of = codec.CODECS["tags"].decode, codec.CODECS["attributes"].decode
    todo = list(range(shards))
    decided = read = 0

    def wanted(fields: Mapping[bytes, bytes]) -> bool:
        if not fields:
            return False
        if audience == "everyone":  # every bench user is a champion
            return True
        if audience == "tagged" and TAG not in tags_of(fields.get(b"tags", b"[]")):
            return False
        return attributes_of(fields.get(b"attributes", b"{}")).get("province") == PROVINCE

    async def scan() -> None:
        nonlocal decided, read
        while todo:
            tag = shard_tags[todo.pop()]
            index = keys.labelled(tag, TAG) if audience == "tagged" else keys.members(tag)
            cursor: Any = "0"
            while True:
                [(cursor, found)] = await connection.run("sscan", [("SSCAN", index, cursor, "COUNT", chunk)])
                ids = [codec.text(u) for u in found]
                rows = await connection.run("read", [("HGETALL", keys.user(tag, u)) for u in ids])
                chosen = [u for u, fields in zip(ids, rows, strict=True) if wanted(fields)]
                if chosen:
                    writes = [CEILING_WRITE.call([f"herald-bench:{{{tag}}}:c:{u}"], [1, 600_000]) for u in chosen]
                    await connection.run("write", writes)
                read += len(ids)
                decided += len(chosen)
                if cursor == 0:  # the client reads the cursor as a number
                    break

    try:
        before = redis_command_calls(url)
        began = time.perf_counter()
        await asyncio.gather(*(scan() for _ in range(in_flight)))
        seconds = time.perf_counter() - began
        return Ceiling(decided, read, seconds, command_delta(before, redis_command_calls(url)), in_flight, chunk)
    finally:
        await connection.close()


# --- the report ----------------------------------------------------------------------
def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def header(args: argparse.Namespace, shards: int) -> str:
    audience = AUDIENCES[args.audience]
    return "\n".join(
        [
            *machine_lines(),
            "redis: a redis-server of the bench's own on a free port, --save '' --appendonly no "
            "(nothing written to disk: a bench, not a deployment)",
            f"workload: {args.users:,} users (60% tagged {TAG}, half in {PROVINCE}, every 7th vip; tier champion, "
            f"an app-push token each); audience `{audience}`; double11.presale, one variant",
            f"herald: `herald serve --processes {args.processes}`, HERALD_DELIVER=false (deciding, not delivering), "
            f"HERALD_LOG_LEVEL={args.herald_log_level}; sample policies, rate limits lifted, marketing quiet hours "
            f"exempt; {shards} shards, HERALD_CAMPAIGN_SCANS={args.scans} (shard scans a process), "
            f"HERALD_CAMPAIGN_CHUNK={args.chunk} (index entries a chunk)",
            "",
        ]
    )


def table(rows: Sequence[tuple[str, str, str]]) -> str:
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a.ljust(width[0])}  {b.rjust(width[1])}  {c}".rstrip() for a, b, c in rows)


def top(commands: Mapping[str, int], per: int, count: int = 5) -> str:
    return ", ".join(f"{name} {n / per:.2f}" for name, n in list(commands.items())[:count])


def report(args: argparse.Namespace, run: Run, cap: Ceiling, audience: int, load_s: float) -> str:
    campaign, before, after = run.campaign, run.before, run.after
    assert campaign is not None and before is not None and after is not None
    total = row(campaign, "")
    decided = total.targeted
    wall = (campaign.finished_at.ToDatetime() - campaign.started_at.ToDatetime()).total_seconds()
    rate = decided / wall
    commands = command_delta(before.commands, after.commands)
    calls = sum(commands.values())
    elapsed = after.at - before.at
    gateway_cpu = after.gateway_cpu - before.gateway_cpu
    redis_cpu = after.redis_cpu - before.redis_cpu
    own = after.own_cpu - before.own_cpu
    others = max(0.0, after.busy - before.busy - gateway_cpu - redis_cpu - own) / elapsed
    suppressed = sum(total.suppressed.values())
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(total.suppressed.items())) or "none"
    cap_rate = cap.decided / cap.seconds
    cap_calls = sum(cap.commands.values())
    peak = sum(run.hwm_kib)
    per_process = " + ".join(mib(k) for k in run.hwm_kib)
    used_peak = int(run.redis_memory.get("used_memory_peak", 0))
    projected = 1_000_000 / rate
    rows = [
        ("users in the store", f"{args.users:,}", f"loaded in {load_s:.1f} s ({args.users / load_s:,.0f}/s), apart"),
        ("users in the audience", f"{audience:,}", f"`{AUDIENCES[args.audience]}`, counted by the bench"),
        ("index entries scanned", f"{campaign.progress.scanned:,}", f"{campaign.progress.shards} shards"),
        (
            "decided (funnel targeted)",
            f"{decided:,}",
            f"scheduled {total.scheduled:,}, accepted {total.accepted:,}, suppressed {suppressed:,} ({reasons})",
        ),
        (
            "wall time, start → COMPLETED",
            f"{wall:.1f} s",
            f"the campaign's started_at → finished_at; {run.observed_s:.1f} s seen by the bench's polls",
        ),
        (
            "users decided per second",
            f"{rate:,.0f}",
            f"{campaign.progress.scanned / wall:,.0f} index entries/s; 1,000,000 decided would take {projected:.0f} s",
        ),
        (
            "gateway peak RSS",
            mib(peak),
            f"VmHWM of {len(run.hwm_kib)} process(es): {per_process}; {mib(run.rss_before_kib)} before the start",
        ),
        (
            "redis used_memory_peak",
            f"{used_peak / 2**20:,.0f} MiB",
            f"{run.redis_loaded / 2**20:,.0f} MiB with the users loaded, "
            f"{int(run.redis_memory.get('used_memory', 0)) / 2**20:,.0f} MiB at the end; redis-server VmHWM "
            f"{mib(run.redis_hwm_kib)}",
        ),
        (
            "redis commands per decided",
            f"{calls / decided:.2f}",
            f"{top(commands, decided)} (INFO commandstats, the bench's polls included)",
        ),
        (
            "CPU per decided",
            f"{gateway_cpu / decided * 1e6:,.0f} µs",
            f"gateway ({gateway_cpu / elapsed:.2f} cores); redis {redis_cpu / decided * 1e6:,.0f} µs "
            f"({redis_cpu / elapsed:.2f} cores)",
        ),
        (
            "ceiling, decided per second",
            f"{cap_rate:,.0f}",
            f"{cap.decided:,} in {cap.seconds:.1f} s: SSCAN {cap.chunk} + HGETALL a user read + EVALSHA (SET) a user "
            f"decided, {cap.in_flight} shards in flight, one process; "
            f"{cap_calls / max(1, cap.decided):.2f} commands per decided",
        ),
        ("herald of ceiling", f"{rate / cap_rate:.0%}", ""),
        (
            "load",
            f"{others:.2f}",
            f"cores other work kept busy during the campaign; load average {run.loadavg_after} at the end",
        ),
    ]
    return table(rows)


# --- the run -------------------------------------------------------------------------
async def measure(args: argparse.Namespace, url: str, redis_pid: int, workdir: Path, run: Run) -> None:
    scanned = index_size(args.users, args.audience)
    with herald_server(
        workdir,
        url,
        deliver=False,
        processes=args.processes,
        log_level=args.herald_log_level,
        policies=policies_for_bench(workdir / "policies"),
        extra_env={"HERALD_CAMPAIGN_SCANS": str(args.scans), "HERALD_CAMPAIGN_CHUNK": str(args.chunk)},
    ) as server:
        await asyncio.sleep(1.0)  # the processes' first ticks (kill switches, gauges) settle
        run.rss_before_kib = sum(status_kib(pid, "VmRSS") for pid in tree_pids(server.pid))
        run.before = snapshot(server.pid, redis_pid, url)
        await run_campaign(server, args, scanned, run)
        run.after = snapshot(server.pid, redis_pid, url)
        run.hwm_kib = [status_kib(pid, "VmHWM") for pid in tree_pids(server.pid)]
    run.loadavg_after = loadavg()
    run.redis_memory = redis.Redis.from_url(url).info("memory")
    run.redis_hwm_kib = status_kib(redis_pid, "VmHWM")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="users loaded into Redis")
    parser.add_argument("--processes", type=int, default=1, help="herald serve --processes")
    parser.add_argument(
        "--audience",
        choices=sorted(AUDIENCES),
        default="tagged",
        help=f"tagged: `{AUDIENCES['tagged']}` (the d11 index is read); untagged: `{AUDIENCES['untagged']}` "
        f"(every user is read); everyone: `{AUDIENCES['everyone']}` (every user is read and decided: an audience "
        "of --users users)",
    )
    parser.add_argument(
        "--scans",
        type=int,
        default=8,
        help="HERALD_CAMPAIGN_SCANS: shard scans a process runs at once (8: as docs/deployment.md advises for "
        "a process that only runs campaigns)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=400,
        help="HERALD_CAMPAIGN_CHUNK: index entries a scan reads and decides at a time (400: as docs/deployment.md "
        "advises for a process that only runs campaigns)",
    )
    parser.add_argument("--herald-log-level", default="INFO", help="HERALD_LOG_LEVEL (INFO is Herald's default)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the campaign may take")
    parser.add_argument("--progress-every", type=float, default=5, help="seconds between progress lines (stderr)")
    args = parser.parse_args()
    if args.users < 1 or args.processes < 1:
        parser.error("--users and --processes must be 1 or more")
    return args


def main() -> None:
    args = parse_args()
    shards = from_env(child_env()).redis_shards
    print(header(args, shards), flush=True)
    audience = audience_size(args.users, args.audience)
    run = Run()
    with tempfile.TemporaryDirectory(prefix="herald-campaign-bench-") as tmp, redis_server() as server:
        now = datetime.now(UTC)
        ttl = load_policy(ROOT / "policies").defaults.profile_retention
        progress(f"loading {args.users:,} users into {server.url} …")
        began = time.perf_counter()
        asyncio.run(load_users(server.url, args.users, shards, now, ttl))
        load_s = time.perf_counter() - began
        run.redis_loaded = int(redis.Redis.from_url(server.url).info("memory")["used_memory"])
        progress(f"  loaded in {load_s:.1f} s; starting herald serve --processes {args.processes} …")
        asyncio.run(measure(args, server.url, server.pid, Path(tmp), run))
        progress("the ceiling …")
        cap = asyncio.run(
            ceiling(server.url, shards, args.audience, min(shards, args.scans * args.processes), args.chunk)
        )
    print(report(args, run, cap, audience, load_s), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
