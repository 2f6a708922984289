"""The dispatcher: takes jobs from the delivery queue and walks each one's channel plan.

For each channel, right before each send: the kill switch and the deadline again, the
user still reachable there (a provider may have said otherwise since the decision),
the provider's breaker, its shared rate limit and its concurrency limit. A passing
fault is retried with backoff (a provider's Retry-After honoured, never past the
deadline); a channel that cannot reach the user passes the job to the next one. What
a provider says about the user updates the profile. The cap reservation is committed
on delivery and given back when nothing went out; a job no channel delivered goes to
the dead letters with its reason. Every step lands in the message's timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from channels.base import ChannelAdapter, Delivery, SendResult, SendStatus, UserFact
from gateway.autostop import AutoStop
from gateway.clock import Clock
from gateway.core.caps import retention
from gateway.core.killswitch import blocking_switch, killed_channels
from gateway.core.render import render
from gateway.core.route import reachable
from gateway.core.state import Commit, Release
from gateway.core.users import Users
from gateway.delivery.breaker import Breaker
from gateway.delivery.jobs import Job
from gateway.delivery.queue import DeliveryQueue, Lease
from gateway.delivery.retry import backoff
from gateway.domain import Channel, Outcome, PushProvider, Reason
from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.profiles import UserProfile
from gateway.store import keys
from gateway.store.base import Store
from gateway.store.records import Final, TimelineEntry

log = get_logger(__name__)
MAX_ATTEMPTS = 3  # per channel
# A provider asking for a longer pause than this is treated as unavailable for now:
# the job takes the next channel instead of holding its queue entry.
MAX_RETRY_WAIT = 10.0
RECEIPT_WINDOW = timedelta(days=3)


# What counts against a campaign for auto-stop: the user turned this sender away.
BLOCKED = frozenset({UserFact.UNFOLLOWED, UserFact.SMS_OPTED_OUT, UserFact.REFUSED_TEMPLATE})


def recipient_for(channel: Channel, profile: UserProfile) -> str:
    if channel in (Channel.WECHAT_TEMPLATE, Channel.WECHAT_CS, Channel.WECHAT_MASS):
        return profile.wechat.openid if profile.wechat else ""
    if channel is Channel.SMS:
        return profile.phone
    if channel is Channel.EMAIL:
        return profile.email
    return profile.device_tokens[0].token if profile.device_tokens else ""


@dataclass
class _Provider:
    breaker: Breaker
    slots: asyncio.Semaphore
    limit: int


@dataclass
class _Walk:
    events: list[TimelineEntry] = field(default_factory=list)
    last: SendResult | None = None


class Dispatcher:
    def __init__(
        self,
        queue: DeliveryQueue,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        adapter_for: Callable[[Channel, PushProvider | None], ChannelAdapter],
        users: Users,
        clock: Clock,
        metrics: Metrics,
        in_flight: int = 512,
        auto_stop: AutoStop | None = None,
    ) -> None:
        self.queue = queue
        self._store = store
        self._policies = policies
        self._switches = switches
        self._adapter_for = adapter_for
        self._users = users
        self._clock = clock
        self._metrics = metrics
        # Deliveries working at once in this process (a job waiting in a provider's
        # batch gives its slot back meanwhile).
        self._slots = asyncio.Semaphore(in_flight)
        self._providers: dict[str, _Provider] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._auto_stop = auto_stop

    # --- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._runner = asyncio.create_task(self._run(), name="dispatcher")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            taken = 1
            while taken < 500 and not self._slots.locked():
                await self._slots.acquire()
                taken += 1
            try:
                leases = await self.queue.take(taken, 0.2)
            except HeraldError as exc:
                leases = []
                self._metrics.store_errors.labels("delivery_take").inc()
                log.error("delivery_queue_unavailable", error=exc.message)
                await asyncio.sleep(1.0)
            for _ in range(taken - len(leases)):
                self._slots.release()
            for lease in leases:
                task = asyncio.create_task(self._handle(lease))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _handle(self, lease: Lease) -> None:
        # This task's own context: every log line of the delivery carries these.
        structlog.contextvars.bind_contextvars(message_id=lease.job.message_id, bu=lease.job.claim.bu)
        try:
            settled = await self.deliver(lease)
        except HeraldError as exc:
            # The store did not answer mid-delivery: leave the entry un-acked; it is
            # taken again (the provider's dedup id makes a repeat harmless).
            self._metrics.store_errors.labels("delivery").inc()
            log.error("delivery_interrupted", message_id=lease.job.message_id, error=exc.message)
            return
        except Exception:
            log.exception("delivery_crashed", message_id=lease.job.message_id)
            settled = False
        finally:
            self._slots.release()
        if settled:  # dead-lettered or parked: already out of the queue
            return
        try:
            await self.queue.ack(lease)
        except HeraldError as exc:
            # Delivered but not acked: another worker takes it again after the reclaim
            # time, and the provider's dedup id keeps the user from a second copy.
            self._metrics.store_errors.labels("delivery_ack").inc()
            log.error("delivery_ack_failed", message_id=lease.job.message_id, error=exc.message)

    async def drain(self, within: float) -> bool:
        """Wait until the queue is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if not self._tasks and await self.queue.depth() == 0:
                    return True
            except HeraldError:
                return False
            await asyncio.sleep(0.002)
        return False

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking jobs; let those in flight finish within ``grace`` seconds."""
        self._stopping.set()
        if self._runner is not None:
            await asyncio.wait([self._runner], timeout=grace)
            if not self._runner.done():
                self._runner.cancel()
            self._runner = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in list(self._tasks):
            task.cancel()

    # --- one job -------------------------------------------------------------------
    def _provider(self, adapter: ChannelAdapter) -> _Provider:
        state = self._providers.get(adapter.name)
        config = self._policies.current.providers.get(adapter.name)
        limit = config.concurrency if config is not None else 64
        if state is None or state.limit != limit:
            breaker = state.breaker if state else Breaker()
            if config is not None:
                breaker.threshold, breaker.cool_down = config.breaker_faults, config.breaker_cool_down
            state = self._providers[adapter.name] = _Provider(breaker, asyncio.Semaphore(limit), limit)
        return state

    def down_channels(self) -> frozenset[Channel]:
        """Channels whose provider's breaker is open here (the router tries them last)."""
        policy = self._policies.current
        now = time.monotonic()
        # Once the cool-down is over the provider is up for a probe: routed normally again,
        # or traffic would never go back to it.
        open_providers = {name for name, p in self._providers.items() if p.breaker.resting(now)}
        if not open_providers:
            return frozenset()
        return frozenset(c for c, settings in policy.channels.items() if settings.provider in open_providers)

    def breaker_states(self) -> dict[str, int]:
        return {name: int(p.breaker.state) for name, p in self._providers.items()}

    async def _finish(
        self,
        job: Job,
        events: list[TimelineEntry],
        status: str,
        settle: Commit | Release,
        reason: Reason | None = None,
    ) -> None:
        """Record the outcome (``reason``: it ends suppressed for that reason) and settle
        the cap reservation. What was sent is sent: a store fault here is logged and
        counted, not a reason to send again."""
        policy = self._policies.current
        try:
            await self._store.apply(job.claim.user_id, None, [settle], self._clock.now(), retention(policy))
        except HeraldError as exc:
            self._metrics.store_errors.labels("apply").inc()
            log.error("reservation_settle_failed", message_id=job.message_id, error=exc.message)
        final = None if reason is None else Final(Outcome.SUPPRESSED, reason, events[-1].detail)
        try:
            await self._store.add_events(job.message_id, events, status, policy.defaults.message_retention, final)
        except HeraldError as exc:
            self._metrics.store_errors.labels("add_events").inc()
            log.error("timeline_write_failed", message_id=job.message_id, error=exc.message)

    async def _profile(self, job: Job) -> UserProfile | None:
        try:
            return await self._store.get_user(job.claim.user_id) or job.profile
        except HeraldError:
            if job.profile is None:
                raise
            return job.profile

    async def deliver(self, lease: Lease) -> bool:
        """Deliver one job; True when its lease was settled on the way (dead-lettered or
        parked), so it needs no ack."""
        job = lease.job
        policy = self._policies.current
        claim = job.claim
        now = self._clock.now()
        release = Release(job.message_id)
        if job.queued_at is not None:
            self._metrics.queue_seconds.observe(max(0.0, (now - job.queued_at).total_seconds()))
        stop = self._stopped(job)
        if stop is not None:
            return await self._stop(lease, [], stop)
        scenario = policy.scenarios.get(claim.scenario)
        profile = await self._profile(job)
        if scenario is None or profile is None:
            why = (
                f"scenario '{claim.scenario}' no longer exists in policy"
                if scenario is None
                else f"user '{claim.user_id}' no longer exists"
            )
            await self._finish(job, [TimelineEntry(now, "failed", detail=why)], "failed", release)
            return await self._dead(lease, why)
        walk = _Walk()
        for index, channel in enumerate(job.plan):
            if index > 0 and walk.last is not None:
                walk.events.append(
                    TimelineEntry(self._clock.now(), "fallback", channel, detail=f"after {job.plan[index - 1]}")
                )
                self._metrics.fallbacks.labels(str(job.plan[index - 1]), str(channel)).inc()
            # Checked again before every channel after the first (that one was checked
            # above, before reading the user).
            stop = self._stopped(job) if index > 0 else None
            if stop is not None:
                return await self._stop(lease, walk.events, stop)
            unusable = self._unusable(channel, profile)
            if unusable is not None:
                walk.events.append(TimelineEntry(self._clock.now(), "skipped", channel, detail=unusable))
                walk.last = None
                continue
            device = (
                profile.device_tokens[0].provider if channel is Channel.APP_PUSH and profile.device_tokens else None
            )
            adapter = self._adapter_for(channel, device)
            delivery = Delivery(
                delivery_id=f"{job.message_id}.{channel.value.lower()}",
                message_id=job.message_id,
                channel=channel,
                category=claim.category,
                scenario=claim.scenario,
                user_id=claim.user_id,
                campaign_id=claim.campaign_id,
                device=device,
                recipient=recipient_for(channel, profile),
                payload=render(scenario, channel, claim.params, claim.content),
            )
            result = await self._try_channel(job, adapter, delivery, walk)
            walk.last = result
            if result is None:  # breaker open
                continue
            if result.fact is not None:
                profile = await self._learn(profile, result.fact, channel, delivery.recipient)
            if self._auto_stop is not None and result.status is not SendStatus.RETRY:
                await self._auto_stop.record(claim, result.fact in BLOCKED)
            if result.status is SendStatus.DELIVERED:
                await self._remember_for_receipts(job, channel, result)
                walk.events.append(
                    TimelineEntry(self._clock.now(), "delivered", channel, result.code, _with_id(result))
                )
                await self._finish(job, walk.events, "delivered", Commit(job.message_id, channel))
                return False
            if result.status is SendStatus.FAILED:
                await self._finish(job, walk.events, "failed", release)
                return await self._dead(lease, f"{channel} {result.code}: {result.detail}")
        reason = "no channel of the plan delivered"
        if walk.last is not None:
            reason += f" (last: {walk.last.code} {walk.last.detail})"
        walk.events.append(TimelineEntry(self._clock.now(), "failed", detail=reason))
        await self._finish(job, walk.events, "failed", release)
        return await self._dead(lease, reason)

    def _keep_until(self, job: Job) -> datetime:
        """How long a job a kill switch stopped is kept: its deadline, or the policy's
        longest hold after it was queued."""
        if job.claim.deadline is not None:
            return job.claim.deadline
        start = job.queued_at or self._clock.now()
        return start + self._policies.current.defaults.max_hold

    async def _stop(self, lease: Lease, events: list[TimelineEntry], stop: tuple[TimelineEntry, str]) -> bool:
        """A kill switch keeps the job (parked, sent if cleared before its deadline);
        a passed deadline ends it. True when the job was parked."""
        job = lease.job
        entry, status = stop
        if status == "suppressed":
            until = self._keep_until(job)
            if until > self._clock.now():
                events.append(
                    TimelineEntry(
                        entry.at, "held", detail=f"{entry.detail}; kept until cleared or {until:%Y-%m-%d %H:%M} UTC"
                    )
                )
                # Timeline first: a crash in between leaves the job in the queue, to be
                # parked again, never parked without its 'held' entry.
                await self._store.add_events(
                    job.message_id, events, "held", self._policies.current.defaults.message_retention
                )
                await self.queue.park(job, until, lease)
                return True
        events.append(entry)
        reason = Reason.KILL_SWITCH if status == "suppressed" else Reason.EXPIRED
        await self._finish(job, events, status, Release(job.message_id), reason)
        return False

    async def sweep_parked(self, everything: bool) -> int:
        """Look at the kept jobs again: every one after the switches changed, else only
        those whose time ran out. Returns how many were sent back or ended."""
        now = self._clock.now()
        handled = 0
        while True:
            batch = await self.queue.unpark(None if everything else now, 1000)
            for job, until in batch:
                stop = self._stopped(job)
                if until <= now:
                    detail = "kept while a kill switch stopped it; its deadline passed"
                    if stop is not None:
                        detail = f"{stop[0].detail}; kept until {until:%Y-%m-%d %H:%M} UTC and ended"
                    ended = [TimelineEntry(now, "expired", detail=detail)]
                    await self._finish(job, ended, "expired", Release(job.message_id), Reason.KILL_SWITCH)
                    handled += 1
                elif stop is not None and stop[1] == "suppressed":
                    await self.queue.park(job, until)
                else:
                    await self._store.add_events(
                        job.message_id,
                        [TimelineEntry(now, "resumed", detail="kill switch cleared: sent again")],
                        "queued",
                        self._policies.current.defaults.message_retention,
                    )
                    await self.queue.put(job)
                    handled += 1
            if len(batch) < 1000 or not everything:
                return handled

    async def watch_parked(self, stopping: asyncio.Event, interval: float = 0.5, full_every: float = 30.0) -> None:
        """Sweep the kept jobs: all of them when the switches change (and now and then),
        the expired ones every ``interval``."""
        seen = self._switches.generation
        last_full = time.monotonic()
        while not stopping.is_set():
            everything = self._switches.generation != seen or time.monotonic() - last_full > full_every
            try:
                await self.sweep_parked(everything)
                if everything:
                    seen, last_full = self._switches.generation, time.monotonic()
            except HeraldError as exc:
                log.warning("loop_step_failed", loop="parked", error=exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    def _stopped(self, job: Job) -> tuple[TimelineEntry, str] | None:
        """A kill switch or the deadline, checked again right before each send."""
        claim = job.claim
        now = self._clock.now()
        switch = blocking_switch(
            self._switches.current(),
            now=now,
            category=str(claim.category),
            bu=claim.bu,
            scenario=claim.scenario,
            campaign_id=claim.campaign_id,
        )
        if switch is not None:
            return TimelineEntry(now, "killed", detail=switch.describe()), "suppressed"
        if claim.deadline is not None and claim.deadline <= now:
            return TimelineEntry(now, "expired", detail="deadline passed before sending"), "expired"
        return None

    def _unusable(self, channel: Channel, profile: UserProfile) -> str | None:
        killed = killed_channels(self._switches.current(), self._clock.now())
        if channel in killed:
            return killed[channel].describe()
        skip = reachable(channel, profile, self._policies.current, self._clock.now())
        return None if skip is None else "user " + str(skip).replace("_", " ")

    async def _try_channel(
        self, job: Job, adapter: ChannelAdapter, delivery: Delivery, walk: _Walk
    ) -> SendResult | None:
        provider = self._provider(adapter)
        channel = delivery.channel
        result: SendResult | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if not provider.breaker.allow(time.monotonic()):
                walk.events.append(
                    TimelineEntry(self._clock.now(), "skipped", channel, detail=f"provider {adapter.name} breaker open")
                )
                self._metrics.breaker_skips.labels(adapter.name).inc()
                return result
            started = time.monotonic()
            if channel in getattr(adapter, "batched", frozenset()):
                # Joins a batch that goes out as one call: neither a provider slot
                # nor a token per user, and this job's own slot is free meanwhile
                # (otherwise the waiting batch would hold every slot).
                self._slots.release()
                try:
                    result = await adapter.send(delivery)
                finally:
                    await self._slots.acquire()
            else:
                await self._rate_limit(adapter.name)
                async with provider.slots:
                    self._metrics.provider_wait_seconds.labels(adapter.name).observe(time.monotonic() - started)
                    started = time.monotonic()
                    result = await adapter.send(delivery)
            self._metrics.send_seconds.labels(str(channel)).observe(time.monotonic() - started)
            self._record(job, adapter, delivery, result, attempt)
            if result.status is SendStatus.RETRY or result.trip:
                provider.breaker.fault(time.monotonic(), trip=result.trip)
            else:
                provider.breaker.success()
            if result.status is not SendStatus.DELIVERED:
                walk.events.append(TimelineEntry(self._clock.now(), "attempt", channel, result.code, result.detail))
            if result.status is not SendStatus.RETRY:
                return result
            if attempt == MAX_ATTEMPTS:
                break
            wait = backoff(attempt, result.retry_after)
            deadline = job.claim.deadline
            if wait > MAX_RETRY_WAIT or (
                deadline is not None and (deadline - self._clock.now()).total_seconds() <= wait
            ):
                break
            self._metrics.retries.labels(str(channel)).inc()
            await asyncio.sleep(wait)
        return result

    async def _rate_limit(self, provider: str) -> None:
        config = self._policies.current.providers.get(provider)
        if config is None or config.rate is None:
            return
        burst = config.burst or max(1, int(config.rate))
        while True:
            wait = await self._store.take_token(f"provider:{provider}", config.rate, burst, self._clock.now())
            if wait <= 0:
                return
            self._metrics.rate_limit_waits.labels(provider).inc()
            await asyncio.sleep(wait)

    def _record(self, job: Job, adapter: ChannelAdapter, delivery: Delivery, result: SendResult, attempt: int) -> None:
        self._metrics.sends.labels(str(delivery.channel), adapter.name, str(result.status)).inc()
        log.info(
            "send",
            message_id=job.message_id,
            bu=job.claim.bu,
            channel=str(delivery.channel),
            provider=adapter.name,
            attempt=attempt,
            result=str(result.status),
            code=result.code,
        )

    async def _learn(self, profile: UserProfile, fact: UserFact, channel: Channel, recipient: str) -> UserProfile:
        """Update the user from what a provider said (43004: no longer following...)."""
        try:
            updated = await self._users.apply_fact(profile, fact, recipient)
        except HeraldError as exc:
            self._metrics.store_errors.labels("apply_fact").inc()
            log.error("user_update_failed", user_id=profile.user_id, fact=str(fact), error=exc.message)
            return profile
        if updated is profile:  # nothing to keep (43101 says nothing about the profile)
            return profile
        self._metrics.user_facts.labels(str(fact)).inc()
        log.info("user_updated_from_provider", user_id=profile.user_id, fact=str(fact), channel=str(channel))
        return updated

    async def _remember_for_receipts(self, job: Job, channel: Channel, result: SendResult) -> None:
        """WeChat's job report names only its msgid: keep which message that was."""
        if channel is not Channel.WECHAT_TEMPLATE or not result.provider_id:
            return
        try:
            await self._store.shared_put(
                keys.wechat_message(result.provider_id), f"{job.message_id} {job.claim.user_id}", RECEIPT_WINDOW
            )
        except HeraldError as exc:
            self._metrics.store_errors.labels("shared_put").inc()
            log.error("receipt_link_failed", message_id=job.message_id, error=exc.message)

    async def _dead(self, lease: Lease, reason: str) -> bool:
        """Dead-letter the job (which settles its lease): True, for ``deliver``."""
        await self.queue.dead(lease, reason, self._clock.now())
        self._metrics.dead_letters.labels(str(lease.job.plan[0]) if lease.job.plan else "none").inc()
        return True


def _with_id(result: SendResult) -> str:
    return f"{result.detail} (id {result.provider_id})" if result.provider_id else result.detail
