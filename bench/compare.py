"""Herald against the best its own wire and one Redis call allow, measured in the same run.

    .venv/bin/python bench/compare.py                          # every target, the defaults
    .venv/bin/python bench/compare.py --targets echo,herald-memory --requests 2000
    .venv/bin/python bench/compare.py --rate 500 --duration 20  # the fixed-rate phase
    .venv/bin/python bench/compare.py --rate 0                  # closed loop only

Each target is its own server process, driven by bench/load.py in another process (the
same client for all): a warm-up, then a closed loop (--requests decisions, --concurrency
calls in flight, or batches of --batch with --batches-in-flight), then for unary targets
an open loop at --rate calls/s for --duration s. The Redis targets share a redis-server
this script starts on a free port, flushed before each target; the cluster targets share
a Redis Cluster (3 masters, one replica each: tests/cluster.py) started once, only when
one is selected, and flushed likewise. Herald targets get --users users first. Nothing
here asserts on speed; read the figures beside their ceilings, measured minutes apart on
the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from backends import Backend, ClusterRedis, NodeSample, RedisSample, SingleRedis, cluster_redis
from common import ROOT, USERS, child_env, herald_metrics, machine_busy_seconds, redis_server
from common import tree_cpu_seconds as cpu_of
from targets import Server, echo_server, herald_has_processes_flag, herald_server


@dataclass(frozen=True)
class Target:
    name: str
    herald: bool
    redis: bool
    batch: bool
    deliver: bool  # deliveries in the same process (Herald)
    ceiling: str  # the target whose figures this one is read against ("" for a ceiling)
    cluster: bool = False  # on the Redis Cluster (`redis` is then true too) instead of the single redis-server


TARGETS = {
    t.name: t
    for t in [
        Target("echo", False, False, False, False, ""),
        Target("herald-memory", True, False, False, True, "echo"),
        Target("echo-redis", False, True, False, False, ""),
        Target("herald-redis-api", True, True, False, False, "echo-redis"),
        Target("herald-redis", True, True, False, True, "echo-redis"),
        Target("herald-cluster-api", True, True, False, False, "echo-redis", cluster=True),
        Target("herald-cluster", True, True, False, True, "echo-redis", cluster=True),
        Target("echo-batch", False, False, True, False, ""),
        Target("herald-memory-api-batch", True, False, True, False, "echo-batch"),
        Target("herald-memory-batch", True, False, True, True, "echo-batch"),
        Target("echo-redis-batch", False, True, True, False, ""),
        Target("herald-redis-api-batch", True, True, True, False, "echo-redis-batch"),
        Target("herald-cluster-api-batch", True, True, True, False, "echo-redis-batch", cluster=True),
    ]
}


@dataclass(frozen=True)
class Snapshot:
    at: float
    server_cpu: float
    machine_busy: float
    redis_cpu: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    masters: tuple[NodeSample, ...] = ()  # a cluster's, by first slot
    round_trips: float = 0.0
    delivered: float = 0.0


@dataclass
class Phase:
    """One measured phase: the load generator's figures and the servers' deltas."""

    load: dict[str, Any]
    before: Snapshot
    after: Snapshot
    settle_s: float = 0.0

    def others(self) -> float:
        """Cores the rest of the machine kept busy meanwhile: all busy CPU less the server's,
        Redis's and the load generator's."""
        ours = self.after.server_cpu - self.before.server_cpu + self.after.redis_cpu - self.before.redis_cpu
        busy = self.after.machine_busy - self.before.machine_busy - ours - float(self.load["client_cpu_s"])
        return max(0.0, busy) / (self.after.at - self.before.at)

    def commands(self) -> dict[str, int]:
        calls = {name: n - self.before.commands.get(name, 0) for name, n in self.after.commands.items()}
        return {name: n for name, n in calls.items() if n > 0}


@dataclass
class Outcome:
    target: Target
    processes: int | None  # Herald's --processes, None when not passed
    closed: Phase | None = None
    rate: Phase | None = None
    error: str = ""

    @property
    def label(self) -> str:
        return self.target.name + (f" ({self.processes} proc)" if self.processes else "")


def snapshot(server: Server, redis: Backend | None) -> Snapshot:
    metrics = herald_metrics(server.metrics_url) if server.metrics_url else None
    at, server_cpu, busy = time.perf_counter(), cpu_of(server.pid), machine_busy_seconds()
    sample = redis.sample() if redis else RedisSample()
    return Snapshot(
        at=at,
        server_cpu=server_cpu,
        machine_busy=busy,
        redis_cpu=sample.cpu,
        commands=sample.commands,
        masters=sample.masters,
        round_trips=metrics.round_trips if metrics else 0.0,
        delivered=metrics.delivered if metrics else 0.0,
    )


def read_event(proc: subprocess.Popen[str], expected: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"the load generator exited with {proc.returncode} before '{expected}'")
    event: dict[str, Any] = json.loads(line)
    if event.get("event") != expected:
        raise RuntimeError(f"the load generator said {line.strip()!r}, expected '{expected}'")
    return event


def measure(server: Server, redis: Backend | None, load_args: list[str], deliveries: Deliveries | None) -> Phase:
    """Run bench/load.py against the server; snapshot after its warm-up and after its
    measured phase. With `deliveries` (the gateway delivers in-process), each snapshot
    waits for the deliveries of the decisions accepted so far, so that the phase's
    CPU and Redis figures hold its own deliveries and no one else's."""
    command = [sys.executable, str(ROOT / "bench" / "load.py"), "--target", server.address, "--wait", *load_args]
    with subprocess.Popen(
        command, env=child_env(), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None
        ready = read_event(proc, "ready")
        if deliveries:
            deliveries.settle(server, ready["accepted"])
        before = snapshot(server, redis)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        load = read_event(proc, "done")
        ended = time.perf_counter()
        if deliveries and "accepted" in load:
            deliveries.settle(server, load["accepted"])
        phase = Phase(load, before, snapshot(server, redis))
        phase.settle_s = phase.after.at - ended if deliveries else 0.0
        return phase


@dataclass
class Deliveries:
    """The deliveries a gateway owes: every decision accepted since it started."""

    expected: float = 0.0

    def settle(self, server: Server, accepted: float, stall: float = 5.0, within: float = 300.0) -> None:
        """Wait until `herald_sends_total{result="delivered"}` reaches what is owed,
        stops moving for `stall` s, or `within` s pass."""
        self.expected += accepted
        end = time.monotonic() + within
        seen, moved = -1.0, time.monotonic()
        while time.monotonic() < end:
            delivered = herald_metrics(server.metrics_url).delivered
            if delivered >= self.expected:
                return
            if delivered != seen:
                seen, moved = delivered, time.monotonic()
            elif time.monotonic() - moved > stall:
                return
            time.sleep(0.05)


@dataclass(frozen=True)
class Backends:
    """The Redis the run started: a single node and a cluster, each only when a selected
    target needs it."""

    single: SingleRedis | None
    cluster: ClusterRedis | None

    def of(self, target: Target) -> Backend | None:
        if not target.redis:
            return None
        backend = self.cluster if target.cluster else self.single
        if backend is None:
            raise RuntimeError(f"{target.name}: its Redis was not started")
        return backend


def start(
    outcome: Outcome, workdir: Path, redis: Backend | None, args: argparse.Namespace
) -> AbstractContextManager[Server]:
    target = outcome.target
    url = redis.url if redis else ""
    if target.herald:
        return herald_server(workdir, url, target.deliver, outcome.processes, args.herald_log_level, target.cluster)
    return echo_server(workdir, url)


def run_target(outcome: Outcome, workdir: Path, backends: Backends, args: argparse.Namespace) -> None:
    target = outcome.target
    redis = backends.of(target)
    if redis:
        redis.flush()
    common = ["--users", str(args.users), "--channels", str(args.channels), "--warmup", str(args.warmup)]
    if target.herald:
        common.append("--expect-accepted")
    closed = [*common, "--requests", str(args.requests)]
    if target.batch:
        closed += ["--mode", "batch", "--batch", str(args.batch), "--concurrency", str(args.batches_in_flight)]
    else:
        closed += ["--mode", "unary", "--concurrency", str(args.concurrency)]
    with start(outcome, workdir, redis, args) as server:
        deliveries = Deliveries() if target.herald and target.deliver else None
        first = [*closed, "--load-users"] if target.herald else closed
        outcome.closed = measure(server, redis, first, deliveries)
        if args.rate > 0 and not target.batch:
            rate = [*common, "--mode", "rate", "--rate", str(args.rate), "--duration", str(args.duration)]
            outcome.rate = measure(server, redis, [*rate, "--deadline", str(args.deadline)], deliveries)


@contextmanager
def maybe_redis(needed: bool) -> Iterator[SingleRedis | None]:
    if not needed:
        yield None
        return
    with redis_server() as server:
        yield SingleRedis(server)


@contextmanager
def maybe_cluster(needed: bool) -> Iterator[ClusterRedis | None]:
    if not needed:
        yield None
        return
    with cluster_redis() as cluster:
        yield cluster


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, run in this order: {', '.join(TARGETS)}"
    )
    parser.add_argument("--requests", type=int, default=10_000, help="decisions a target in the closed loop")
    parser.add_argument("--concurrency", type=int, default=32, help="unary calls in flight (closed loop)")
    parser.add_argument("--batch", type=int, default=500, help="requests a PushBatch")
    parser.add_argument(
        "--batches-in-flight",
        type=int,
        default=4,
        help="PushBatch calls in flight (closed loop): two a process of the 2-process target, so that each "
        "process decides one batch while the other's answer travels (with one each, half of each "
        "process's time is spent waiting for the client)",
    )
    parser.add_argument("--channels", type=int, default=4, help="gRPC connections the client spreads its calls over")
    parser.add_argument("--warmup", type=int, default=500, help="decisions before each measured phase")
    parser.add_argument("--rate", type=float, default=1000, help="fixed rate, calls/s (0: skip the fixed-rate phase)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of the fixed-rate phase")
    parser.add_argument(
        "--deadline", type=float, default=2.0, help="seconds a fixed-rate call may take from its intended send"
    )
    parser.add_argument("--users", type=int, default=USERS, help="users loaded into Herald first (and user ids used)")
    parser.add_argument("--herald-log-level", default="INFO", help="HERALD_LOG_LEVEL (INFO is Herald's default)")
    args = parser.parse_args()
    unknown = [name for name in args.targets.split(",") if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; pick from {', '.join(TARGETS)}")
    return args


def main() -> None:
    args = parse_args()
    targets = [TARGETS[name] for name in args.targets.split(",")]
    multi = any(t.herald for t in targets) and herald_has_processes_flag()
    # Several processes share state through Redis only: the in-memory targets run one.
    outcomes = [Outcome(t, n) for t in targets for n in ((1, 2) if t.herald and t.redis and multi else (None,))]
    print(report.header(args, multi, any(t.herald for t in targets)), flush=True)
    with ExitStack() as stack:
        single = stack.enter_context(maybe_redis(any(t.redis and not t.cluster for t in targets)))
        if any(t.cluster for t in targets):
            print("starting a Redis Cluster (3 masters, one replica each) …", file=sys.stderr, flush=True)
        backends = Backends(single, stack.enter_context(maybe_cluster(any(t.cluster for t in targets))))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herald-bench-")))
        for k, outcome in enumerate(outcomes):
            print(f"[{k + 1}/{len(outcomes)}] {outcome.label} …", file=sys.stderr, flush=True)
            workdir = tmp / f"{k}-{outcome.target.name}"
            workdir.mkdir()
            try:
                run_target(outcome, workdir, backends, args)
            except (RuntimeError, OSError, ValueError) as exc:
                outcome.error = str(exc)
                print(f"    failed: {exc}", file=sys.stderr, flush=True)
    print(report.tables(outcomes, args, backends.cluster))
    sys.exit(1 if any(o.error for o in outcomes) else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
