"""One delivery: the walk along a job's channel plan, ending in one ``Settlement``.

Right before each send: the kill switch and the deadline again, the user still
reachable on the channel (a provider may have said otherwise since the decision), the
provider's breaker, its shared rate limit and its slots (per lane). What to do after
each try is ``plan.judge`` and ``plan.next_move``. What a provider says about the user
updates the profile. The walk returns how the delivery ends: delivered (the
reservation committed), failed or expired (given back; dead-lettered with the reason),
waiting for a provider (put back in the queue for later), or kept by a kill switch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from channels.base import ChannelAdapter, Delivery, SendResult, SendStatus, UserFact
from gateway.autostop import AutoStop
from gateway.clock import Clock
from gateway.core.killswitch import blocking_switch, killed_channels
from gateway.core.render import render
from gateway.core.route import reachable
from gateway.core.users import Users
from gateway.core.validate import is_web_link
from gateway.delivery.cancelled import CancelledCampaigns
from gateway.delivery.plan import INLINE_WAIT, Act, Judged, Move, Verdict, end_of_plan, judge, next_move
from gateway.delivery.providers import Providers, ProviderState, lease_size
from gateway.delivery.retry import backoff
from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.links import LinkMaker, tracked
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store import keys
from gateway.store.base import Lease, Remember, Settlement, Store, Then, UserView
from gateway.values.domain import Category, Channel, Outcome, PushProvider, Reason
from gateway.values.jobs import Job
from gateway.values.profiles import UserProfile
from gateway.values.records import Current, TimelineEntry
from gateway.values.state import Commit, Release

log = get_logger(__name__)
RECEIPT_WINDOW = timedelta(days=3)
# Short waits (a probe in flight, a backoff) spent in place before the job goes back to
# the queue for later.
INLINE_WAITS = 3

# What counts against a campaign for auto-stop: the user turned this sender away.
BLOCKED = frozenset({UserFact.UNFOLLOWED, UserFact.SMS_OPTED_OUT, UserFact.REFUSED_TEMPLATE})

Lend = Callable[[], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _nothing_lent() -> AsyncIterator[None]:
    yield


def recipient_for(channel: Channel, profile: UserProfile) -> str:
    if channel in (Channel.WECHAT_TEMPLATE, Channel.WECHAT_CS, Channel.WECHAT_MASS):
        return profile.wechat.openid if profile.wechat else ""
    if channel is Channel.SMS:
        return profile.phone
    if channel is Channel.EMAIL:
        return profile.email
    return profile.device_tokens[0].token if profile.device_tokens else ""


@dataclass(frozen=True)
class Stop:
    kind: str  # "killed" | "expired"
    detail: str
    at: datetime


def stopped(job: Job, switches: KillSwitches, clock: Clock) -> Stop | None:
    """A kill switch or the deadline, checked again right before each send."""
    claim = job.claim
    now = clock.now()
    switch = blocking_switch(
        switches.current(),
        now=now,
        category=claim.category.value,
        bu=claim.bu,
        scenario=claim.scenario,
        campaign_id=claim.campaign_id,
    )
    if switch is not None:
        return Stop("killed", switch.describe(), now)
    if claim.deadline is not None and claim.deadline <= now:
        return Stop("expired", "deadline passed before sending", now)
    return None


class Walk:
    def __init__(
        self,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        adapter_for: Callable[[Channel, PushProvider | None], ChannelAdapter],
        users: Users,
        clock: Clock,
        metrics: Metrics,
        providers: Providers,
        auto_stop: AutoStop | None,
    ) -> None:
        self._store = store
        self._policies = policies
        self._switches = switches
        self._adapter_for = adapter_for
        self._users = users
        self._clock = clock
        self._metrics = metrics
        self._providers = providers
        self._auto_stop = auto_stop
        self._campaigns = CancelledCampaigns(store)
        # Campaign messages' links become tracked redirects once the gateway has a key.
        self.link_for: LinkMaker | None = None

    def _limit(self, job: Job) -> datetime:
        """The latest this job may still be sent: its deadline, or the policy's longest
        hold after it was decided."""
        if job.claim.deadline is not None:
            return job.claim.deadline
        return (job.queued_at or self._clock.now()) + self._policies.current.defaults.max_hold

    def _left(self, job: Job) -> float:
        return (self._limit(job) - self._clock.now()).total_seconds()

    # --- endings -----------------------------------------------------------------------
    def _end(
        self, lease: Lease, events: list[TimelineEntry], status: str, detail: str, reason: Reason | None = None
    ) -> Settlement:
        """Failed, expired, killed or cancelled: the reservation given back; failures and
        expiries of a delivery that went nowhere are dead-lettered with their reason."""
        now = self._clock.now()
        events.append(TimelineEntry(now, status, detail=detail))
        outcome = Outcome.ACCEPTED if reason is None else Outcome.SUPPRESSED
        then = Then.DONE if reason in (Reason.KILL_SWITCH, Reason.CANCELLED) else Then.DEAD
        if status == "expired" and not any(e.kind == "attempt" for e in events):
            then = Then.DONE  # the deadline passed before anything was tried
        return Settlement(
            lease.job,
            then,
            lease=lease,
            settle=Release(lease.job.message_id),
            events=tuple(events),
            current=Current(status, outcome, reason, detail),
            why=detail,
        )

    def _stop(self, lease: Lease, events: list[TimelineEntry], stop: Stop) -> Settlement:
        """A kill switch keeps the job (parked, sent if cleared before its deadline); a
        passed deadline ends it."""
        if stop.kind == "killed":
            until = self._limit(lease.job)
            if until > stop.at:
                detail = f"{stop.detail}; kept until cleared or {until:%Y-%m-%d %H:%M} UTC"
                events.append(TimelineEntry(stop.at, "held", detail=detail))
                return Settlement(
                    lease.job,
                    Then.PARK,
                    lease=lease,
                    events=tuple(events),
                    current=Current("held", Outcome.ACCEPTED, None, detail, until),
                    until=until,
                    why=stop.detail,
                )
            return self._end(lease, events, "suppressed", stop.detail, Reason.KILL_SWITCH)
        return self._end(lease, events, "expired", stop.detail, Reason.EXPIRED)

    def _wait(self, lease: Lease, events: list[TimelineEntry], seconds: float, why: str) -> Settlement:
        until = self._clock.now() + timedelta(seconds=seconds)
        detail = f"{why}; tried again {until:%Y-%m-%d %H:%M:%S} UTC"
        events.append(TimelineEntry(self._clock.now(), "waiting", detail=detail))
        job = msgspec.structs.replace(lease.job, waits=lease.job.waits + 1)
        return Settlement(
            job,
            Then.WAIT,
            lease=lease,
            events=tuple(events),
            current=Current("waiting", Outcome.ACCEPTED, None, detail, until),
            until=until,
            why=why,
        )

    def crashed(self, lease: Lease) -> Settlement:
        return self._end(lease, [], "failed", "the delivery crashed; the gateway logged the details")

    def _payload(self, job: Job, channel: Channel, locale: str) -> dict[str, Any]:
        """What the channel sends, in the user's ``locale`` when the scenario has content
        for it."""
        claim = job.claim
        link_for = self.link_for
        if not claim.campaign_id or link_for is None:
            return render(self._policies.current, claim.scenario, channel, claim.params, claim.content, locale)
        # A campaign's links are tracked: the free-text URL wherever the template puts
        # it (text and HTML too), and the template's own link fields.
        content = claim.content
        if content is not None and is_web_link(content.url):
            content = msgspec.structs.replace(content, url=link_for(job, content.url))
        payload = render(self._policies.current, claim.scenario, channel, claim.params, content, locale)
        return tracked(payload, lambda url: link_for(job, url))

    # --- the walk ------------------------------------------------------------------------
    async def _profile(self, job: Job, view: UserView | None) -> UserProfile | None:
        if view is not None:
            return view.profile
        return await self._store.get_user(job.claim.user_id)

    async def deliver(self, lease: Lease, view: UserView | None, lend: Lend = _nothing_lent) -> Settlement:
        job = lease.job
        if job.queued_at is not None and lease.deliveries == 1 and job.waits == 0:
            self._metrics.queue_seconds.observe(max(0.0, (self._clock.now() - job.queued_at).total_seconds()))
        events: list[TimelineEntry] = []
        why = ""
        for _ in range(INLINE_WAITS + 1):
            stop = stopped(job, self._switches, self._clock)
            if stop is not None:
                return self._stop(lease, events, stop)
            cid = job.claim.campaign_id
            if cid and await self._campaigns.cancelled(cid):
                return self._end(lease, events, "suppressed", f"campaign '{cid}' was cancelled", Reason.CANCELLED)
            scenario = self._policies.current.scenarios.get(job.claim.scenario)
            profile = await self._profile(job, view)
            if scenario is None or profile is None:
                why = (
                    f"scenario '{job.claim.scenario}' no longer exists in policy"
                    if scenario is None
                    # Not named: this lands in the timeline, and the user may have been erased.
                    else "the user no longer exists (erased, or the profile expired)"
                )
                return self._end(lease, events, "failed", why)
            ended, wait, why = await self._along(lease, profile, events, lend)
            if ended is not None:
                return ended
            if wait > INLINE_WAIT:
                return self._wait(lease, events, wait, why)
            await asyncio.sleep(wait)
            view = None  # read the user afresh after a wait
        return self._wait(lease, events, INLINE_WAIT, why)

    async def _along(
        self, lease: Lease, profile: UserProfile, events: list[TimelineEntry], lend: Lend
    ) -> tuple[Settlement | None, float, str]:
        """Walk the plan once: a settlement, or how long to wait before walking it again
        and why."""
        job = lease.job
        claim = job.claim
        down_waits: list[float] = []
        why = ""
        last: SendResult | None = None
        for index, channel in enumerate(job.plan):
            has_next = index + 1 < len(job.plan)
            if index > 0:
                stop = stopped(job, self._switches, self._clock)
                if stop is not None:
                    return self._stop(lease, events, stop), 0, ""
            unusable = self._unusable(channel, profile)
            if unusable is not None:
                events.append(TimelineEntry(self._clock.now(), "skipped", channel, detail=unusable))
                continue
            device = (
                profile.device_tokens[0].provider if channel is Channel.APP_PUSH and profile.device_tokens else None
            )
            adapter = self._adapter_for(channel, device)
            provider = self._providers.state(adapter.name)
            delivery = Delivery(
                delivery_id=f"{job.message_id}.{channel.value.lower()}",
                message_id=job.message_id,
                channel=channel,
                category=claim.category,
                scenario=claim.scenario,
                user_id=claim.user_id,
                campaign_id=claim.campaign_id,
                variant=claim.variant,
                device=device,
                recipient=recipient_for(channel, profile),
                payload=self._payload(job, channel, profile.locale),
            )
            move, judged, result, profile = await self._on_channel(
                job, adapter, provider, delivery, profile, events, lend, has_next, down_waits
            )
            last = result or last
            if judged.verdict is Verdict.DOWN:
                down_waits.append(judged.wait)
                why = f"{adapter.name} unavailable ({'breaker open' if result is None else result.code})"
            if move.act is Act.FINISH_DELIVERED:
                assert result is not None
                events.append(TimelineEntry(self._clock.now(), "delivered", channel, result.code, _with_id(result)))
                detail = f"delivered via {channel}"
                return (
                    Settlement(
                        job,
                        Then.DONE,
                        lease=lease,
                        settle=Commit(job.message_id, channel),
                        events=tuple(events),
                        current=Current("delivered", Outcome.ACCEPTED, None, detail),
                        remember=_for_receipts(job, channel, result),
                    ),
                    0,
                    "",
                )
            if move.act is Act.FINISH_FAILED:
                detail = f"{channel} {last.code}: {last.detail}" if judged.verdict is Verdict.WRONG and last else ""
                return self._end(lease, events, "failed", detail or self._no_channel(last)), 0, ""
            if move.act is Act.FINISH_EXPIRED:
                return self._end(lease, events, "expired", f"{why} until the deadline", Reason.EXPIRED), 0, ""
            if move.act is Act.WAIT:
                return None, move.wait, why
            # NEXT: the next channel of the plan
            if has_next:
                nxt = job.plan[index + 1]
                events.append(TimelineEntry(self._clock.now(), "fallback", nxt, detail=f"after {channel}"))
                self._metrics.fallbacks.labels(channel.value, nxt.value).inc()
        move = end_of_plan(down_waits, self._left(job))
        if move.act is Act.WAIT:
            return None, move.wait, why
        if move.act is Act.FINISH_EXPIRED:
            return self._end(lease, events, "expired", f"{why} until the deadline", Reason.EXPIRED), 0, ""
        return self._end(lease, events, "failed", self._no_channel(last)), 0, ""

    async def _on_channel(
        self,
        job: Job,
        adapter: ChannelAdapter,
        provider: ProviderState,
        delivery: Delivery,
        profile: UserProfile,
        events: list[TimelineEntry],
        lend: Lend,
        has_next: bool,
        down_waits: list[float],
    ) -> tuple[Move, Judged, SendResult | None, UserProfile]:
        """Try one channel until it gives a verdict other than "again"."""
        claim = job.claim
        attempt = 0
        while True:
            judged, result = await self._try(job, adapter, provider, delivery, attempt, events, lend)
            if result is not None:
                attempt += 1
                if result.fact is not None:
                    profile = await self._learn(profile, result.fact, delivery.channel, delivery.recipient)
                if self._auto_stop is not None and result.status is not SendStatus.RETRY:
                    await self._auto_stop.record(claim, result.fact in BLOCKED)
            move = next_move(claim.category, judged, has_next, down_waits, self._left(job))
            if move.act is not Act.AGAIN:
                return move, judged, result, profile
            self._metrics.retries.labels(delivery.channel.value).inc()
            await asyncio.sleep(move.wait)

    @staticmethod
    def _no_channel(last: SendResult | None) -> str:
        reason = "no channel of the plan delivered"
        if last is not None:
            reason += f" (last: {last.code} {last.detail})"
        return reason

    def _unusable(self, channel: Channel, profile: UserProfile) -> str | None:
        killed = killed_channels(self._switches.current(), self._clock.now())
        if channel in killed:
            return killed[channel].describe()
        skip = reachable(channel, profile, self._policies.current, self._clock.now())
        return None if skip is None else "user " + str(skip).replace("_", " ")

    async def _try(
        self,
        job: Job,
        adapter: ChannelAdapter,
        provider: ProviderState,
        delivery: Delivery,
        attempt: int,
        events: list[TimelineEntry],
        lend: Lend,
    ) -> tuple[Judged, SendResult | None]:
        """One try on a channel: the breaker's refusal (no result), or the provider's
        answer judged."""
        channel = delivery.channel
        now = time.monotonic()
        wait = provider.breaker.wait(now)
        if wait > 0 or not provider.breaker.allow(now):
            wait = wait or provider.breaker.wait(now) or 1.0
            events.append(
                TimelineEntry(
                    self._clock.now(), "skipped", channel, detail=f"provider {adapter.name} unavailable (breaker open)"
                )
            )
            self._metrics.breaker_skips.labels(adapter.name).inc()
            return Judged(Verdict.DOWN, wait), None
        result = await self._send(job, adapter, provider, delivery, lend)
        if result.status is SendStatus.RETRY or result.trip:
            provider.breaker.fault(time.monotonic(), trip=result.trip)
        else:
            provider.breaker.success()
        if result.status is not SendStatus.DELIVERED:
            events.append(TimelineEntry(self._clock.now(), "attempt", channel, result.code, result.detail))
        pause = backoff(attempt + 1, result.retry_after)
        return judge(result, attempt + 1, pause, self._left(job)), result

    async def _send(
        self, job: Job, adapter: ChannelAdapter, provider: ProviderState, delivery: Delivery, lend: Lend
    ) -> SendResult:
        channel = delivery.channel
        started = time.monotonic()
        if channel in getattr(adapter, "batched", ()):
            # Joins a batch that goes out as one call: neither a provider slot nor a
            # token per user, and this delivery's own budget is lent meanwhile
            # (otherwise the waiting batch would hold the lane's whole budget).
            async with lend():
                result = await adapter.send(delivery)
        else:
            await self._rate_limit(adapter.name, provider, job.lane)
            async with provider.slots.hold(job.lane):
                self._metrics.of(self._metrics.provider_wait_seconds, adapter.name).observe(time.monotonic() - started)
                started = time.monotonic()
                result = await adapter.send(delivery)
        metrics = self._metrics
        metrics.of(metrics.send_seconds, channel.value).observe(time.monotonic() - started)
        metrics.of(metrics.sends, channel.value, adapter.name, result.status.value).inc()
        log.info(
            "send",
            message_id=job.message_id,
            bu=job.claim.bu,
            channel=channel.value,
            provider=adapter.name,
            result=result.status.value,
            code=result.code,
        )
        return result

    async def _rate_limit(self, name: str, provider: ProviderState, lane: Category) -> None:
        """A token of the provider's shared bucket, from this process's lease (see
        ``providers.LEASE_SECONDS``), in line by lane when the lease is empty."""
        rate = provider.rate
        if rate is None:
            return
        burst = provider.burst or max(1, int(rate))

        async def refill() -> tuple[int, float]:
            return await self._store.take_tokens(
                f"provider:{name}", rate, burst, lease_size(rate, burst), self._clock.now()
            )

        if await provider.tokens.take(lane, refill):
            self._metrics.rate_limit_waits.labels(name).inc()

    async def _learn(self, profile: UserProfile, fact: UserFact, channel: Channel, recipient: str) -> UserProfile:
        """Update the user from what a provider said (43004: no longer following...)."""
        try:
            updated = await self._users.apply_fact(profile, fact, recipient)
        except HeraldError as exc:
            self._metrics.store_errors.labels("apply_fact").inc()
            log.error("user_update_failed", user_id=profile.user_id, fact=fact.value, error=exc.message)
            return profile
        if updated is profile:  # nothing to keep (43101 says nothing about the profile)
            return profile
        self._metrics.user_facts.labels(fact.value).inc()
        log.info("user_updated_from_provider", user_id=profile.user_id, fact=fact.value, channel=channel.value)
        return updated


def _for_receipts(job: Job, channel: Channel, result: SendResult) -> tuple[Remember, ...]:
    """WeChat's job report names only its msgid: which message that was, kept with the
    settlement."""
    if channel is not Channel.WECHAT_TEMPLATE or not result.provider_id:
        return ()
    return (Remember(keys.wechat_message(result.provider_id), f"{job.message_id} {job.claim.user_id}", RECEIPT_WINDOW),)


def _with_id(result: SendResult) -> str:
    return f"{result.detail} (id {result.provider_id})" if result.provider_id else result.detail
