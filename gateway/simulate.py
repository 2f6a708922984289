"""Replay timestamped traffic against a policy set, with the in-memory store and a
simulated clock, and count what would have happened (``herald policy simulate``).

The replay runs the gateway's own pipeline, scheduler and dispatcher; only the clock
(which jumps from event to event and through every due release) and the channel (which
delivers at once) are simulated.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf import json_format

from channels.base import Delivery, SendResult, SendStatus
from gateway.api import convert
from gateway.clock import FixedClock
from gateway.core.pipeline import PushPipeline
from gateway.core.ratelimit import RateLimiter
from gateway.core.users import Users
from gateway.delivery.dispatcher import Dispatcher
from gateway.errors import HeraldError, status_of
from gateway.killswitches import KillSwitches
from gateway.metrics import fresh_metrics
from gateway.policy.holder import PolicyHolder
from gateway.scheduler import Scheduler
from gateway.store.memory import MemoryQueue, MemoryStore
from gateway.tables import table
from herald.v1 import profile_pb2, push_pb2


class TrafficError(Exception):
    pass


@dataclass(frozen=True)
class Event:
    at: datetime
    line: int
    bu: str = ""
    request: push_pb2.PushRequest | None = None
    user: profile_pb2.UpsertUserRequest | None = None


def read_traffic(path: Path) -> list[Event]:
    """JSON Lines: {"at", "bu", "request": PushRequest} or {"at", "user": User}."""
    events = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                at = datetime.fromisoformat(data["at"])
                if at.tzinfo is None:
                    raise ValueError("'at' needs a UTC offset, e.g. 2026-11-11T08:00:00+08:00")
                if "request" in data:
                    request = json_format.ParseDict(data["request"], push_pb2.PushRequest())
                    events.append(Event(at.astimezone(UTC), number, bu=str(data["bu"]), request=request))
                elif "user" in data:
                    user = json_format.ParseDict(data["user"], profile_pb2.User())
                    events.append(Event(at.astimezone(UTC), number, user=profile_pb2.UpsertUserRequest(user=user)))
                else:
                    raise ValueError("each line needs 'request' (with 'bu') or 'user'")
            except (ValueError, KeyError, json_format.ParseError) as exc:
                raise TrafficError(f"{path}:{number}: {exc}") from None
    if not events:
        raise TrafficError(f"{path}: no events")
    return sorted(events, key=lambda e: (e.at, e.line))


class _InstantChannel:
    name = "simulated"

    async def send(self, delivery: Delivery) -> SendResult:
        return SendResult(SendStatus.DELIVERED, "SIM")

    async def close(self) -> None:
        return None


@dataclass
class Report:
    version: str
    requests: int = 0
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    per_user: Counter[str] = field(default_factory=Counter)
    users: set[str] = field(default_factory=set)
    # (business unit, request_id) of each sent message -> (category, how long after its
    # request it was delivered): what a change of quiet hours, send windows or caps moves.
    sent: dict[tuple[str, str], tuple[str, timedelta]] = field(default_factory=dict)

    def histogram(self) -> Counter[int]:
        return Counter(self.per_user[u] for u in self.users)

    def delays(self, category: str) -> list[timedelta]:
        return sorted(delay for cat, delay in self.sent.values() if cat == category)


async def simulate(policy_dir: Path, events: list[Event], horizon: timedelta = timedelta(days=3)) -> Report:
    clock = FixedClock(events[0].at)
    metrics = fresh_metrics()
    store = MemoryStore(clock)
    policies = PolicyHolder(policy_dir, metrics)
    switches = KillSwitches(store, clock, metrics)
    channel = _InstantChannel()
    users = Users(store, policies, clock)
    queue = MemoryQueue(store)
    dispatcher = Dispatcher(queue, store, policies, switches, lambda *_: channel, users, clock, metrics, in_flight=1)
    pipeline = PushPipeline(store, policies, switches, clock, metrics, RateLimiter(lambda: clock.now().timestamp()))
    scheduler = Scheduler(store, pipeline, clock, metrics)
    report = Report(policies.current.version)
    message_ids: list[str] = []
    dispatcher.start()

    async def run_until(moment: datetime) -> None:
        while (due := store.next_due()) is not None and due <= moment:
            clock.set(max(due, clock.now()))
            await scheduler.tick()
            await dispatcher.drain(60)
        clock.set(max(moment, clock.now()))

    try:
        for event in events:
            await run_until(event.at)
            if event.user is not None:
                try:
                    await users.upsert(event.user.user.user_id, convert.profile_patch(event.user))
                    report.users.add(event.user.user.user_id)
                except HeraldError:
                    report.outcomes["-", "-", "user refused"] += 1
                continue
            assert event.request is not None
            report.requests += 1
            try:
                answer = await pipeline.push(event.bu, convert.push_input(event.request))
                message_ids.append(answer.message_id)
            except HeraldError as exc:
                report.outcomes[event.bu, "-", f"refused {status_of(exc).name}"] += 1
            await dispatcher.drain(60)
        await run_until(events[-1].at + horizon)
    finally:
        await dispatcher.stop()
    for record in await store.get_messages(message_ids):
        assert record is not None
        if record.status == "delivered":
            label = "sent"
            report.per_user[record.user_id] += 1
            delivered = next((e.at for e in reversed(record.timeline) if e.kind == "delivered"), record.created_at)
            report.sent[record.business_unit, record.request_id] = (
                str(record.category),
                delivered - record.created_at,
            )
        elif record.status in ("scheduled", "queued"):
            label = "still scheduled"
        else:
            label = f"suppressed {record.reason}" if record.reason else record.status
        report.outcomes[record.business_unit, str(record.category), label] += 1
    return report


def _rows(reports: list[Report]) -> Iterator[tuple[tuple[str, str, str], list[int]]]:
    keys = sorted(set().union(*(r.outcomes for r in reports)))
    for key in keys:
        yield key, [r.outcomes.get(key, 0) for r in reports]


# How long after its request a sent message went out.
DELAY_BUCKETS: tuple[tuple[str, timedelta], ...] = (
    ("at once (<1m)", timedelta(minutes=1)),
    ("1m-1h", timedelta(hours=1)),
    ("1h-4h", timedelta(hours=4)),
    ("4h-12h", timedelta(hours=12)),
    ("12h-24h", timedelta(hours=24)),
    (">=24h", timedelta.max),
)
SAME_TIME = timedelta(minutes=1)  # moved by less than this: not moved


def span(delta: timedelta, sign: bool = False) -> str:
    """A duration short enough for a table: ``40s``, ``25m``, ``2h05m``, ``1d3h``."""
    seconds = int(abs(delta).total_seconds())
    prefix = ("-" if delta < timedelta(0) else "+") if sign else ""
    if seconds < 60:
        text = f"{seconds}s"
    elif seconds < 3600:
        text = f"{seconds // 60}m"
    elif seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        text = f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    else:
        days, hours = divmod(seconds // 3600, 24)
        text = f"{days}d{hours}h" if hours else f"{days}d"
    return prefix + text


def _median(values: list[timedelta]) -> timedelta:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _bucket(delay: timedelta) -> str:
    return next(name for name, below in DELAY_BUCKETS if delay < below)


def _delay_rows(reports: list[Report]) -> list[list[str]]:
    """Per category, how many sent messages went out how long after their request, and
    the median and the longest delay."""
    rows = []
    categories = sorted({cat for r in reports for cat, _ in r.sent.values()})
    for category in categories:
        delays = [r.delays(category) for r in reports]
        for name, _ in DELAY_BUCKETS:
            counts = [sum(1 for d in ds if _bucket(d) == name) for ds in delays]
            if any(counts):
                row = [category, name, *(f"{c:,}" for c in counts)]
                if len(counts) == 2:
                    row.append(f"{counts[1] - counts[0]:+,}")
                rows.append(row)
        for name, pick in (("median", _median), ("longest", max)):
            values = [pick(ds) if ds else None for ds in delays]
            row = [category, name, *("-" if v is None else span(v) for v in values)]
            if len(values) == 2:
                first, second = values
                row.append("-" if first is None or second is None else span(second - first, sign=True))
            rows.append(row)
    return rows


def _shift_rows(before: Report, after: Report) -> list[list[str]]:
    """Per category, the messages sent under both policies (matched by business unit and
    request_id): how many went out at the same time, later or earlier under the second,
    and by how much; and how many only one of them sent."""
    rows = []
    categories = sorted({cat for r in (before, after) for cat, _ in r.sent.values()})
    for category in categories:
        first = {key: delay for key, (cat, delay) in before.sent.items() if cat == category}
        second = {key: delay for key, (cat, delay) in after.sent.items() if cat == category}
        both = first.keys() & second.keys()
        moves = [second[key] - first[key] for key in both]
        later = [m for m in moves if m >= SAME_TIME]
        earlier = [m for m in moves if m <= -SAME_TIME]
        rows.append(
            [
                category,
                f"{len(both):,}",
                f"{len(both) - len(later) - len(earlier):,}",
                f"{len(later):,}",
                span(_median(later), sign=True) if later else "-",
                span(max(later), sign=True) if later else "-",
                f"{len(earlier):,}",
                span(_median(earlier), sign=True) if earlier else "-",
                span(min(earlier), sign=True) if earlier else "-",
                f"{len(first.keys() - second.keys()):,}",
                f"{len(second.keys() - first.keys()):,}",
            ]
        )
    return rows


SHIFT_HEADER = [
    "category",
    "sent by both",
    "same time",
    "later",
    "median later",
    "most later",
    "earlier",
    "median earlier",
    "most earlier",
    "no longer sent",
    "newly sent",
]


def format_reports(reports: list[Report], names: Iterable[str]) -> str:
    names = list(names)
    out = []
    for report, name in zip(reports, names, strict=True):
        out.append(f"policy {report.version} ({name}): {report.requests} requests, {len(report.users)} users")
    compare = ["difference"] if len(reports) == 2 else []
    rows = []
    for (bu, category, label), counts in _rows(reports):
        row = [bu, category, label, *(f"{c:,}" for c in counts)]
        if len(counts) == 2:
            row.append(f"{counts[1] - counts[0]:+,}")
        rows.append(row)
    out.extend(table(["business unit", "category", "outcome", *names, *compare], rows, left=3))
    out.append("")
    out.append("when the sent messages went out, after their request:")
    out.extend(table(["category", "delay", *names, *compare], _delay_rows(reports), left=2))
    if len(reports) == 2:
        out.append("")
        out.append(
            f"time shifts, {names[0]} -> {names[1]} (the messages both sent, matched by business unit and "
            f"request_id; moved less than {span(SAME_TIME)}: same time):"
        )
        out.extend(table(SHIFT_HEADER, _shift_rows(reports[0], reports[1]), left=1))
    out.append("")
    out.append("messages received per user:")
    histograms = [r.histogram() for r in reports]
    rows = []
    for bucket in sorted(set().union(*histograms)):
        counts = [h.get(bucket, 0) for h in histograms]
        row = [f"{bucket} message(s)", *(f"{c:,}" for c in counts)]
        if len(counts) == 2:
            row.append(f"{counts[1] - counts[0]:+,}")
        rows.append(row)
    out.extend(table(["received", *(f"users ({n})" for n in names), *compare], rows, left=1))
    return "\n".join(out)
