"""The plain-text report of bench/compare.py: a header that says what ran where, the
closed-loop table (one line per target), the Redis table, the Redis Cluster's per-master
table and the fixed-rate block."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import TICK, machine_lines

if TYPE_CHECKING:
    from backends import ClusterRedis
    from compare import Outcome, Phase, Snapshot


def header(args: argparse.Namespace, multi: bool, herald: bool) -> str:
    lines = [
        *machine_lines(),
        f"workload: order.shipped, a fresh request_id and dedup key a call, {args.users:,} user ids; "
        f"{args.warmup} decisions of warm-up before each measured phase; closed loop {args.requests:,} decisions, "
        f"{args.concurrency} unary calls or {args.batches_in_flight} batches of {args.batch} in flight; "
        f"client: bench/load.py, its own process, {args.channels} gRPC connections",
    ]
    if herald:
        processes = (
            "`herald serve --help` lists --processes: Herald on Redis runs with 1 and with 2"
            if multi
            else "`herald serve --help` does not list --processes: the 2-process runs are skipped"
        )
        lines.append(f"herald: HERALD_LOG_LEVEL={args.herald_log_level}; {processes}")
    return "\n".join(lines) + "\n"


def _table(head: list[str], rows: list[list[str]], text_last: bool = False) -> list[str]:
    """Columns of figures aligned right; the first column (and with `text_last` the last) left."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    left = {0, len(head) - 1} if text_last else {0}
    lines = []
    for row in [head, *rows]:
        cells = [
            cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _per(phase: Phase, pick: Callable[[Snapshot], float]) -> float:
    """A snapshot quantity's delta over the phase, per decision."""
    return (pick(phase.after) - pick(phase.before)) / float(phase.load["decisions"])


def _cpu(phase: Phase) -> tuple[float, float]:
    """Server and Redis CPU seconds per decision."""
    return _per(phase, lambda s: s.server_cpu), _per(phase, lambda s: s.redis_cpu)


def _rough(phase: Phase) -> bool:
    """Whether the phase's server + Redis CPU is too few /proc ticks to divide by."""
    return sum(_cpu(phase)) * float(phase.load["decisions"]) < 20 / TICK


def _rate(phase: Phase) -> float:
    return float(phase.load["decisions"]) / float(phase.load["seconds"])


def closed_table(outcomes: list[Outcome]) -> list[str]:
    done = {o.target.name: o for o in outcomes if o.closed and o.processes in (None, 1)}
    rows, notes = [], []
    for o in outcomes:
        if not o.closed:
            rows.append([o.label, "failed", *[""] * 9])
            notes.append(f"{o.label}: {o.error}")
            continue
        p = o.closed
        server, redis = _cpu(p)
        ceiling = done.get(o.target.ceiling)
        ratio = cost = None
        if ceiling and ceiling.closed:
            ratio = _rate(p) / _rate(ceiling.closed) * 100
            if not _rough(ceiling.closed):
                cost = (server + redis) / sum(_cpu(ceiling.closed))
        if _rough(p):
            seconds = sum(_cpu(p)) * p.load["decisions"]
            notes.append(
                f"{o.label}: {seconds:.2f} s of server and Redis CPU in all, a few of /proc's {1000 / TICK:.0f} ms "
                f"ticks: its µs are rough and no CPU ratio is drawn against it"
            )
        unit = "decisions/s" if o.target.batch else "calls/s"
        rows.append(
            [
                o.label,
                f"{_rate(p):,.0f} {unit}",
                _f(p.load["p50_ms"]),
                _f(p.load["p99_ms"]),
                _f(server * 1e6, 0),
                _f(redis * 1e6, 0) if o.target.redis else "-",
                _f(p.load["client_cpu_s"] / p.load["decisions"] * 1e6, 0),
                o.target.ceiling or "-",
                _f(ratio, 0, "%"),
                _f(cost, 1, "x"),
                f"{p.others():.2f}",
            ]
        )
        problems = {**p.load["errors"], **({"not ACCEPTED": p.load["not_accepted"]} if p.load["not_accepted"] else {})}
        if problems:
            notes.append(
                f"{o.label}: " + ", ".join(f"{n} {what}" for what, n in problems.items()) + " (of the decisions)"
            )
        if o.target.herald and o.target.deliver:
            delivered = p.after.delivered - p.before.delivered
            notes.append(
                f"{o.label}: {delivered:,.0f} delivered, the last {p.settle_s:.1f} s after the last answer "
                "(its CPU counts until then)"
            )
    head = [
        "target",
        "throughput",
        "p50 ms",
        "p99 ms",
        "server µs",
        "redis µs",
        "client µs",
        "ceiling",
        "of ceiling",
        "CPU x",
        "others",
    ]
    return [*_table(head, rows), *(f"  note: {n}" for n in notes)]


def _top(calls: dict[str, float], n: int = 5) -> str:
    return ", ".join(f"{name} {v:.2f}" for name, v in sorted(calls.items(), key=lambda kv: -kv[1])[:n] if v >= 0.005)


def redis_table(outcomes: list[Outcome]) -> list[str]:
    rows = []
    api: dict[tuple[str, int | None], Phase] = {}  # the API-only runs by name and processes
    for o in outcomes:
        if o.closed and o.target.redis:
            p = o.closed
            decisions = p.load["decisions"]
            commands = {name: n / decisions for name, n in p.commands().items()}
            herald = o.target.herald
            rows.append(
                [
                    o.label,
                    f"{decisions:,}",
                    f"{p.after.delivered - p.before.delivered:,.0f}" if herald else "-",
                    f"{sum(commands.values()):.2f}",
                    _f(_per(p, lambda s: s.round_trips), 2) if herald else "-",
                    _top(commands),
                ]
            )
            if herald and not o.target.deliver:
                api[o.target.name, o.processes] = p
    lines = _table(["target", "decisions", "delivered", "commands", "round trips", "top commands"], rows, True)
    for o in outcomes:
        twin = f"{o.target.name}-api"
        if o.target.redis and o.target.deliver and o.closed and (twin, o.processes) in api:
            lines.append(_per_delivery(o, o.closed, api[twin, o.processes], twin))
    return lines


def _per_delivery(o: Outcome, with_delivery: Phase, api_only: Phase, api_name: str) -> str:
    """What delivery adds, per delivered message: the run with deliveries minus the API-only
    run's per-decision figures, over the messages delivered."""
    delivered = with_delivery.after.delivered - with_delivery.before.delivered
    if delivered <= 0:
        return f"  {o.label}: nothing delivered, so no per-delivery figures"
    decisions = with_delivery.load["decisions"]
    base = {name: n / api_only.load["decisions"] for name, n in api_only.commands().items()}
    extra = {name: (n - base.get(name, 0) * decisions) / delivered for name, n in with_delivery.commands().items()}
    trips = (_per(with_delivery, lambda s: s.round_trips) - _per(api_only, lambda s: s.round_trips)) * decisions
    return (
        f"  per delivery ({o.label} minus {api_name}, over {delivered:,.0f} delivered): "
        f"{sum(extra.values()):.2f} commands, {trips / delivered:.2f} round trips; top: {_top(extra)}"
    )


def _masters(phase: Phase) -> list[tuple[int, float]]:
    """Each master's commands and CPU seconds over the phase, by first slot."""
    pairs = zip(phase.before.masters, phase.after.masters, strict=True)
    return [(after.commands - before.commands, after.cpu - before.cpu) for before, after in pairs]


def _per_master(phase: Phase) -> str:
    masters = _masters(phase)
    decisions = float(phase.load["decisions"])
    total = sum(commands for commands, _ in masters)
    cells = [
        f"master {i}: {_f(commands / total * 100 if total else None, 0, '%')} of commands, "
        f"{cpu / decisions * 1e6:,.0f} µs/decision"
        for i, (commands, cpu) in enumerate(masters, 1)
    ]
    # Redis CPU is the masters' and the replicas' summed: what is left is the replicas' (at
    # least 0: only the float sums differ).
    replicas = max(0.0, phase.after.redis_cpu - phase.before.redis_cpu - sum(cpu for _, cpu in masters))
    return "; ".join([*cells, f"replicas: {replicas / decisions * 1e6:,.0f} µs/decision"])


def cluster_table(outcomes: list[Outcome]) -> list[str]:
    rows = [[o.label, _per_master(o.closed)] for o in outcomes if o.closed and o.target.cluster]
    return _table(["target", "per master"], rows, True)


def _layout(cluster: ClusterRedis) -> str:
    """Which slots, and so how many of Herald's shards, each master serves."""
    masters = [
        f"master {i} (slots {', '.join(f'{low}-{high}' for low, high in m.slots)}) holds {m.shards} "
        f"({m.shards / cluster.shard_count:.0%})"
        for i, m in enumerate(cluster.masters, 1)
    ]
    return f"Here, of Herald's {cluster.shard_count} shards (HERALD_REDIS_SHARDS): {'; '.join(masters)}."


def cluster_section(outcomes: list[Outcome], cluster: ClusterRedis | None) -> list[str]:
    n = max(len(o.closed.after.masters) for o in outcomes if o.closed and o.target.cluster)
    return [
        "Redis Cluster, per master, of the closed loop",
        *_explain(
            "per master: the share of the commands of the table above (INFO commandstats, summed over the masters) "
            "each master executed and its redis-server's CPU per decision (masters by first slot); "
            "replicas: all the replicas' CPU per decision. Herald spreads its shards evenly over the 16384 slots "
            "(gateway/store/shards.py) and keeps all that a decision touches in its user's shard, so a master's "
            f"share of the commands should be near its share of the shards, about 1/{n}: a share far from 1/{n} "
            "would mean a hot node." + (f" {_layout(cluster)}" if cluster else "")
        ),
        *cluster_table(outcomes),
    ]


def rate_table(outcomes: list[Outcome], args: argparse.Namespace) -> list[str]:
    rows, notes = [], []
    for o in outcomes:
        if not o.rate:
            continue
        r: dict[str, Any] = o.rate.load
        miss = f">{args.deadline * 1000:.0f}"
        cpu = (o.rate.after.server_cpu - o.rate.before.server_cpu) / (o.rate.after.at - o.rate.before.at) * 100
        other = sum(r["errors"].values()) + r["not_accepted"]
        client = "fell behind" if r["client_behind"] else "kept up"
        rows.append(
            [
                o.label,
                _f(r["offered_per_s"], 0),
                _f(r["answered_per_s"], 0),
                miss if r["p50_ms"] is None else _f(r["p50_ms"]),
                miss if r["p99_ms"] is None else _f(r["p99_ms"]),
                f"{r['served']:,}",
                f"{r['refused']:,}",
                f"{r['shed']:,}",
                f"{r['deadline'] + r['unsent']:,}",
                f"{other:,}",
                f"{cpu:.0f}%",
                f"{o.rate.others():.2f}",
                f"{client} (late p99 {_f(r['lag_p99_ms'])} ms, max {_f(r['lag_max_ms'])} ms)",
            ]
        )
        problems = {**r["errors"], **({"not ACCEPTED": r["not_accepted"]} if r["not_accepted"] else {})}
        if problems:
            notes.append(f"{o.label}: other: " + ", ".join(f"{n:,} {what}" for what, n in problems.items()))
        if r["unsent"]:
            notes.append(f"{o.label}: {r['unsent']:,} of the missed were never sent (the client was that late)")
    head = [
        "target",
        "offered/s",
        "answered/s",
        "p50 ms",
        "p99 ms",
        "served",
        "refused",
        "shed",
        "missed",
        "other",
        "server CPU",
        "others",
        "client",
    ]
    return [*_table(head, rows, True), *(f"  note: {n}" for n in notes)]


def _explain(text: str) -> list[str]:
    return textwrap.wrap(text, width=118, initial_indent="  ", subsequent_indent="  ")


def tables(outcomes: list[Outcome], args: argparse.Namespace, cluster: ClusterRedis | None = None) -> str:
    on_cluster = any(o.target.cluster for o in outcomes)
    out = [
        "Closed loop",
        *_explain(
            "throughput: calls/s (decisions/s for batches). p50/p99: latency of the measured calls (of each batch "
            "for batches). server/redis/client µs: CPU per decision of the server's process tree, of redis-server "
            "and of the load generator (utime+stime from /proc/<pid>/stat over the measured phase and, where the "
            "gateway delivers, until its deliveries are done). of ceiling: throughput over the ceiling's. CPU x: "
            "(server + redis) CPU per decision over the ceiling's. others: cores the rest of the machine kept busy "
            "meanwhile (/proc/stat less the server, Redis and the load generator): other work skews the figures."
            + (
                " On the Redis Cluster, redis µs is every node's redis-server summed, masters and replicas."
                if on_cluster
                else ""
            )
        ),
        *closed_table(outcomes),
    ]
    if any(o.closed and o.target.redis for o in outcomes):
        out += [
            "",
            "Redis, per decision of the closed loop",
            *_explain(
                "commands: INFO commandstats calls (Redis counts the commands a Lua script runs, so an EVALSHA of "
                "one HINCRBY is 2). round trips: herald_store_round_trips_total, summed over ops. delivered: "
                'herald_sends_total{result="delivered"}. All deltas over the phase.'
                + (
                    " On the Redis Cluster, commands are summed over the masters (not the replicas, which replay "
                    "their masters' writes)."
                    if on_cluster
                    else ""
                )
            ),
            *redis_table(outcomes),
        ]
    if any(o.closed and o.target.cluster for o in outcomes):
        out += ["", *cluster_section(outcomes, cluster)]
    if any(o.rate for o in outcomes):
        out += [
            "",
            f"Fixed rate: {args.rate:g} calls/s offered for {args.duration:g} s (open loop, unary targets)",
            *_explain(
                f"Each call has a {args.deadline:g} s deadline from its intended send time. answered/s: calls "
                "the server answered before their deadline (served or refused) per second, from the first "
                "intended send to the last answer. p50/p99: from the intended send time, over every call (a missed "
                f"deadline counts as >{args.deadline * 1000:.0f}). refused: RESOURCE_EXHAUSTED. shed: CANCELLED "
                "before the deadline, gRPC core dropping a call because too many wait for the server's event loop "
                "to take them. missed: deadline exceeded. other: any other error. server CPU: share of one core "
                "over the phase. others: as above. client: how late the load generator started its calls; it fell "
                "behind when that p99 is over 10 ms."
            ),
            *rate_table(outcomes, args),
        ]
    elif args.rate <= 0:
        out += ["", "Fixed rate: skipped (--rate 0)."]
    return "\n".join(out)
