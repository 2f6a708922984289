"""What the benchmark scripts share: the workload, free ports, a private redis-server,
and reading a process tree's CPU time and a gateway's metrics from the outside."""

from __future__ import annotations

import math
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2  # noqa: E402

KEY = (("authorization", "Bearer hk_logistics_SAMPLE_not_for_production"),)
PROFILE_KEY = (("authorization", "Bearer hk_order_SAMPLE_not_for_production"),)
USERS = 10_000


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process the bench starts: this checkout's code first."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, within: float = 30, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on the port; fail early if `proc` exits first."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {within:.0f} s")


@dataclass(frozen=True)
class RedisServer:
    url: str
    pid: int


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port (no persistence), stopped on exit."""
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit(
            "bench: redis-server is not installed or not on PATH; install it (apt-get install redis-server) "
            "or pick targets without Redis (--targets echo,herald-memory,...)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def shipped(i: int, run: str, users: int = USERS) -> push_pb2.PushRequest:
    """An `order.shipped` with a fresh request_id and dedup key: the whole decision path
    (dedup, quiet hours, safety cap, reservation), accepted and delivered."""
    return push_pb2.PushRequest(
        request_id=f"{run}-{i}",
        user_id=f"bench-{i % users}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"SF{i:010d}"},
        dedup_key=f"{run}-O-{i}-shipped",
    )


async def load_users(channel: grpc.aio.Channel, users: int = USERS) -> None:
    """Upsert bench-0 … bench-<users-1>, each following on WeChat and with a phone."""
    stub = profile_pb2_grpc.ProfileServiceStub(channel)
    for start in range(0, users, 1000):
        requests = [
            profile_pb2.UpsertUserRequest(
                user=profile_pb2.User(
                    user_id=f"bench-{i}",
                    wechat=profile_pb2.WeChatIdentity(openid=f"oBench{i:022d}", following=True),
                    phone=f"+86139{i:08d}",
                )
            )
            for i in range(start, min(start + 1000, users))
        ]
        await stub.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=requests), metadata=PROFILE_KEY)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


TICK = os.sysconf("SC_CLK_TCK")  # /proc's CPU times count in 1/TICK s


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants, from /proc/<pid>/stat
    (utime + stime of each live process, plus cutime + cstime for children already reaped)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as file:
                text = file.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in ticks and pid not in tree:
            tree.add(pid)
            todo.extend(child for child, parent in parents.items() if parent == pid)
    return sum(ticks[pid] for pid in tree) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as file:
        fields = [int(f) for f in file.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK  # user nice system idle iowait irq softirq steal


@dataclass(frozen=True)
class HeraldMetrics:
    round_trips: float  # herald_store_round_trips_total, summed over ops
    delivered: float  # herald_sends_total{result="delivered"}, summed over channels and providers


def herald_metrics(url: str) -> HeraldMetrics:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    trips = delivered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "herald_store_round_trips_total":
                trips += sample.value
            elif sample.name == "herald_sends_total" and sample.labels.get("result") == "delivered":
                delivered += sample.value
    return HeraldMetrics(trips, delivered)


# The bench's own command (its snapshots), not the target's.
_OWN_COMMANDS = {"info"}


def redis_command_calls(url: str) -> dict[str, int]:
    """Calls per command from INFO commandstats (commands run inside Lua scripts included,
    as Redis counts them)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    calls = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name not in _OWN_COMMANDS:
            calls[name] = int(value["calls"])
    return calls


def redis_flush(url: str) -> None:
    redis.Redis.from_url(url).flushall()


def run_text(*command: str) -> str:
    """A command's output, stripped; "" when it cannot run."""
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines() -> list[str]:
    """The first lines of every bench's report: the command, the machine and its load,
    the software and the commit measured."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    redis_bin = shutil.which("redis-server")
    redis_version = run_text(redis_bin, "--version").split(" sha=")[0] if redis_bin else "redis-server not installed"
    commit = run_text("git", "rev-parse", "--short", "HEAD") or "unknown"
    if run_text("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return [
        f"$ {shlex.join([sys.executable, *sys.argv])}",
        f"machine: {cores} cores ({usable} usable by this process), {cpu_model()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start",
        f"software: Python {platform.python_version()}, grpcio {grpc.__version__}, {redis_version}; herald at {commit}",
    ]
