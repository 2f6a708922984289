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

    def histogram(self) -> Counter[int]:
        return Counter(self.per_user[u] for u in self.users)


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


def format_reports(reports: list[Report], names: Iterable[str]) -> str:
    names = list(names)
    out = []
    for report, name in zip(reports, names, strict=True):
        out.append(f"policy {report.version} ({name}): {report.requests} requests, {len(report.users)} users")
    header = f"{'business unit':<14}{'category':<11}{'outcome':<32}" + "".join(f"{n[:12]:>14}" for n in names)
    if len(reports) == 2:
        header += f"{'difference':>12}"
    out.append(header)
    for (bu, category, label), counts in _rows(reports):
        line = f"{bu:<14}{category:<11}{label:<32}" + "".join(f"{c:>14,}" for c in counts)
        if len(counts) == 2:
            line += f"{counts[1] - counts[0]:>+12,}"
        out.append(line)
    out.append("messages received per user:")
    histograms = [r.histogram() for r in reports]
    for bucket in sorted(set().union(*histograms)):
        counts = [h.get(bucket, 0) for h in histograms]
        line = f"  {bucket:>3} message(s): " + "  ".join(f"{c:>8,} users" for c in counts)
        if len(counts) == 2:
            line += f"  ({counts[1] - counts[0]:+,})"
        out.append(line)
    return "\n".join(out)
