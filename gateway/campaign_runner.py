"""Runs started campaigns: scans each shard's user index, turns every user of the
audience into a claim through the normal arbitration, and keeps where it stands.

Every gateway process runs a runner. A shard's scan is leased (one process a shard at
a time; a process that dies loses its lease and another one goes on), and its cursor
is saved after each chunk together with the chunk's counters. A chunk interrupted at
any instant is scanned again: its users' claims carry the request id
``cmp:<campaign>:<user hash>``, so each user gets one decision whatever happens, and
the counters were not saved, so they count once too.

A scan decides no faster than the campaigns' messages go out: while more than
``MAX_BACKLOG`` marketing deliveries are queued or in flight, it waits (keeping its
lease) before its next chunk. Users decided far ahead of delivery would only wait in
the queue on decisions growing stale, out of reach of a pause or a cancel, while the
decisions took the process's time from everything else it does (an order notice's
Push, its delivery).

An audience that requires one of a few tags is read from those tags' indexes only
(one step of the scan a tag: a user carrying two of them is decided under the first);
otherwise every user of the shard is read. An index entry whose user lost the tag or
is gone is taken out as it is met.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from gateway.clock import Clock
from gateway.core.audience import Audience
from gateway.core.campaigns import CampaignClaims, Campaigns, audience_of
from gateway.core.pipeline import PushPipeline
from gateway.core.profile_rules import compute_tier
from gateway.errors import HeraldError, StoreUnavailable, Unavailable
from gateway.logs import get_logger
from gateway.loops import StepFailures
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.campaigns import HOLDOUT, Campaign, CampaignState, ShardProgress
from gateway.values.decisions import PushAnswer
from gateway.values.profiles import UserProfile

log = get_logger(__name__)
LEASE = timedelta(seconds=30)
# Index entries read and decided at a time (HERALD_CAMPAIGN_CHUNK). A chunk is decided
# in one stretch of the event loop (about 0.1 ms a user, during which nothing else in
# the process runs): a small one keeps an order notice's Push or delivery from waiting
# long behind it; a large one saves round trips (SSCAN, the progress) a user.
CHUNK = 200
# A chunk that fails this many times in a row (not for an unreachable store) is
# skipped, its users counted as errors: one poisoned user must not stop a campaign.
MAX_CHUNK_FAILURES = 5
# Marketing deliveries queued or in flight (every process's) above which the scans wait,
# and how often a waiting scan looks again: often enough that the deliveries never run
# dry (5,000 last half a second at 10,000 sends a second).
MAX_BACKLOG = 5_000
BACKLOG_POLL = 0.1


def _step(cursor: str) -> tuple[int, str]:
    step, _, scan = cursor.partition(":")
    return (int(step), scan or "0") if cursor != "0" else (0, "0")


def _next(step: int, after: str, steps: int) -> tuple[str, bool]:
    """The shard's cursor after a page of step ``step`` ended at ``after``, and whether
    the shard is done."""
    if after == "0":
        step, after = step + 1, "0"
    done = step >= steps
    return ("0" if done else f"{step}:{after}"), done


Page = tuple[str, list[str]]


class _Pages:
    """One shard's audience index, read a page ahead: the next page's read is under way
    while the current page's users are decided (it is only a read: a scan that stops
    drops it, and its lease and progress move only after a page is decided)."""

    def __init__(self, store: Store, shard: int, size: int, steps: Sequence[str | None]) -> None:
        self._store, self._shard, self._size = store, shard, size
        self.steps = steps  # the audience's scan steps: a tag's index each, or every user (None)
        self._ahead: tuple[str, asyncio.Task[Page]] | None = None

    async def _read(self, cursor: str) -> Page:
        step, scan = _step(cursor)
        return await self._store.scan_users(self._shard, scan, self._size, self.steps[step])

    async def page(self, cursor: str) -> Page:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead[0] == cursor:
                return await ahead[1]
            _drop(ahead[1])
        return await self._read(cursor)

    def read_ahead(self, cursor: str) -> None:
        self.close()
        self._ahead = (cursor, asyncio.ensure_future(self._read(cursor)))

    def close(self) -> None:
        if self._ahead is not None:
            _drop(self._ahead[1])
            self._ahead = None


def _drop(task: asyncio.Task[Page]) -> None:
    task.cancel()
    # Its failure, if it failed before the cancel, is of no interest to anyone.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


class CampaignRunner:
    def __init__(
        self,
        store: Store,
        pipeline: PushPipeline,
        campaigns: Campaigns,
        policies: PolicyHolder,
        clock: Clock,
        metrics: Metrics,
        *,
        interval: float = 0.5,
        chunk: int = CHUNK,
        concurrency: int = 4,
        backlog: Callable[[], Awaitable[int]] | None = None,
        max_backlog: int = MAX_BACKLOG,
        backlog_poll: float = BACKLOG_POLL,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._campaigns = campaigns
        self._policies = policies
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._chunk_size = chunk
        self._concurrency = concurrency
        self._backlog = backlog
        self._max_backlog = max_backlog
        self._backlog_poll = backlog_poll
        self._backlog_read: tuple[float, int] = (-backlog_poll, 0)  # (monotonic time, depth)
        self._read: dict[str, tuple[float, Campaign | None]] = {}  # campaign id: (monotonic time, as read)
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._busy: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()  # a scan finished its shard
        self._ticking = asyncio.Lock()

    async def tick(self) -> None:
        """Start a scan task for each shard of a running campaign nobody scans. One tick
        at a time: two at once could both lease a shard (the lease is this process's)
        before either marks it busy, and scan it twice."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        now = self._clock.now()
        active = await self._store.active_campaigns()
        # Readings of campaigns no longer running go: their scans read them afresh.
        self._read = {c: r for c, r in self._read.items() if any(c == k.campaign_id for k in active)}
        for campaign in active:
            if campaign.state is CampaignState.CANCELLED:
                if not await self._sweep_shards(campaign):
                    return
                continue
            if campaign.start_at is not None and campaign.start_at > now:
                continue
            if campaign.phase == "waiting":
                chosen = await self._campaigns.pick_winner(campaign)
                if chosen is not None:
                    log.info("campaign_winner", campaign_id=campaign.campaign_id, variant=chosen.winner)
                continue
            scan = campaign.scan_id
            progress = await self._store.campaign_progress(scan)
            if all(p.done for p in progress):
                moved = await self._campaigns.scanned(campaign)
                if moved is not None:
                    log.info("campaign_scanned", campaign_id=campaign.campaign_id, phase=campaign.phase)
                continue
            for shard in random.sample(range(self._store.shards), self._store.shards):
                if len(self._tasks) >= self._concurrency:
                    return
                if progress[shard].done or (scan, shard) in self._busy:
                    continue
                leased = await self._store.lease_campaign_shard(scan, shard, self.owner, LEASE, self._clock.now())
                if leased is None:
                    continue  # another process scans it
                self._start(scan, leased.shard, self._scan(campaign, leased))

    async def _sweep_shards(self, campaign: Campaign) -> bool:
        """Start sweeping the shards of a cancelled campaign nobody sweeps; mark it swept
        when every shard is. False when this process has no room for more."""
        scan = campaign.sweep_id
        progress = await self._store.campaign_progress(scan)
        if all(p.done for p in progress):
            if await self._campaigns.swept(campaign) is not None:
                log.info("campaign_swept", campaign_id=campaign.campaign_id)
            return True
        for shard in random.sample(range(self._store.shards), self._store.shards):
            if len(self._tasks) >= self._concurrency:
                return False
            if progress[shard].done or (scan, shard) in self._busy:
                continue
            leased = await self._store.lease_campaign_shard(scan, shard, self.owner, LEASE, self._clock.now())
            if leased is not None:
                self._start(scan, shard, self._sweep(campaign, leased))
        return True

    def _start(self, scan: str, shard: int, work: Coroutine[Any, Any, bool]) -> None:
        key = (scan, shard)
        self._busy.add(key)
        task = asyncio.create_task(work, name=f"campaign:{key[0]}:{key[1]}")
        self._tasks.add(task)

        def ended(_: asyncio.Task[bool]) -> None:
            self._tasks.discard(task)
            self._busy.discard(key)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.error("campaign_scan_crashed", campaign_id=key[0], shard=key[1], error=repr(error))
            elif task.result():
                self._freed.set()  # the shard is done: the next tick need not wait

        task.add_done_callback(ended)

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick every ``interval``, and at once when a scan has finished its shard: its
        slot goes to the next shard without waiting out the interval."""
        self._stopping = stopping
        failures = StepFailures("campaigns")
        while not stopping.is_set():
            self._freed.clear()
            try:
                await self.tick()
                failures.succeeded()
            except HeraldError as exc:
                failures.failed(exc.message)
            waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._freed.wait())]
            _, pending = await asyncio.wait(waits, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
            for wait in pending:
                wait.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def drain(self) -> None:
        """Wait for the scans under way (tests, and a quiet shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # --- one shard ---------------------------------------------------------------------
    async def _scan(self, campaign: Campaign, progress: ShardProgress) -> bool:
        """Scan the shard chunk by chunk while the lease holds; whether it is done."""
        cid = campaign.campaign_id
        policy = self._policies.current
        try:
            audience = audience_of(campaign.audience, policy)
        except HeraldError as exc:
            log.error("campaign_audience_invalid", campaign_id=cid, error=exc.message)
            return False
        pages = _Pages(self._store, progress.shard, self._chunk_size, audience.scan_steps())
        try:
            return await self._scan_pages(campaign, audience, progress, pages)
        finally:
            pages.close()

    async def _scan_pages(self, campaign: Campaign, audience: Audience, progress: ShardProgress, pages: _Pages) -> bool:
        cid, scan = campaign.campaign_id, campaign.scan_id
        failures = 0
        renewed = time.monotonic()  # the lease was taken or saved (every chunk saves it)
        while not progress.done and not self._stopping.is_set():
            try:
                current = await self._current(cid)
                if current is None or current.state is not CampaignState.RUNNING or current.scan_id != scan:
                    log.info("campaign_scan_stopped", campaign_id=cid, shard=progress.shard)
                    return False
                if await self._backed_up():
                    if time.monotonic() - renewed > LEASE.total_seconds() / 3:
                        if not await self._renew(scan, progress):
                            raise _LeaseLost
                        renewed = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._backlog_poll)
                    continue
                progress = await self._chunk(current, audience, progress, pages)
                renewed = time.monotonic()
                failures = 0
                # Let the rest of the process run between chunks even when the store
                # answers without waiting (in memory): a Push must not wait for a scan.
                await asyncio.sleep(0)
            except _LeaseLost:
                log.warning("campaign_lease_lost", campaign_id=cid, shard=progress.shard)
                return False
            except _Paused:
                return False
            except HeraldError as exc:
                failures += 1
                if not await _backed_off("campaign_chunk_failed", cid, progress.shard, exc, failures):
                    return False
                try:
                    if not await self._renew(scan, progress):
                        return False
                except HeraldError:
                    continue
        return progress.done

    async def _sweep(self, campaign: Campaign, progress: ShardProgress) -> bool:
        """End the claims the cancelled ``campaign`` still holds in one shard: its users
        with held claims (the due index) are released with the campaign's claims due at
        once, and those end SUPPRESSED / CANCELLED. Whether the shard is done."""
        cid = campaign.campaign_id
        ending = frozenset({cid})
        failures = 0
        while not progress.done and not self._stopping.is_set():
            try:
                after, users = await self._store.scan_held(progress.shard, progress.cursor, self._chunk_size)
                if users:
                    await self._pipeline.release_users(list(dict.fromkeys(users)), ending)
                moved = msgspec.structs.replace(
                    progress, cursor=after, done=after == "0", scanned=progress.scanned + len(users)
                )
                if not await self._renew(campaign.sweep_id, moved):
                    log.warning("campaign_lease_lost", campaign_id=cid, shard=progress.shard)
                    return False
                progress, failures = moved, 0
                await asyncio.sleep(0)
            except HeraldError as exc:
                failures += 1
                if not await _backed_off("campaign_sweep_failed", cid, progress.shard, exc, failures):
                    return False
        return progress.done

    async def _current(self, campaign_id: str) -> Campaign | None:
        """The campaign as stored, read at most every ``backlog_poll`` seconds for all of
        this process's scans of it (a pause or cancel is seen that soon)."""
        now = time.monotonic()
        read = self._read.get(campaign_id)
        if read is None or now - read[0] >= self._backlog_poll:
            [found] = await self._store.get_campaigns([campaign_id])
            read = self._read[campaign_id] = (now, found)
        return read[1]

    async def _backed_up(self) -> bool:
        """More marketing deliveries wait than the next chunk should join. One reading
        (a query over every shard) serves all scans for ``backlog_poll`` seconds."""
        if self._backlog is None:
            return False
        now = time.monotonic()
        if now - self._backlog_read[0] >= self._backlog_poll:
            self._backlog_read = (now, await self._backlog())
        return self._backlog_read[1] > self._max_backlog

    async def _renew(self, campaign_id: str, progress: ShardProgress) -> bool:
        return await self._store.save_campaign_shard(campaign_id, self.owner, progress, LEASE, self._clock.now())

    async def _chunk(
        self, campaign: Campaign, audience: Audience, progress: ShardProgress, pages: _Pages
    ) -> ShardProgress:
        # One reading of the clock for the deadline and the claims: read twice, the
        # deadline could pass in between and every claim be refused for it.
        now = self._clock.now()
        if campaign.deadline is not None and campaign.deadline <= now:
            # No claim made now could be sent in time: the rest of the shard is left unread.
            log.info("campaign_deadline_passed", campaign_id=campaign.campaign_id, shard=progress.shard)
            ended = msgspec.structs.replace(progress, cursor="0", done=True)
            if not await self._renew(campaign.scan_id, ended):
                raise _LeaseLost
            return ended
        steps = pages.steps
        step, _ = _step(progress.cursor)
        label = steps[step]
        after, users = await pages.page(progress.cursor)
        cursor, done = _next(step, after, len(steps))
        if not done:
            pages.read_ahead(cursor)
        policy = self._policies.current
        earlier = frozenset(t for t in steps[:step] if t is not None)
        stale: list[str] = []

        def admit(user_id: str, profile: UserProfile | None) -> bool | None:
            if profile is None or not audience.indexed(profile, label):
                stale.append(user_id)
                return False
            matches = audience.matches(profile, compute_tier(profile.rfm, policy.tiers, now), now)
            if matches and earlier and not earlier.isdisjoint(profile.tags):
                return None  # an earlier tag's step decided the user (unless they gained that tag since)
            return matches

        # A test's two scans each take their own users (known from the id alone).
        mine = [u for u in dict.fromkeys(users) if _in_scan(campaign, u)]
        maker = CampaignClaims(campaign, policy, now)
        refused = maker.refused()
        if refused is not None:
            # The users of a share would all be refused for the same reason (a policy
            # change): paused, so that they are still there to decide once it is fixed.
            why = f"its claims are refused under policy {policy.version}: {refused.message}"
            log.error("campaign_paused_by_policy", campaign_id=campaign.campaign_id, error=refused.message)
            await self._campaigns.pause_for(campaign, why[:500])
            self._read.pop(campaign.campaign_id, None)
            raise _Paused
        claims = [maker.claim(user_id) for user_id in mine]
        results = await self._pipeline.push_audience(campaign.bu, claims, admit) if claims else []
        failed = [r for r in results if isinstance(r, HeraldError)]
        transient = [r for r in failed if isinstance(r, StoreUnavailable | Unavailable)]
        if transient:
            raise transient[0]  # the chunk again, later: nothing of it was counted
        if failed:
            # A user this campaign cannot claim (its request id taken by another body):
            # skipped and counted, never a reason to stop the whole campaign.
            log.warning(
                "campaign_users_skipped", campaign_id=campaign.campaign_id, users=len(failed), error=failed[0].message
            )
        # Decided users (an answer), and those of them the holdout took (a claim made).
        decided = [c for c, r in zip(claims, results, strict=True) if isinstance(r, PushAnswer)]
        holdout = sum(1 for c in decided if not isinstance(c, HeraldError) and c[0].variant == HOLDOUT)
        if stale:
            await self._store.forget_users(progress.shard, stale, label)
        moved = msgspec.structs.replace(
            progress,
            cursor=cursor,
            done=done,
            scanned=progress.scanned + len(users),
            matched=progress.matched + len(decided),
            holdout=progress.holdout + holdout,
            errors=progress.errors + len(failed),
        )
        if not await self._renew(campaign.scan_id, moved):
            raise _LeaseLost
        self._metrics.campaign_users.labels("scanned").inc(len(users))
        self._metrics.campaign_users.labels("targeted").inc(len(decided))
        return moved


async def _backed_off(event: str, campaign_id: str, shard: int, error: HeraldError, failures: int) -> bool:
    """A shard's step failed ``failures`` times in a row: logged, then a wait before
    the next try; False when it is time to give up instead (the lease runs out, and this
    or another process tries again)."""
    log.warning(event, campaign_id=campaign_id, shard=shard, error=error.message)
    if failures >= MAX_CHUNK_FAILURES:
        return False
    await asyncio.sleep(min(5.0, 0.2 * 2**failures))
    return True


def _in_scan(campaign: Campaign, user_id: str) -> bool:
    if campaign.test is None:
        return True
    if campaign.winner:
        return not campaign.decided_in_test(user_id)
    return campaign.share_for(user_id) is not None


class _LeaseLost(Exception):
    pass


class _Paused(Exception):
    """The campaign was paused because none of its claims can be made."""
