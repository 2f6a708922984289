"""The queue between decisions and channel adapters, and the dispatcher that drains it.

Right before each send the kill switch and the deadline are checked again; the plan is
walked primary first, falling back when a channel cannot reach the user. Every step
lands in the message's timeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from channels.base import ChannelAdapter, Delivery, SendStatus
from gateway.clock import Clock
from gateway.core.caps import retention
from gateway.core.claims import Claim
from gateway.core.killswitch import blocking_switch, killed_channels
from gateway.core.render import render
from gateway.core.state import Commit, Release
from gateway.domain import Channel, Outcome, Reason
from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.profiles import UserProfile
from gateway.store.base import Store
from gateway.store.records import Final, TimelineEntry

log = get_logger(__name__)


@dataclass(frozen=True)
class Job:
    message_id: str
    claim: Claim
    plan: tuple[Channel, ...]
    profile: UserProfile


def recipient_for(channel: Channel, profile: UserProfile) -> str:
    if channel in (Channel.WECHAT_TEMPLATE, Channel.WECHAT_CS, Channel.WECHAT_MASS):
        return profile.wechat.openid if profile.wechat else ""
    if channel is Channel.SMS:
        return profile.phone
    if channel is Channel.EMAIL:
        return profile.email
    return profile.device_tokens[0].token if profile.device_tokens else ""


class Dispatcher:
    def __init__(
        self,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        adapter_for: Callable[[Channel], ChannelAdapter],
        clock: Clock,
        metrics: Metrics,
        workers: int = 4,
    ) -> None:
        self._store = store
        self._policies = policies
        self._switches = switches
        self._adapter_for = adapter_for
        self._clock = clock
        self._metrics = metrics
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: Job) -> None:
        self._queue.put_nowait(job)
        self._metrics.delivery_queue_depth.set(self._queue.qsize())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"delivery-{i}") for i in range(self._workers)]

    async def drain(self, within: float) -> bool:
        """Wait until every queued job is done; False if ``within`` seconds ran out first."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        # Workers idle on the in-process queue here (drain came first), where
        # cancellation is prompt; the wait is bounded all the same.
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.deliver(job)
            except Exception:
                log.exception("delivery_crashed", message_id=job.message_id)
            finally:
                self._queue.task_done()
                self._metrics.delivery_queue_depth.set(self._queue.qsize())

    async def _finish(self, job: Job, events: list[TimelineEntry], status: str, settle: Commit | Release) -> None:
        """Record the outcome and settle the cap reservation: committed on delivery,
        given back when nothing was sent."""
        policy = self._policies.current
        try:
            await self._store.apply(job.claim.user_id, None, [settle], self._clock.now(), retention(policy))
        except HeraldError as exc:
            self._metrics.store_errors.labels("apply").inc()
            log.error("reservation_settle_failed", message_id=job.message_id, error=exc.message)
        final = None
        if isinstance(settle, Release):
            reason = Reason.KILL_SWITCH if status == "suppressed" else Reason.EXPIRED if status == "expired" else None
            final = Final(Outcome.SUPPRESSED, reason, events[-1].detail) if reason else None
        try:
            await self._store.add_events(job.message_id, events, status, policy.defaults.message_retention, final)
        except HeraldError as exc:
            self._metrics.store_errors.labels("add_events").inc()
            log.error("timeline_write_failed", message_id=job.message_id, error=exc.message)

    async def deliver(self, job: Job) -> None:
        policy = self._policies.current
        claim = job.claim
        now = self._clock.now()
        release = Release(job.message_id)
        switches = self._switches.current()
        switch = blocking_switch(
            switches,
            now=now,
            category=str(claim.category),
            bu=claim.bu,
            scenario=claim.scenario,
            campaign_id=claim.campaign_id,
        )
        if switch is not None:
            await self._finish(job, [TimelineEntry(now, "killed", detail=switch.describe())], "suppressed", release)
            return
        if claim.deadline is not None and claim.deadline <= now:
            await self._finish(
                job, [TimelineEntry(now, "expired", detail="deadline passed before sending")], "expired", release
            )
            return
        scenario = policy.scenarios.get(claim.scenario)
        if scenario is None:
            await self._finish(
                job,
                [TimelineEntry(now, "failed", detail=f"scenario '{claim.scenario}' no longer exists in policy")],
                "failed",
                release,
            )
            return
        killed = killed_channels(switches, now)
        events: list[TimelineEntry] = []
        for index, channel in enumerate(job.plan):
            if channel in killed:
                events.append(TimelineEntry(self._clock.now(), "skipped", channel, detail=killed[channel].describe()))
                continue
            adapter = self._adapter_for(channel)
            delivery = Delivery(
                delivery_id=f"{job.message_id}.{channel.value.lower()}",
                message_id=job.message_id,
                channel=channel,
                category=claim.category,
                scenario=claim.scenario,
                user_id=claim.user_id,
                recipient=recipient_for(channel, job.profile),
                payload=render(scenario, channel, claim.params, claim.content),
            )
            result = await adapter.send(delivery)
            self._metrics.sends.labels(str(channel), adapter.name, str(result.status)).inc()
            log.info(
                "send",
                message_id=job.message_id,
                bu=claim.bu,
                channel=str(channel),
                provider=adapter.name,
                result=str(result.status),
                code=result.code,
            )
            at = self._clock.now()
            if result.status is SendStatus.DELIVERED:
                events.append(TimelineEntry(at, "delivered", channel, result.code, result.detail))
                await self._finish(job, events, "delivered", Commit(job.message_id, channel))
                return
            events.append(TimelineEntry(at, "failed", channel, result.code, result.detail))
            if result.status is SendStatus.FAILED:
                await self._finish(job, events, "failed", release)
                return
            if index + 1 < len(job.plan):
                events.append(TimelineEntry(at, "fallback", job.plan[index + 1], detail=f"after {channel}"))
        events.append(TimelineEntry(self._clock.now(), "failed", detail="no channel of the plan delivered"))
        await self._finish(job, events, "failed", release)
